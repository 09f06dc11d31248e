"""Colour-card scenes: a 2x2 grid of cards, each a link from its top colour (key) to its bottom colour (value).

A scene renders to a 32x32 image in which each 16x16 card is exactly one merged vision token of the tiny
backbones (patch 8, merge 2), so perception is trivial and the tasks' difficulty is in the reasoning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "black": (0, 0, 0), "white": (255, 255, 255), "orange": (250, 140, 0), "purple": (140, 40, 170),
}
NAMES = tuple(COLOURS)
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
CARD = 16
# neighbour of each position in each direction (None at the edge)
NEIGHBOURS = {
    "right of": {0: 1, 2: 3}, "left of": {1: 0, 3: 2}, "below": {0: 2, 1: 3}, "above": {2: 0, 3: 1},
}


@dataclass(frozen=True)
class Card:
    top: str
    bottom: str

    def describe(self) -> str:
        return f"{self.top} over {self.bottom}"


@dataclass(frozen=True)
class Scene:
    """Four cards in reading order (top left, top right, bottom left, bottom right); tops are distinct."""

    cards: tuple[Card, Card, Card, Card]

    @property
    def links(self) -> dict[str, str]:
        return {card.top: card.bottom for card in self.cards}

    def follow(self, start: str, hops: int) -> list[str]:
        """The colours visited from `start` (included); stops early where a colour has no link."""
        path = [start]
        for _ in range(hops):
            if path[-1] not in self.links:
                break
            path.append(self.links[path[-1]])
        return path

    def position_of_top(self, colour: str) -> int:
        return next(i for i, card in enumerate(self.cards) if card.top == colour)

    def caption(self) -> str:
        """The links in reading order, e.g. `red to blue. green to black. ...`."""
        return " ".join(f"{card.top} to {card.bottom}." for card in self.cards)

    def swapped(self, i: int, j: int) -> Scene:
        cards = list(self.cards)
        cards[i], cards[j] = cards[j], cards[i]
        return Scene(tuple(cards))

    def with_bottoms(self, bottoms) -> Scene:
        return Scene(tuple(Card(card.top, bottom) for card, bottom in zip(self.cards, bottoms, strict=True)))

    def render(self) -> Image.Image:
        image = Image.new("RGB", (2 * CARD, 2 * CARD))
        for index, card in enumerate(self.cards):
            render_card(card, image, (index % 2) * CARD, (index // 2) * CARD)
        return image


def render_card(card: Card, image: Image.Image | None = None, x: int = 0, y: int = 0) -> Image.Image:
    """Draw `card` at (x, y) of `image` (a new 16x16 image by default)."""
    image = image if image is not None else Image.new("RGB", (CARD, CARD))
    image.paste(COLOURS[card.top], (x, y, x + CARD, y + CARD // 2))
    image.paste(COLOURS[card.bottom], (x, y + CARD // 2, x + CARD, y + CARD))
    return image


def random_scene(rng: random.Random) -> Scene:
    """Four distinct top colours; each bottom is any colour but its own top (no self-links)."""
    tops = rng.sample(NAMES, 4)
    return Scene(tuple(Card(top, rng.choice([c for c in NAMES if c != top])) for top in tops))


def valid_bottoms(scene: Scene, bottoms) -> bool:
    return all(card.top != bottom for card, bottom in zip(scene.cards, bottoms, strict=True))

"""The synthetic compositional tasks, mirroring MMEB's categories, and the oracle teacher's reasoning for each.

Every task draws an `Example` (query, candidates with the gold one first). The teacher (`teach_*`) is an oracle
with perfect perception: it reads the query's own scene graph and the instruction's parameters, never the
candidates, and writes the paper's ECR format, `<think> step by step </think> Answer: ...`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from eval.synthetic.scenes import NAMES, NEIGHBOURS, POSITIONS, Card, Scene, random_scene, valid_bottoms
from processing_tte import format_ecr

HOPS = 2
NUM_NEGATIVES = 7


@dataclass(frozen=True)
class Target:
    """A candidate: a text, a whole scene (an image) or one card (an image crop)."""

    text: str = ""
    scene: Scene | None = None
    card: Card | None = None


@dataclass
class Example:
    scene: Scene | None  # the query image (None for a text query)
    params: dict  # what the query asks, as the teacher reads it
    text: str  # the query text shown to the models
    candidates: list[Target] = field(default_factory=list)  # gold first


def _describe(scene: Scene) -> str:
    return " ".join(f"{POSITIONS[i]}: {card.describe()}." for i, card in enumerate(scene.cards))


# ------------------------------------------------------------------ classification: follow links
def make_links(rng: random.Random) -> Example:
    while True:
        scene = random_scene(rng)
        start = rng.choice([card.top for card in scene.cards])
        path = scene.follow(start, HOPS)
        if len(path) == HOPS + 1:
            break
    text = f"Start at {start} and follow {HOPS} links. Which colour do you reach?"
    answer = path[-1]
    return Example(scene, {"start": start}, text, [Target(answer)] + [Target(c) for c in NAMES if c != answer])


def teach_links(scene: Scene, params: dict) -> str:
    path = scene.follow(params["start"], HOPS)
    steps = " ".join(f"{a} to {b}." for a, b in itertools.pairwise(path))
    return format_ecr(steps, path[-1])


# ------------------------------------------------------------------ VQA: counting
def make_count(rng: random.Random) -> Example:
    count, colour = rng.randrange(4), rng.choice(NAMES)
    while True:
        scene = random_scene(rng)
        slots = [i for i, card in enumerate(scene.cards) if card.top != colour]
        if len(slots) < count:
            continue
        chosen = set(rng.sample(slots, count))
        bottoms = [colour if i in chosen else (card.bottom if card.bottom != colour else None)
                   for i, card in enumerate(scene.cards)]
        if None not in bottoms:
            scene = scene.with_bottoms(bottoms)
            break
    text = f"How many cards have a {colour} bottom?"
    return Example(scene, {"colour": colour}, text, [Target(str(n)) for n in [count] + [n for n in range(5)
                                                                                          if n != count]])


def teach_count(scene: Scene, params: dict) -> str:
    bottoms = [card.bottom for card in scene.cards]
    count = bottoms.count(params["colour"])
    return format_ecr(f"bottoms: {', '.join(bottoms)}. {params['colour']}: {count}.", str(count))


# ------------------------------------------------------------------ retrieval: image -> caption, caption -> image
def _shuffled_scenes(rng: random.Random, scene: Scene, count: int) -> list[Scene]:
    """Scenes with the same cards' colours but other links (bottoms permuted): compositional hard negatives."""
    seen, out = {scene.caption()}, []
    bottoms = [card.bottom for card in scene.cards]
    for _ in range(200):
        other = scene.with_bottoms(rng.sample(bottoms, 4)) if rng.random() < 0.7 else random_scene(rng)
        if valid_bottoms(other, [c.bottom for c in other.cards]) and other.caption() not in seen:
            seen.add(other.caption())
            out.append(other)
            if len(out) == count:
                break
    return out


def make_i2t(rng: random.Random) -> Example:
    scene = random_scene(rng)
    negatives = _shuffled_scenes(rng, scene, NUM_NEGATIVES)
    return Example(scene, {}, "", [Target(scene.caption())] + [Target(s.caption()) for s in negatives])


def teach_i2t(scene: Scene, params: dict) -> str:
    return format_ecr(_describe(scene), scene.caption())


def make_t2i(rng: random.Random) -> Example:
    scene = random_scene(rng)
    negatives = _shuffled_scenes(rng, scene, NUM_NEGATIVES)
    return Example(None, {"caption": scene.caption()}, scene.caption(),
                   [Target(scene=scene)] + [Target(scene=s) for s in negatives])


def teach_t2i(scene: Scene | None, params: dict) -> str:
    return format_ecr(None, params["caption"])


# ------------------------------------------------------------------ composed retrieval: image + edit -> image
SWAPS = list(itertools.combinations(range(4), 2))


def make_cir(rng: random.Random) -> Example:
    scene = random_scene(rng)
    i, j = rng.choice(SWAPS)
    text = f"Swap the {POSITIONS[i]} and {POSITIONS[j]} cards."
    others = [scene.swapped(a, b) for a, b in SWAPS if (a, b) != (i, j)]
    candidates = [Target(scene=scene.swapped(i, j))] + [Target(scene=s) for s in others + [scene]]
    return Example(scene, {"swap": (i, j)}, text, candidates)


def teach_cir(scene: Scene, params: dict) -> str:
    i, j = params["swap"]
    edited = scene.swapped(i, j)
    think = (f"{POSITIONS[i]} is {scene.cards[i].describe()}. {POSITIONS[j]} is {scene.cards[j].describe()}. "
             f"after the swap {POSITIONS[i]} is {edited.cards[i].describe()}.")
    return format_ecr(think, edited.caption())


# ------------------------------------------------------------------ grounding: referring expression -> card crop
def make_ground(rng: random.Random) -> Example:
    scene = random_scene(rng)
    relation = rng.choice(list(NEIGHBOURS))
    anchor = rng.choice(list(NEIGHBOURS[relation]))
    target = NEIGHBOURS[relation][anchor]
    text = f"Select the card {relation} the card with a {scene.cards[anchor].top} top."
    order = [target] + [k for k in range(4) if k != target]
    return Example(scene, {"relation": relation, "top": scene.cards[anchor].top}, text,
                   [Target(card=scene.cards[k]) for k in order])


def teach_ground(scene: Scene, params: dict) -> str:
    anchor = scene.position_of_top(params["top"])
    target = NEIGHBOURS[params["relation"]][anchor]
    card = scene.cards[target]
    think = f"{params['top']} top is at {POSITIONS[anchor]}. {params['relation']} it is {POSITIONS[target]}."
    return format_ecr(think, card.describe())


# ------------------------------------------------------------------ targets
def teach_target(target: Target) -> str:
    """The teacher's target-side ECR: what the candidate itself shows or says."""
    if target.scene is not None:
        return format_ecr(_describe(target.scene), target.scene.caption())
    if target.card is not None:
        return format_ecr(None, target.card.describe())
    return format_ecr(None, target.text)


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    category: str
    task_type: str  # processing_tte.TASK_TYPES
    instruction: str
    make: Callable[[random.Random], Example]
    teach: Callable[[Scene | None, dict], str]


TASKS = {
    task.name: task
    for task in [
        SyntheticTask("Syn-Links", "CLS", "classification", "Follow the links between the card colours.",
                      make_links, teach_links),
        SyntheticTask("Syn-Count", "VQA", "vqa", "Answer the question about the cards.", make_count, teach_count),
        SyntheticTask("Syn-I2T", "RET", "retrieval", "Find the caption that lists the links in this image.",
                      make_i2t, teach_i2t),
        SyntheticTask("Syn-T2I", "RET", "retrieval", "Find the image whose links match this caption.",
                      make_t2i, teach_t2i),
        SyntheticTask("Syn-CIR", "RET", "composed_retrieval", "Find the image after this edit.", make_cir, teach_cir),
        SyntheticTask("Syn-Ground", "VG", "grounding", "Find the card this expression refers to.",
                      make_ground, teach_ground),
    ]
}

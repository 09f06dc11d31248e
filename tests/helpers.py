"""Small builders shared by tests: generated images, frames and rows."""

from __future__ import annotations

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


def solid(colour: str, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def mixed_rows() -> list[dict]:
    """An image row with ECR, a 3-frame video row, and a text-only row."""
    return [
        {"image": solid("red"), "instruction": "Find a caption.", "ecr": "<think>It is red.</think> Answer: red"},
        {"video": [solid(c) for c in ("red", "blue", "green")], "text": "what happens", "ecr": "Answer: colours"},
        {"text": "a red square", "instruction": "Represent the text."},
    ]

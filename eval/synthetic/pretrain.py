"""A shared perception pretraining set: describe the four cards of a scene, in reading order.

The paper's reasoners and embedders start from a pretrained VLM that can already see; the demo's random tiny
backbone cannot. Before any task training, every model of the demo starts from the same backbone trained to caption
scenes (`top left: red over green. top right: ...`), as a VLM's first, alignment stage does. The caption is only
perception: it follows no link, counts nothing and edits nothing, which the tasks teach. Measured on the 2-layer
backbone (README, "What was tried"): single look-up questions ("which colour does red link to?") stayed at chance
for 1,000 steps, while the dense caption (a supervised colour for every card half) reached 54% of its colour words
right in 600 steps, and the student distilled from it then followed the links of Syn-Links on every test query.
"""

from __future__ import annotations

import random
from pathlib import Path

from eval.synthetic.scenes import POSITIONS, Scene, random_scene
from eval.synthetic.write import _record, _write_jsonl
from processing_tte import format_ecr
from train.ecr_store import ECRStore

PRETRAIN = "Syn-Perceive"
QUESTION = "Describe the cards."


def describe_cards(scene: Scene) -> str:
    """The perception caption: each card's position and colours, in reading order."""
    return " ".join(f"{POSITIONS[i]}: {card.describe()}." for i, card in enumerate(scene.cards))


def write_pretraining(out, num_rows: int, seed: int = 0) -> dict:
    """Write `<out>/train/Syn-Perceive.jsonl` (MMEB-train format) and its captions (as ECR `Answer: ...`) into
    `<out>/ecr-pretrain`; returns the dataset entry for the training scripts."""
    out = Path(out)
    root, rng = out / "train", random.Random(f"{seed}-pretrain")
    folder = root / "images" / PRETRAIN
    folder.mkdir(parents=True, exist_ok=True)
    rows, records, name = [], [], f"{PRETRAIN}.train"
    for i in range(num_rows):
        scene = random_scene(rng)
        path = folder / f"r{i}_q.png"
        scene.render().save(path)
        rows.append({"qry": "<|image_1|>" + QUESTION, "qry_image_path": str(path.relative_to(root)),
                     "pos_text": describe_cards(scene), "pos_image_path": ""})
        records.append(_record(name, str(i), "query", format_ecr(None, describe_cards(scene))))
    _write_jsonl(root / f"{PRETRAIN}.jsonl", rows)
    ECRStore(out / "ecr-pretrain").add(records)
    return {"name": name, "path": str(root / f"{PRETRAIN}.jsonl"), "task_type": "retrieval"}

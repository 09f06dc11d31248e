"""Helpers shared by the contrastive-training tests (rows, models, trainers); not a test module."""

from __future__ import annotations

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def make_rows(n: int, dataset: str = "toy", images: bool = True, negatives: bool = False, ecr: bool = True,
              start: int = 0) -> list[dict]:
    """Deterministic training rows: an image query (every other row text-only) and a caption target."""
    rows = []
    for index in range(start, start + n):
        colour, other = COLOURS[index % len(COLOURS)], COLOURS[(index + 3) % len(COLOURS)]
        size = (32, 32) if index % 3 else (48, 32)
        row = {"dataset": dataset, "row_id": str(index),
               "qry_text": f"What colour is the card? {index}", "qry_image": "",
               "pos_text": f"a {colour} square {index % 5}", "pos_image": ""}
        if images and index % 2 == 0:
            row["qry_image"] = Image.new("RGB", size, colour)
        if negatives:
            row["neg_text"], row["neg_image"] = f"a {other} circle", ""
        if ecr:
            row["qry_ecr"] = f"<think>The card is {colour}.</think> Answer: {colour}"
            row["pos_ecr"] = f"Answer: {colour}"
            if negatives:
                row["neg_ecr"] = f"Answer: {other}"
        rows.append(row)
    return rows


def contrastive_args(output_dir, **overrides):
    """CPU `TTEContrastiveConfig` for tests."""
    from train.trainer import TTEContrastiveConfig

    settings = dict(output_dir=str(output_dir), use_cpu=True, report_to="none", per_device_train_batch_size=4,
                    learning_rate=1e-2, optim="sgd", lr_scheduler_type="constant", save_strategy="no",
                    logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    settings.update(overrides)
    return TTEContrastiveConfig(**settings)

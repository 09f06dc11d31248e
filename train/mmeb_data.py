"""MMEB-train-format data: rows of (query, positive target, optional negative) with images relative to a root.

The MMEB-train layout (e.g. ``TIGER-Lab/MMEB-train``) has the columns ``qry``, ``qry_image_path``, ``pos_text``,
``pos_image_path`` and optionally ``neg_text``, ``neg_image_path``. Texts mark where an image goes with a
``<|image_1|>`` placeholder; here the placeholder is removed and the image becomes the row's ``image`` field, which
``TTEProcessor`` turns into the backbone's own image tokens. Image paths are relative to an image root.

    from train.mmeb_data import MMEBDatasetConfig, load_mmeb_pairs
    pairs = load_mmeb_pairs(MMEBDatasetConfig(name="MSCOCO_i2t", path="TIGER-Lab/MMEB-train", subset="MSCOCO_i2t",
                                              image_root="/data/MMEB-train"))
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
REQUIRED_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass
class MMEBDatasetConfig:
    r"""
    One MMEB-format dataset.

    Args:
        name (`str`): the dataset's name in the ECR store (e.g. `"MSCOCO_i2t"`).
        path (`str`): a local `.jsonl`/`.json`/`.parquet`/`.csv` file, or a Hub dataset (`datasets.load_dataset`).
        subset (`str`, *optional*): the Hub configuration (for `TIGER-Lab/MMEB-train`, the dataset name).
        split (`str`, *optional*, defaults to `"train"`): the split to read.
        task_type (`str`, *optional*, defaults to `"retrieval"`): one of `processing_tte.TASK_TYPES`; picks the
            reasoner prompt.
        image_root (`str`, *optional*): folder the image paths are relative to (defaults to the loader's root).
        max_rows (`int`, *optional*): read at most this many rows (the first ones).
    """

    name: str
    path: str
    subset: str | None = None
    split: str = "train"
    task_type: str = "retrieval"
    image_root: str | None = None
    max_rows: int | None = None


@dataclass
class MMEBPair:
    """One row: its query and positive target as `TTEProcessor` rows (`image`, `text`), plus any negatives."""

    dataset: str
    row_id: str
    query: dict
    target: dict
    negatives: list[dict] = field(default_factory=list)


def mmeb_side(text: str | None, image_path: str | None, image_root: str | os.PathLike | None) -> dict:
    """A `TTEProcessor` row from an MMEB text (placeholders removed) and an image path (joined to `image_root`)."""
    row = {"text": IMAGE_PLACEHOLDER.sub("", text or "").strip()}
    if image_path:
        row["image"] = str(Path(image_root) / image_path) if image_root else str(image_path)
    return row


def _load_table(config: MMEBDatasetConfig):
    from datasets import load_dataset

    suffix = Path(config.path).suffix.lower()
    if Path(config.path).is_file() and suffix in _FILE_BUILDERS:
        return load_dataset(_FILE_BUILDERS[suffix], data_files=config.path, split="train")
    if Path(config.path).exists() and not Path(config.path).is_dir():
        raise ValueError(f"dataset {config.name!r}: unsupported file type {suffix!r} ({config.path})")
    return load_dataset(config.path, config.subset, split=config.split)


def load_mmeb_pairs(config: MMEBDatasetConfig, image_root: str | os.PathLike | None = None) -> list[MMEBPair]:
    """Read an MMEB-format dataset into `MMEBPair`s; the row id is the `id` column if present, else the row index.

    Raises:
        `ValueError`: a required column is missing, or a row has neither text nor image on one side.
    """
    table = _load_table(config)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise ValueError(f"dataset {config.name!r} ({config.path}) lacks the MMEB columns {missing}; "
                         f"it has {table.column_names}")
    if config.max_rows is not None:
        table = table.select(range(min(config.max_rows, len(table))))
    root = config.image_root or image_root
    pairs = []
    for index, row in enumerate(table):
        row_id = str(row["id"]) if "id" in row and row["id"] is not None else str(index)
        query = mmeb_side(row["qry"], row["qry_image_path"], root)
        target = mmeb_side(row["pos_text"], row["pos_image_path"], root)
        for side, side_row in (("query", query), ("target", target)):
            if not side_row["text"] and "image" not in side_row:
                raise ValueError(f"dataset {config.name!r} row {row_id}: the {side} has neither text nor an image")
        negatives = []
        if row.get("neg_text") or row.get("neg_image_path"):
            negatives.append(mmeb_side(row.get("neg_text"), row.get("neg_image_path"), root))
        pairs.append(MMEBPair(config.name, row_id, query, target, negatives))
    return pairs


def dataset_config(spec) -> MMEBDatasetConfig:
    """An `MMEBDatasetConfig` from a config, a mapping (YAML) or a JSON object string (command line)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as error:
            raise ValueError(f"a dataset on the command line must be a JSON object, got {spec!r}") from error
    if isinstance(spec, dict):
        unknown = set(spec) - set(MMEBDatasetConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"dataset {spec.get('name')!r}: unknown fields {sorted(unknown)}")
        return MMEBDatasetConfig(**spec)
    if not isinstance(spec, MMEBDatasetConfig):
        raise ValueError(f"a dataset must be a mapping or an MMEBDatasetConfig, got {type(spec).__name__}")
    return spec


__all__ = ["IMAGE_PLACEHOLDER", "MMEBDatasetConfig", "MMEBPair", "dataset_config", "load_mmeb_pairs", "mmeb_side"]

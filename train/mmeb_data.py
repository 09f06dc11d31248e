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
from dataclasses import dataclass, field

from train.data import check_unique_ids, normalize_row, read_table, row_id_of

REQUIRED_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")


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


def _side(row: dict, prefix: str) -> dict:
    """The `TTEProcessor` row of one side (`qry`, `pos`, `neg`) of a normalised training row."""
    side = {"text": row[f"{prefix}_text"]}
    if row[f"{prefix}_image"]:
        side["image"] = row[f"{prefix}_image"]
    return side


def load_mmeb_pairs(config: MMEBDatasetConfig, image_root: str | os.PathLike | None = None) -> list[MMEBPair]:
    """Read an MMEB-format dataset into `MMEBPair`s, through the same table reading and row normalisation as
    training (`train.data`), so ECR is keyed exactly as the trainer looks it up: the row id is the `id` column if
    present, else the row index.

    Raises:
        `ValueError`: a required column is missing, a row is malformed (named by dataset, row and field), two rows
            share an id, or a JSON line is malformed (named by file and line).
    """
    table = read_table(config.path, config.subset, config.split)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.column_names]
    if missing:
        raise ValueError(f"dataset {config.name!r} ({config.path}) lacks the MMEB columns {missing}; "
                         f"it has {table.column_names}")
    if config.max_rows is not None:
        table = table.select(range(min(config.max_rows, len(table))))
    root = config.image_root or image_root
    pairs = []
    for index, raw in enumerate(table):
        row = normalize_row(raw, config.name, row_id_of(raw, index), None if root is None else str(root))
        negatives = [_side(row, "neg")] if row["neg_text"] or row["neg_image"] else []
        pairs.append(MMEBPair(config.name, row["row_id"], _side(row, "qry"), _side(row, "pos"), negatives))
    check_unique_ids([pair.row_id for pair in pairs], config.name)
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


__all__ = ["MMEBDatasetConfig", "MMEBPair", "dataset_config", "load_mmeb_pairs"]

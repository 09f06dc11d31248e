"""MMEB-train (`TIGER-Lab/MMEB-train`): 20 image subsets, one config each, splits `original` and
`diverse_instruction`, columns `qry`, `qry_image_path`, `pos_text`, `pos_image_path` and, for some subsets,
`neg_text`, `neg_image_path`. Texts mark their image with `<|image_1|>`; image paths are relative to the folder the
repo was cloned and unzipped into (`download_data.sh`: `git clone .../MMEB-train` then `python unzip_file.py`).

Read as the reference's `mmeb_dataset.py` reads it: the row's texts with the placeholder removed (`TTEProcessor`
inserts the backbone's image token), image paths joined to the image root. The row id is the `id` column when
present, else the row's index in its subset/split (so a cap never renumbers rows).
"""

from __future__ import annotations

import os
import re

from transformers.utils import logging

from train.tables import locate, read_training_table

from .schema import FEATURES, ReadContext, require_columns, row_id_of, training_row

logger = logging.get_logger(__name__)

IMAGE_PLACEHOLDER = "<|image_1|>"
PLACEHOLDERS = re.compile(r"<\|image_\d+\|>")  # <|image_1|>, <|image_2|>, ...
SIDES = (("qry", "qry", "qry_image_path"), ("pos", "pos_text", "pos_image_path"), ("neg", "neg_text", "neg_image_path"))
REQUIRED_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")


def _resolve_image(path: str | None, image_root: str | None) -> str:
    if not path:
        return ""
    if os.path.isabs(path) or image_root is None:
        return path
    return os.path.join(image_root, path)


def normalize_row(row: dict, dataset: str, row_id: str, image_root: str | None) -> dict:
    """
    One MMEB-train row as a training row (`train.mixture.schema`), `<|image_1|>` removed from the texts and image
    paths joined to `image_root`. Raises `ValueError` naming the dataset, row and field for malformed rows.
    """
    where = f"dataset {dataset!r} row {row_id}"
    out = {}
    for prefix, text_column, image_column in SIDES:
        text, image = row.get(text_column), row.get(image_column)
        required = prefix != "neg"
        if required and text_column not in row:
            raise ValueError(f"{where}: missing field {text_column!r}")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{where}: field {text_column!r} must be a string, got {type(text).__name__}")
        text = text or ""
        has_placeholder = PLACEHOLDERS.search(text) is not None
        if has_placeholder and not image:
            raise ValueError(f"{where}: field {text_column!r} has an {IMAGE_PLACEHOLDER} placeholder but "
                             f"{image_column!r} is empty")
        text = PLACEHOLDERS.sub("", text).strip()
        if image and not has_placeholder:
            logger.warning_once(f"{where}: {image_column!r} is set but {text_column!r} has no {IMAGE_PLACEHOLDER}; "
                                "the image is used anyway")
        if required and not text and not image:
            raise ValueError(f"{where}: {text_column!r} and {image_column!r} are both empty")
        out[f"{prefix}_text"] = text
        out[f"{prefix}_image"] = _resolve_image(image, image_root)
    return training_row(dataset, row_id, **out)


def image_root_of(spec, context: ReadContext) -> str | None:
    """The spec's `image_root`, else the load's, else the local folder the subset was read from (a clone)."""
    if spec.image_root or context.image_root:
        return str(context.resolve(spec.image_root or context.image_root))
    local = locate(spec.path, spec.name, context.data_root)
    return str(local if local.is_dir() else local.parent) if local is not None else None


def read(spec, context: ReadContext):
    """The training rows of one MMEB-train subset/split (`spec.subset`, default `spec.name`; `spec.split`)."""
    table = read_training_table(spec.path, spec.subset or spec.name, spec.split, name=spec.name,
                                data_root=context.data_root, hub_cache=context.hub_cache)
    require_columns(table, REQUIRED_COLUMNS, spec.name, spec.path, kind="MMEB")
    root = image_root_of(spec, context)
    return table.map(lambda row, index: normalize_row(row, spec.name, row_id_of(row, index), root),
                     with_indices=True, remove_columns=table.column_names, features=FEATURES,
                     desc=f"Normalising {spec.name}")

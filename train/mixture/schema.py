"""The one normalised training-row schema every source of the training mixture yields, and what readers share.

A training row has, per side (`qry` query, `pos` positive target, `neg` optional hard negative), a text, an image
path (`""` for none) and a video (a list of frame paths, `[]` for none), plus `dataset`, `row_id` and
`qry_instruction` (`""` for none; the query's task instruction when the source keeps it apart from the text). Media
placeholders (`<|image_1|>`, `<video>`) are removed from texts: `TTEProcessor` inserts the backbone's own tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

SIDE_PREFIXES = ("qry", "pos", "neg")
COLUMNS = ["dataset", "row_id", "qry_instruction", "qry_text", "qry_image", "qry_video", "pos_text", "pos_image",
           "pos_video", "neg_text", "neg_image", "neg_video"]
FEATURES = datasets.Features({name: datasets.Sequence(datasets.Value("string")) if name.endswith("_video")
                              else datasets.Value("string") for name in COLUMNS})
DEFAULT_CACHE = Path(os.environ.get("TTE_CACHE", "~/.cache/think-then-embed")).expanduser() / "train"


@dataclass
class ReadContext:
    r"""
    Where a reader finds what a spec leaves relative, shared by all sources of one load.

    Args:
        image_root (`str`, *optional*): folder that relative MMEB-train image paths are relative to.
        data_root (`str`, *optional*): local copies of the sources (the reference's `data/vlm2vec_train`): hub ids
            are looked up as `<data_root>/<org>/<name>` or `<data_root>/<name>`, relative paths under it.
        cache_dir (`str`, *optional*): where document pages are written (`<cache_dir>/pages`); defaults to
            `$TTE_CACHE/train` (`~/.cache/think-then-embed/train`).
        hub_cache (`str`, *optional*): the hub cache (defaults to huggingface_hub's).
    """

    image_root: str | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    hub_cache: str | None = None

    @property
    def pages(self) -> Path:
        return Path(self.cache_dir).expanduser() / "pages" if self.cache_dir else DEFAULT_CACHE / "pages"

    def resolve(self, path: str | None) -> Path | None:
        """`path` made absolute: as given when it exists, else under `data_root`."""
        if not path:
            return None
        given = Path(os.path.expandvars(path)).expanduser()
        if given.is_absolute() or self.data_root is None or given.exists():
            return given
        return Path(os.path.expandvars(self.data_root)).expanduser() / given


def training_row(dataset: str, row_id: str, **fields) -> dict:
    """A full training row: `fields` (e.g. `qry_text=...`, `pos_video=[...]`) and defaults for the rest."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"dataset {dataset!r} row {row_id}: unknown training-row fields {sorted(unknown)}")
    row = {name: [] if name.endswith("_video") else "" for name in COLUMNS}
    row.update(fields, dataset=dataset, row_id=row_id)
    return row


def row_id_of(row: dict, index: int) -> str:
    """A row's id in the ECR store: its `id` column when it has one, else its index in the subset/split."""
    return str(row["id"]) if row.get("id") is not None else str(index)


def check_unique_ids(row_ids: Sequence[str], dataset: str) -> None:
    """Raise a `ValueError` naming the dataset, the id and both row indices when two rows share a row id (ECR is
    keyed by row id: the second row would silently get the first one's ECR)."""
    first: dict[str, int] = {}
    for index, row_id in enumerate(row_ids):
        if row_id in first:
            raise ValueError(f"dataset {dataset!r}: row id {row_id!r} is used by rows {first[row_id]} and {index}; "
                             "row ids (the 'id' column, else the row index) must be unique")
        first[row_id] = index


def require_columns(table, columns: Sequence[str], dataset: str, source: str, kind: str = "source") -> None:
    """Raise a `ValueError` naming the dataset and its columns when `table` lacks one of `columns`."""
    missing = [column for column in columns if column not in table.column_names]
    if missing:
        raise ValueError(f"dataset {dataset!r} ({source}) lacks the {kind} columns {missing}; "
                         f"it has {table.column_names}")

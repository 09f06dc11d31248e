"""Collators that turn training rows plus their ECR into embedder batches for contrastive training."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.utils import logging

from .data import side_content
from .ecr_store import ECRStore, StaleECRError

logger = logging.get_logger(__name__)

MISSING_ECR_POLICIES = ("error", "no_ecr")
# side name in the batch -> (row field prefix, ECR store side, suffix of the store row id)
BATCH_SIDES = {"query": ("qry", "query", ""), "target": ("pos", "target", ""), "negative": ("neg", "target", "#neg")}


def row_name(row: Mapping, index: int) -> str:
    """`dataset/row_id (batch index i)` for error messages."""
    if isinstance(row, Mapping) and "dataset" in row and "row_id" in row:
        return f"row {row['dataset']}/{row['row_id']} (batch index {index})"
    return f"row at batch index {index}"


@dataclass
class TTEContrastiveCollator:
    r"""
    Collates training rows (as made by `train.data.load_mmeb_train`) into query, target and, when rows have them,
    hard-negative batches via `TTEProcessor.process_queries` / `process_targets`, with each side's ECR as the
    assistant turn.

    A row is a mapping with `dataset`, `row_id`, `qry_text`, `qry_image`, `pos_text`, `pos_image` and optionally
    `neg_text`, `neg_image`, `qry_video` / `pos_video` / `neg_video` (lists of frame paths or PIL frames, `[]` for
    none), `qry_instruction`, and explicit `qry_ecr` / `pos_ecr` / `neg_ecr` strings (which take
    precedence over the store). Images are paths or PIL images; empty strings mean none. ECR comes from
    `ecr_store.get(dataset, row_id, side)` with `side` `"query"` for the query and `"target"` for the positive; a hard
    negative is looked up as target-side row id `f"{row_id}#neg"`.

    Args:
        processor (`TTEProcessor`): builds the embedder inputs. With `processor.ecr_mode == "none"` no ECR is read.
        ecr_store (`ECRStore` or `str`, *optional*): the ECR store (or its folder). `None` uses only ECR that rows
            carry themselves.
        ecr_sides (`tuple[str, ...]`, *optional*, defaults to `("query", "target", "negative")`): the sides that read
            ECR from the store.
        on_missing_ecr (`str`, *optional*, defaults to `"error"`): `"error"` raises a `ValueError` naming the row
            and side; `"no_ecr"` embeds that side without ECR, counts it in `missing_ecr` and logs a warning.
        ecr_dropout (`float`, *optional*, defaults to 0): the fraction of sides (each side of each row decided on its
            own) embedded without their ECR, so one embedder learns to embed with and without thinking. The choice
            is a seeded hash of `(ecr_dropout_seed, dataset, row_id, side)`: the same in every dataloader worker
            and every rank, and the same rows in every epoch.
        ecr_dropout_seed (`int`, *optional*, defaults to 0): the seed of that choice.
        ecr_token_counts (`bool`, *optional*, defaults to `False`): also return `"ecr_lengths"`, per side the number
            of tokens each row's ECR (and its end-of-turn token) takes at the end of its input, 0 without ECR: what
            joint training (`TTEContrastiveConfig.sft_loss_weight`) computes its language-model loss on.

    Returns (from `__call__`):
        `dict` with `"query"` and `"target"` (and `"negative"` when any row has a hard negative) model-input dicts,
        and `"target_ids"`: a content id per positive (rows with the same target text, image path and ECR share
        it), with which the loss keeps a shared positive (e.g. a class label) from being another row's negative.
    """

    processor: Any
    ecr_store: ECRStore | str | os.PathLike | None = None
    ecr_sides: tuple[str, ...] = ("query", "target", "negative")
    on_missing_ecr: str = "error"
    ecr_dropout: float = 0.0
    ecr_dropout_seed: int = 0
    ecr_token_counts: bool = False
    missing_ecr: int = field(default=0, init=False)

    def __post_init__(self):
        if self.on_missing_ecr not in MISSING_ECR_POLICIES:
            raise ValueError(f"on_missing_ecr must be one of {list(MISSING_ECR_POLICIES)}, got {self.on_missing_ecr!r}")
        if isinstance(self.ecr_dropout, bool) or not 0 <= self.ecr_dropout <= 1:
            raise ValueError(f"ecr_dropout must be a fraction between 0 and 1, got {self.ecr_dropout!r}")
        unknown = set(self.ecr_sides) - set(BATCH_SIDES)
        if unknown:
            raise ValueError(f"ecr_sides must be among {list(BATCH_SIDES)}, got {sorted(unknown)}")
        if isinstance(self.ecr_store, (str, os.PathLike)):
            if not os.path.isdir(self.ecr_store):
                raise FileNotFoundError(f"ECR store folder not found: {self.ecr_store}")
            self.ecr_store = ECRStore(self.ecr_store)

    def _ecr(self, row: Mapping, side: str, index: int) -> str | None:
        prefix, store_side, suffix = BATCH_SIDES[side]
        if self.ecr_dropout and self._dropped(row, side):
            return None
        own = row.get(f"{prefix}_ecr")
        if own:
            return own
        if self.ecr_store is None or side not in self.ecr_sides or self.processor.ecr_mode == "none":
            return None
        try:
            record = self.ecr_store.get(row["dataset"], f"{row['row_id']}{suffix}", store_side,
                                        content=side_content(row, prefix))
        except StaleECRError as error:
            raise ValueError(f"{row_name(row, index)}: {error}") from error
        if record is not None:
            return record.ecr
        message = (f"{row_name(row, index)}: no {store_side} ECR in the store {self.ecr_store.path} for the {side} "
                   f"(key {row['dataset']!r}, {row['row_id']}{suffix!s}, {store_side!r})")
        if self.on_missing_ecr == "error":
            raise ValueError(message + "; generate it first or pass on_missing_ecr='no_ecr'")
        self.missing_ecr += 1
        logger.warning(f"{message}; embedding it without ECR ({self.missing_ecr} missing so far)")
        return None

    def _dropped(self, row: Mapping, side: str) -> bool:
        """Whether this side of `row` is embedded without its ECR (`ecr_dropout`)."""
        key = f"{self.ecr_dropout_seed}\0{row['dataset']}\0{row['row_id']}\0{side}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") < self.ecr_dropout * 2 ** 64

    def _side_row(self, row: Mapping, side: str, index: int) -> dict | None:
        prefix = BATCH_SIDES[side][0]
        text, image = row.get(f"{prefix}_text") or "", row.get(f"{prefix}_image") or None
        video = list(row.get(f"{prefix}_video") or []) or None
        if side == "negative" and not text and image is None and video is None:
            return None
        if not isinstance(text, str):
            raise ValueError(f"{row_name(row, index)}: field '{prefix}_text' must be a string, "
                             f"got {type(text).__name__}")
        if not text.strip() and image is None and video is None:
            raise ValueError(f"{row_name(row, index)}: the {side} needs '{prefix}_text' or '{prefix}_image' (or "
                             f"'{prefix}_video')")
        if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
            raise FileNotFoundError(f"{row_name(row, index)}: field '{prefix}_image': image file not found: {image}")
        for frame in video or []:
            if isinstance(frame, (str, os.PathLike)) and not os.path.isfile(frame):
                raise FileNotFoundError(f"{row_name(row, index)}: field '{prefix}_video': frame file not found: "
                                        f"{frame}")
        out = {"text": text, "image": image, "ecr": self._ecr(row, side, index)}
        if video is not None:
            out["video"] = video
        if side == "query" and row.get("qry_instruction"):
            out["instruction"] = row["qry_instruction"]
        return out

    def _process(self, side: str, rows: list[dict], names: list[str]) -> dict:
        method = self.processor.process_queries if side == "query" else self.processor.process_targets
        try:
            return dict(method(rows))
        except (ValueError, TypeError, FileNotFoundError) as error:
            raise type(error)(f"{side} batch of rows [{', '.join(names)}]: {error}") from error

    def __call__(self, rows: list[Mapping]) -> dict[str, dict]:
        if not rows:
            raise ValueError("TTEContrastiveCollator got an empty batch")
        sides = {name: [] for name in BATCH_SIDES}
        names = {name: [] for name in BATCH_SIDES}
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"row at batch index {index}: expected a mapping, got {type(row).__name__}")
            for required in ("dataset", "row_id"):
                if row.get(required) in (None, ""):
                    raise ValueError(f"{row_name(row, index)}: missing field {required!r}")
            for side in BATCH_SIDES:
                side_row = self._side_row(row, side, index)
                if side_row is not None:
                    sides[side].append(side_row)
                    names[side].append(f"{row['dataset']}/{row['row_id']}")
        batch = {side: self._process(side, sides[side], names[side]) for side in ("query", "target")}
        batch["target_ids"] = torch.tensor([target_id(row, target) for row, target in zip(rows, sides["target"],
                                                                                       strict=True)])
        if sides["negative"]:
            batch["negative"] = self._process("negative", sides["negative"], names["negative"])
        if self.ecr_token_counts:
            batch["ecr_lengths"] = {side: self._ecr_lengths(sides[side]) for side in batch if side in BATCH_SIDES}
        return batch

    def _ecr_lengths(self, rows: list[dict]) -> torch.Tensor:
        """Tokens of each row's ECR as the embedder reads it, with the end-of-turn token after it (0 without ECR)."""
        tokenizer = self.processor.tokenizer
        texts = [self.processor.embedder_ecr(row["ecr"]) for row in rows]
        return torch.tensor([len(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
                             if text else 0 for text in texts])


MEDIA_FIELDS = tuple(f"{prefix}_{kind}" for prefix, _, _ in BATCH_SIDES.values() for kind in ("image", "video"))


def _column(rows, name: str, strings_only: bool = False) -> list:
    """Column `name` of a `datasets.Dataset` (read as a column, not row by row; with `strings_only` only a string
    column, so that an image column is not decoded) or of a list of mappings."""
    if hasattr(rows, "column_names"):
        feature = rows.features.get(name)
        inner = getattr(feature, "feature", feature)  # a list of frame paths: its item type
        if feature is None or (strings_only and getattr(inner, "dtype", None) not in ("string", "large_string")):
            return [None] * len(rows)
        return list(rows[name])
    return [row.get(name) if isinstance(row, Mapping) else None for row in rows]


def _path_problem(path: str | os.PathLike) -> str | None:
    """Why `path` cannot be an image file (missing, a directory, not a regular file, empty), or `None`."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot stat it ({error.strerror or error})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    return "is an empty file" if info.st_size == 0 else None


def check_media_paths(rows, fields: tuple[str, ...] = MEDIA_FIELDS, max_listed: int = 5) -> None:
    """
    Check, before training, that every image path and video frame path of training `rows` (a `datasets.Dataset` or
    a list of mappings with `dataset`, `row_id` and `qry_image` / `pos_image` / `neg_image`, `qry_video` / ...) is a
    non-empty regular file: one `stat` per distinct path, no image is opened. PIL images and empty paths are
    skipped.

    Raises:
        `FileNotFoundError` naming the dataset, row, field and path of the first `max_listed` bad paths, and their
        number.
    """
    datasets, row_ids = _column(rows, "dataset"), _column(rows, "row_id")
    verdicts, problems = {}, []
    for name in fields:
        for index, paths in enumerate(_column(rows, name, strings_only=True)):
            for path in paths if isinstance(paths, (list, tuple)) else [paths]:
                if not isinstance(path, (str, os.PathLike)) or not str(path):
                    continue
                if path not in verdicts:
                    verdicts[path] = _path_problem(path)
                if verdicts[path] is not None:
                    problems.append(f"dataset {datasets[index]!r} row {row_ids[index]!r} field {name!r}: {path} "
                                    f"{verdicts[path]}")
    if problems:
        listed = "\n  ".join(problems[:max_listed]) + ("\n  ..." if len(problems) > max_listed else "")
        raise FileNotFoundError(f"{len(problems)} image path(s) of the training data cannot be read (checked before "
                                f"training; set check_media_paths=False to skip the check):\n  {listed}")


def target_id(row: Mapping, target: dict) -> int:
    """A 64-bit content id of a positive target; a PIL image or frame (no path to compare) makes it unique to its
    row."""
    image, video = target["image"], target.get("video") or []
    if any(media is not None and not isinstance(media, (str, os.PathLike)) for media in [image, *video]):
        key = ("row", row["dataset"], row["row_id"])
    elif video:
        key = ("content", target["text"], str(image or ""), target["ecr"] or "", tuple(str(f) for f in video))
    else:
        key = ("content", target["text"], str(image or ""), target["ecr"] or "")
    digest = hashlib.blake2b(repr(key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


__all__ = ["TTEContrastiveCollator", "check_media_paths", "target_id"]

"""MMEB-train data for contrastive training: loading, placeholder mapping, per-dataset caps and weights, and a
sampler that makes homogeneous sub-batches.

MMEB-train (`TIGER-Lab/MMEB-train`) has one subset per source dataset with the columns `qry`, `qry_image_path`,
`pos_text`, `pos_image_path` and, for some subsets, `neg_text`, `neg_image_path`. Texts mark their image with
`<|image_1|>`; image paths are relative to an image root. Rows are normalised to

    dataset, row_id, qry_text, qry_image, pos_text, pos_image, neg_text, neg_image

with the placeholder removed from the text and the image path made absolute: `TTEProcessor` puts the image (and so
the backbone's own image token) into the chat where the backbone expects it. `row_id` is the row's index in its
subset/split before any cap or shuffle (or its `id` column when it has one), which is how the ECR store keys
training rows; `train.mmeb_data` reads rows the same way for ECR generation and distillation.

Write a toy MMEB-format set (images, JSON-lines subsets and an ECR store) for the tiny CPU recipe:

    python -m train.data --write-toy runs/toy-mmeb
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import yaml
from torch.utils.data import Sampler
from transformers.utils import logging

logger = logging.get_logger(__name__)

IMAGE_PLACEHOLDER = "<|image_1|>"
PLACEHOLDERS = re.compile(r"<\|image_\d+\|>")  # <|image_1|>, <|image_2|>, ...
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
SIDES = (("qry", "qry", "qry_image_path"), ("pos", "pos_text", "pos_image_path"), ("neg", "neg_text", "neg_image_path"))
COLUMNS = ["dataset", "row_id", "qry_text", "qry_image", "pos_text", "pos_image", "neg_text", "neg_image"]


@dataclass
class DatasetSpec:
    """
    One MMEB-train subset to train on.

    Args:
        name (`str`): the dataset name used in the ECR store and for homogeneous sub-batches (e.g. `"ImageNet_1K"`).
        path (`str`, *optional*, defaults to `"TIGER-Lab/MMEB-train"`): a hub dataset id, a local dataset folder, or
            a `.jsonl`/`.json`/`.parquet` file.
        subset (`str`, *optional*): the dataset config name; defaults to `name` for hub ids and folders.
        split (`str`, *optional*, defaults to `"original"`): the split (MMEB-train's subsets use `"original"`).
        max_samples (`int`, *optional*): keep at most this many rows (a seeded random choice).
        weight (`float`, *optional*, defaults to 1.0): rows per epoch relative to the (capped) size; 2.0 repeats
            every row twice, 0.5 draws half of them.
        image_root (`str`, *optional*): overrides the global image root for this subset.
    """

    name: str
    path: str = "TIGER-Lab/MMEB-train"
    subset: str | None = None
    split: str = "original"
    max_samples: int | None = None
    weight: float = 1.0
    image_root: str | None = None

    def __post_init__(self):
        if not self.name:
            raise ValueError("DatasetSpec.name must be a non-empty string")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"dataset {self.name!r}: max_samples must be positive, got {self.max_samples}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight <= 0:
            raise ValueError(f"dataset {self.name!r}: weight must be a positive number, got {self.weight!r}")


def load_dataset_specs(source: str | os.PathLike | Sequence[dict]) -> list[DatasetSpec]:
    """Dataset specs from a YAML file (a list, or a mapping with a `datasets` list) or an already parsed list."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as handle:
            source = yaml.safe_load(handle)
        if isinstance(source, dict):
            source = source.get("datasets")
    if not isinstance(source, (list, tuple)) or not source:
        raise ValueError("dataset specs must be a non-empty list of mappings with at least a 'name'")
    specs = []
    for index, entry in enumerate(source):
        if not isinstance(entry, dict):
            raise ValueError(f"dataset spec {index}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - set(DatasetSpec.__dataclass_fields__)
        if unknown:
            raise ValueError(f"dataset spec {index} ({entry.get('name')!r}): unknown keys {sorted(unknown)}")
        specs.append(DatasetSpec(**entry))
    return specs


def read_table(path: str, subset: str | None, split: str) -> datasets.Dataset:
    """An MMEB-format table from a local `.jsonl`/`.json`/`.parquet`/`.csv`/`.arrow` file or a hub dataset."""
    file = Path(path)
    if file.is_file():
        suffix = file.suffix.lower()
        if suffix not in FILE_BUILDERS:
            raise ValueError(f"unsupported data file type {suffix!r} ({path}); use one of {sorted(FILE_BUILDERS)}")
        try:
            return datasets.load_dataset(FILE_BUILDERS[suffix], data_files=str(file), split="train")
        except Exception as error:
            if FILE_BUILDERS[suffix] == "json":
                _raise_bad_json_line(file, error)
            raise
    return datasets.load_dataset(path, subset, split=split)


def _raise_bad_json_line(file: Path, error: Exception) -> None:
    """Raise a `ValueError` naming the file and line of the first malformed JSON line of `file` (the `datasets`
    error only gives a position); returns when every line parses (the error was something else)."""
    with open(file, "rb") as handle:
        text = handle.read()
    if file.suffix.lower() == ".json" and text.lstrip()[:1] in (b"[", b"{"):
        try:
            json.loads(text)
            return
        except ValueError as bad:
            line = getattr(bad, "lineno", None)
            raise ValueError(f"{file}: line {line}: not valid JSON ({bad})") from error
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as bad:
            raise ValueError(f"{file}: line {number}: not a valid JSON object ({bad})") from error
        if not isinstance(row, dict):
            raise ValueError(f"{file}: line {number}: expected a JSON object, got {type(row).__name__}") from error


def check_unique_ids(row_ids: Sequence[str], dataset: str) -> None:
    """Raise a `ValueError` naming the dataset, the id and both row indices when two rows share a row id (ECR is
    keyed by row id: the second row would silently get the first one's ECR)."""
    first: dict[str, int] = {}
    for index, row_id in enumerate(row_ids):
        if row_id in first:
            raise ValueError(f"dataset {dataset!r}: row id {row_id!r} is used by rows {first[row_id]} and {index}; "
                             "row ids (the 'id' column, else the row index) must be unique")
        first[row_id] = index


def row_id_of(row: dict, index: int) -> str:
    """A row's id in the ECR store: its `id` column when it has one, else its index in the subset/split."""
    return str(row["id"]) if row.get("id") is not None else str(index)


def _resolve_image(path: str | None, image_root: str | None) -> str:
    if not path:
        return ""
    if os.path.isabs(path) or image_root is None:
        return path
    return os.path.join(image_root, path)


def normalize_row(row: dict, dataset: str, row_id: str, image_root: str | None) -> dict:
    """
    One MMEB-train row as a training row (see the module docstring), `<|image_1|>` removed from the texts and image
    paths joined to `image_root`. Raises `ValueError` naming the dataset, row and field for malformed rows.
    """
    where = f"dataset {dataset!r} row {row_id}"
    out = {"dataset": dataset, "row_id": row_id}
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
    return out


def _epoch_indices(n: int, spec: DatasetSpec, seed: int) -> list[int]:
    """Row indices after the cap (a seeded random subset) and the weight (repeat or subsample)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    kept = sorted(order[:spec.max_samples]) if spec.max_samples is not None else list(range(n))
    target = max(1, round(spec.weight * len(kept)))
    repeats = [kept] * (target // len(kept))
    remainder = target % len(kept)
    if remainder:
        repeats.append(sorted(kept[i] for i in torch.randperm(len(kept), generator=generator)[:remainder].tolist()))
    return [index for part in repeats for index in part]


def load_mmeb_train(specs: Sequence[DatasetSpec], image_root: str | None = None, seed: int = 42) -> datasets.Dataset:
    """
    Load, normalise, cap and weight MMEB-train subsets into one `datasets.Dataset` with the columns `COLUMNS`.

    Args:
        specs (`list[DatasetSpec]`): the subsets (see [`load_dataset_specs`] for YAML).
        image_root (`str`, *optional*): folder that relative image paths are relative to (MMEB-train's `images`
            parent folder).
        seed (`int`, *optional*, defaults to 42): seed of the caps and fractional weights.
    """
    parts = []
    for spec in specs:
        raw = read_table(spec.path, spec.subset or spec.name, spec.split)
        root = spec.image_root or image_root
        normalised = raw.map(
            lambda row, index, name=spec.name, root=root: normalize_row(row, name, row_id_of(row, index), root),
            with_indices=True, remove_columns=raw.column_names, desc=f"Normalising {spec.name}",
        )
        check_unique_ids(normalised["row_id"], spec.name)
        indices = _epoch_indices(len(normalised), spec, seed)
        parts.append(normalised.select(indices))
        logger.info(f"{spec.name}: {len(raw)} rows, {len(indices)} per epoch (cap {spec.max_samples}, "
                    f"weight {spec.weight})")
    return datasets.concatenate_datasets(parts).select_columns(COLUMNS)


def side_content(row: dict, prefix: str) -> dict:
    """The `TTEProcessor` row of one side (`"qry"`, `"pos"`, `"neg"`) of a training row, as `ECRStore.get(...,
    content=...)` and `train.ecr_store.content_hash` expect it (the query side carries `qry_instruction`)."""
    content = {"text": row.get(f"{prefix}_text") or "", "image": row.get(f"{prefix}_image") or None}
    if prefix == "qry" and row.get("qry_instruction"):
        content["instruction"] = row["qry_instruction"]
    return content


# side -> (row field prefix, ECR store side, suffix of the store row id), as the contrastive collator reads them
ECR_SIDES = {"query": ("qry", "query", ""), "target": ("pos", "target", ""), "negative": ("neg", "target", "#neg")}


def check_ecr_provenance(rows, store, sides: Sequence[str] = ("query", "target", "negative"),
                         on_stale: str = "error") -> dict[str, int]:
    r"""
    Check, before training, that every stored ECR a training row would get was written for that row's content (its
    text, instruction and media; see `train.ecr_store.content_hash`), so that inserted, removed or edited rows never
    silently train on another row's ECR.

    Args:
        rows (`datasets.Dataset` or sequence of dicts): training rows (`load_mmeb_train`'s columns).
        store (`ECRStore`): the ECR store training reads.
        sides (`Sequence[str]`, *optional*): among `"query"`, `"target"`, `"negative"`.
        on_stale (`str`, *optional*, defaults to `"error"`): `"error"` raises a `ValueError` naming the stale rows;
            `"warn"` logs them and returns.

    Returns:
        `dict[str, int]`: `checked` (records that match their row), `stale`, `missing` (no record) and `unknown`
        (records of unknown provenance, written before content hashes existed: accepted unchecked).
    """
    from .ecr_store import StaleECRError

    if on_stale not in ("error", "warn"):
        raise ValueError(f"on_stale must be 'error' or 'warn', got {on_stale!r}")
    counts, stale, seen = {"checked": 0, "stale": 0, "missing": 0, "unknown": 0}, [], set()
    for index, row in enumerate(rows):
        for side in sides:
            prefix, store_side, suffix = ECR_SIDES[side]
            key, content = (row["dataset"], f"{row['row_id']}{suffix}", store_side), side_content(row, prefix)
            if key in seen or (side == "negative" and not content["text"] and not content["image"]):
                continue
            seen.add(key)
            try:
                record = store.get(*key, content=content)
            except StaleECRError:
                counts["stale"] += 1
                stale.append(f"{key[0]}/{key[1]} ({side}, training row {index})")
                continue
            counts["missing" if record is None else "checked" if record.content_hash else "unknown"] += 1
    if stale:
        message = (f"{len(stale)} stored ECR records in {store.path} were written for other content than their "
                   f"training row (e.g. {', '.join(stale[:3])}): rows were added, removed, reordered or edited since "
                   "the ECR was generated; regenerate it (python -m train.generate_ecr reports them as stale)")
        if on_stale == "error":
            raise ValueError(message)
        logger.warning(message)
    return counts


class HomogeneousSampler(Sampler[int]):
    """
    Orders a dataset so that every block of `sub_batch_size` consecutive indices comes from one source dataset
    (VLM2Vec-V2's homogeneous sub-batches): rows are shuffled within each dataset, cut into blocks, and the blocks
    of all datasets shuffled together, anew each epoch (`set_epoch`). A dataset's last incomplete block is dropped
    for that epoch.

    With `sub_batch_size` a multiple of the per-device batch size, each device batch is from one dataset; with it
    equal to the global batch, each optimisation step is.

    Args:
        dataset_names (`Sequence[str]`): the source dataset of each row.
        sub_batch_size (`int`): rows per homogeneous block.
        seed (`int`, *optional*, defaults to 0): shuffling seed.
    """

    def __init__(self, dataset_names: Sequence[str], sub_batch_size: int, seed: int = 0):
        if sub_batch_size <= 0:
            raise ValueError(f"sub_batch_size must be positive, got {sub_batch_size}")
        self.sub_batch_size, self.seed, self.epoch = sub_batch_size, seed, 0
        self.groups: dict[str, list[int]] = {}
        for index, name in enumerate(dataset_names):
            self.groups.setdefault(name, []).append(index)
        for name, rows in self.groups.items():
            if len(rows) < sub_batch_size:
                logger.warning(f"dataset {name!r} has {len(rows)} rows, fewer than sub_batch_size={sub_batch_size}:"
                               " it is never sampled")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(rows) // self.sub_batch_size * self.sub_batch_size for rows in self.groups.values())

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        blocks = []
        for rows in self.groups.values():
            shuffled = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
            blocks += [shuffled[i:i + self.sub_batch_size]
                       for i in range(0, len(shuffled) - self.sub_batch_size + 1, self.sub_batch_size)]
        for block in torch.randperm(len(blocks), generator=generator).tolist():
            yield from blocks[block]


def dataset_names_of(dataset) -> list[str]:
    """The `dataset` field of every row of a `datasets.Dataset` or a sequence of dict rows."""
    if isinstance(dataset, datasets.Dataset):
        if "dataset" not in dataset.column_names:
            raise ValueError("homogeneous sub-batches need a 'dataset' column in the training data")
        return list(dataset["dataset"])
    names = []
    for index in range(len(dataset)):
        row = dataset[index]
        if not isinstance(row, dict) or "dataset" not in row:
            raise ValueError(f"training row {index}: homogeneous sub-batches need a 'dataset' field")
        names.append(row["dataset"])
    return names


# ---------------------------------------------------------------------------------------------- toy data
TOY_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


def write_toy_mmeb(out_dir: str | os.PathLike, rows_per_dataset: int = 32, seed: int = 0) -> Path:
    """
    Write a toy MMEB-format training set to `out_dir`: `images/`, two subsets as JSON-lines
    (`ToyCaption.jsonl`: image -> caption, `ToyColourQA.jsonl`: question + image -> colour word with a hard
    negative), a `datasets.yaml` listing them, and an `ecr/` store with query and target ECR for every row.
    """
    from PIL import Image

    from .ecr_store import ECRRecord, ECRStore, content_hash

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    records, specs = [], []
    for name in ("ToyCaption", "ToyColourQA"):
        lines = []
        for index in range(rows_per_dataset):
            colour, other = (TOY_COLOURS[i] for i in torch.randperm(len(TOY_COLOURS), generator=generator)[:2])
            image = f"images/{name}_{index}.png"
            Image.new("RGB", (32, 32), colour).save(out / image)
            row = {"qry": f"{IMAGE_PLACEHOLDER}\nRepresent the given image.", "qry_image_path": image,
                   "pos_text": f"a {colour} square", "pos_image_path": ""}
            if name == "ToyColourQA":
                row.update(qry=f"{IMAGE_PLACEHOLDER}\nWhat colour is the card?", pos_text=colour,
                           neg_text=other, neg_image_path="")
            lines.append(json.dumps(row))
            trained = normalize_row(row, name, str(index), str(out))
            for side, prefix, ecr in (("query", "qry", f"<think>The card is {colour}.</think> Answer: {colour}"),
                                      ("target", "pos", f"Answer: {colour}")):
                records.append(ECRRecord(name, str(index), side, ecr, colour, "toy", "toy",
                                         content_hash(side_content(trained, prefix))))
            if name == "ToyColourQA":
                records.append(ECRRecord(name, f"{index}#neg", "target", f"Answer: {other}", other, "toy", "toy",
                                         content_hash(side_content(trained, "neg"))))
        (out / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        specs.append({"name": name, "path": str(out / f"{name}.jsonl")})
    ECRStore(out / "ecr").add(records)
    (out / "datasets.yaml").write_text(yaml.safe_dump({"datasets": specs}), encoding="utf-8")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-toy", required=True, metavar="FOLDER", help="write a toy MMEB-format set here")
    parser.add_argument("--rows-per-dataset", type=int, default=32)
    args = parser.parse_args(argv)
    print(write_toy_mmeb(args.write_toy, args.rows_per_dataset))


if __name__ == "__main__":
    main()


__all__ = ["COLUMNS", "DatasetSpec", "HomogeneousSampler", "check_ecr_provenance", "check_unique_ids",
           "dataset_names_of", "load_dataset_specs", "load_mmeb_train", "normalize_row", "side_content",
           "write_toy_mmeb"]

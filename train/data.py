"""Training data for contrastive training, ECR generation and distillation: dataset specs (YAML), the sources of
the VLM2Vec-V2 mixture (`train.mixture`), per-dataset caps and weights, and a sampler that makes homogeneous
sub-batches.

Every source yields rows in one schema (`train.mixture.schema`):

    dataset, row_id, qry_instruction, qry_text, qry_image, qry_video, pos_text, pos_image, pos_video,
    neg_text, neg_image, neg_video

with media placeholders removed from texts, image paths absolute (`""` for none) and videos as lists of frame paths
(`[]` for none): `TTEProcessor` puts the media (and so the backbone's own tokens) into the chat. `row_id` is the
row's index in its subset/split before any cap or shuffle (or its `id` column when an MMEB table has one), which is
how the ECR store keys training rows; `train.mmeb_data` reads rows the same way for ECR generation and distillation.

Write a toy MMEB-format set (images, JSON-lines subsets and an ECR store) for the tiny CPU recipe:

    python -m train.data --output_dir runs/toy-mmeb
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import torch
import yaml
from torch.utils.data import Sampler
from transformers.utils import logging

from .mixture import COLUMNS, DEFAULT_TASK_TYPES, READERS, ReadContext, check_unique_ids, read_source, row_id_of
from .mixture.mmeb_train import IMAGE_PLACEHOLDER, normalize_row
from .tables import read_training_table

logger = logging.get_logger(__name__)


SELECTIONS = ("random", "first")
WEIGHTINGS = ("rows", "probability")


@dataclass
class DatasetSpec:
    r"""
    One training source: an MMEB-train subset, a visual-document table or a LLaVA-Hound annotation file (see
    `train.mixture`), with its cap, weight and the task type of its reasoner prompts.

    Args:
        name (`str`): the dataset name used in the ECR store and for homogeneous sub-batches (e.g. `"ImageNet_1K"`).
        path (`str`, *optional*, defaults to `"TIGER-Lab/MMEB-train"`): a hub dataset id (read from the hub cache,
            or from `<data_root>/<org>/<name>` / `<data_root>/<name>` when there), a local folder (hub snapshot or
            `save_to_disk`), or a `.jsonl`/`.json`/`.parquet`/`.csv`/`.arrow` file; relative paths may be relative
            to `data_root`.
        subset (`str`, *optional*): the dataset config name; defaults to `name` for MMEB-train.
        split (`str`, *optional*, defaults to `"original"`): the split (MMEB-train: `"original"` or
            `"diverse_instruction"`; the other sources: `"train"`).
        parser (`str`, *optional*, defaults to `"mmeb"`): the source family, one of `train.mixture.READERS`.
        task_type (`str`, *optional*): one of `processing_tte.TASK_TYPES`, the reasoner prompt of this source's
            queries and targets in ECR generation; defaults to the parser's (`train.mixture.DEFAULT_TASK_TYPES`).
        max_samples (`int`, *optional*): keep at most this many rows (the reference's `num_sample_per_subset`).
        select (`str`, *optional*, defaults to `"random"`): which rows a cap keeps: `"random"` (seeded) or
            `"first"` (the reference: the first `max_samples` rows).
        weight (`float`, *optional*, defaults to 1.0): with `weighting="rows"`, rows per epoch relative to the
            (capped) size (2.0 repeats every row twice, 0.5 draws half of them); with `"probability"`, the share of
            an epoch's rows (the reference's sampling probability weight / sum of weights).
        weighting (`str`, *optional*, defaults to `"rows"`): `"rows"` or `"probability"` (the same for all specs of
            a load; a YAML file sets it once at the top).
        image_root (`str`, *optional*): overrides the global image root for this subset (MMEB-train).
        data_root (`str`, *optional*): folder of local copies of the sources (a YAML file sets it once at the top).
        frames_root (`str`, *optional*): LLaVA-Hound's frame folders (`train_300k`), relative to `data_root`.
        num_frames (`int`, *optional*, defaults to 8): frames per video.
        mode (`str`, *optional*): `llavahound_caption`: `"caption_retrieval"` (default) or `"video_retrieval"`.
        instruction (`str`, *optional*): overrides the source's query instruction (visual documents, video).
        target_instruction (`str`, *optional*): overrides the source's target instruction.
    """

    name: str
    path: str = "TIGER-Lab/MMEB-train"
    subset: str | None = None
    split: str = "original"
    parser: str = "mmeb"
    task_type: str | None = None
    max_samples: int | None = None
    select: str = "random"
    weight: float = 1.0
    weighting: str = "rows"
    image_root: str | None = None
    data_root: str | None = None
    frames_root: str | None = None
    num_frames: int = 8
    mode: str | None = None
    instruction: str | None = None
    target_instruction: str | None = None

    def __post_init__(self):
        from processing_tte import TASK_TYPES

        if not self.name:
            raise ValueError("DatasetSpec.name must be a non-empty string")
        if self.parser not in READERS:
            raise ValueError(f"dataset {self.name!r}: parser must be one of {sorted(READERS)}, got {self.parser!r}")
        self.task_type = self.task_type or DEFAULT_TASK_TYPES[self.parser]
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"dataset {self.name!r}: task_type must be one of {list(TASK_TYPES)}, "
                             f"got {self.task_type!r}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"dataset {self.name!r}: max_samples must be positive, got {self.max_samples}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or self.weight <= 0:
            raise ValueError(f"dataset {self.name!r}: weight must be a positive number, got {self.weight!r}")
        for name, allowed in (("select", SELECTIONS), ("weighting", WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"dataset {self.name!r}: {name} must be one of {list(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        if self.num_frames < 1:
            raise ValueError(f"dataset {self.name!r}: num_frames must be at least 1, got {self.num_frames}")


SPEC_DEFAULTS = ("data_root", "weighting")  # keys a YAML file may set once, at the top, for all its datasets


def load_dataset_specs(source: str | os.PathLike | Sequence[dict], data_root: str | None = None,
                       spec_class: type | None = None) -> list[DatasetSpec]:
    """Dataset specs (`spec_class`, default `DatasetSpec`) from a YAML file (a list, or a mapping with a `datasets`
    list and optionally `data_root` and `weighting` for all of them) or an already parsed list. `data_root`
    overrides the file's and the entries'."""
    spec_class, defaults = spec_class or DatasetSpec, {}
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as handle:
            source = yaml.safe_load(handle)
        if isinstance(source, dict):
            defaults = {key: source[key] for key in SPEC_DEFAULTS if source.get(key) is not None}
            source = source.get("datasets")
    if not isinstance(source, (list, tuple)) or not source:
        raise ValueError("dataset specs must be a non-empty list of mappings with at least a 'name'")
    specs, known = [], {f.name for f in fields(spec_class)}
    override = {"data_root": str(data_root)} if data_root is not None else {}
    for index, entry in enumerate(source):
        if not isinstance(entry, dict):
            raise ValueError(f"dataset spec {index}: expected a mapping, got {type(entry).__name__}")
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"dataset spec {index} ({entry.get('name')!r}): unknown keys {sorted(unknown)}")
        specs.append(spec_class(**{**defaults, **entry, **override}))
    return specs


def read_datasets(items, inline_class: type | None = None) -> list[DatasetSpec]:
    """What `--datasets` takes in every script: recipe files (`.yaml`/`.yml`/`.json`, read by `load_dataset_specs`
    with `DatasetSpec` defaults, as training reads them), JSON object strings (one dataset each, as given on the
    command line), mappings (YAML) or specs, or one of these alone. Inline entries become `inline_class` (default
    `DatasetSpec`). `ValueError` names the item that is none of these."""
    if isinstance(items, (str, os.PathLike, dict, DatasetSpec)):
        items = [items]
    specs = []
    for index, item in enumerate(items or []):
        if isinstance(item, str) and item.lstrip().startswith("{"):
            try:
                item = json.loads(item)
            except json.JSONDecodeError as error:
                raise ValueError(f"--datasets item {index}: not a JSON object ({error}): {item!r}") from error
        if isinstance(item, DatasetSpec):
            specs.append(item)
        elif isinstance(item, dict):
            specs += load_dataset_specs([item], spec_class=inline_class)
        elif isinstance(item, (str, os.PathLike)) and Path(item).is_file():
            specs += load_dataset_specs(item)
        else:
            raise ValueError(f"--datasets item {index}: {item!r} is neither a JSON object nor a recipe file")
    return specs


def read_table(path: str, subset: str | None, split: str) -> datasets.Dataset:
    """An MMEB-format table from a local `.jsonl`/`.json`/`.parquet`/`.csv`/`.arrow` file, a local folder (hub
    snapshot or `save_to_disk`) or a hub dataset (through the hub cache); see `train.tables`."""
    return read_training_table(path, subset, split)


def capped_indices(n: int, spec: DatasetSpec, seed: int) -> list[int]:
    """The indices of the rows a cap keeps (all without one), sorted: the first `max_samples` with
    `select="first"`, a seeded random choice with `"random"`."""
    if spec.max_samples is None or spec.max_samples >= n:
        return list(range(n))
    if spec.select == "first":
        return list(range(spec.max_samples))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:spec.max_samples].tolist())


def _epoch_indices(kept: list[int], target: int, seed: int) -> list[int]:
    """`target` row indices drawn from `kept`: whole repeats, then a seeded random part of the remainder."""
    generator = torch.Generator().manual_seed(seed + 1)
    repeats = [kept] * (target // len(kept))
    remainder = target % len(kept)
    if remainder:
        repeats.append(sorted(kept[i] for i in torch.randperm(len(kept), generator=generator)[:remainder].tolist()))
    return [index for part in repeats for index in part]


def epoch_sizes(specs: Sequence[DatasetSpec], capped: Sequence[int]) -> list[int]:
    """Rows per epoch of each spec: weight x capped size (`weighting="rows"`), or weight / sum of weights x the
    total capped size (`"probability"`: the reference's interleaving probabilities and epoch length)."""
    weightings = {spec.weighting for spec in specs}
    if len(weightings) > 1:
        raise ValueError(f"all datasets of one load need the same weighting, got {sorted(weightings)}")
    if weightings == {"probability"}:
        total, weights = sum(capped), sum(spec.weight for spec in specs)
        return [max(1, round(spec.weight / weights * total)) for spec in specs]
    return [max(1, round(spec.weight * size)) for spec, size in zip(specs, capped, strict=True)]


def load_mmeb_train(specs: Sequence[DatasetSpec], image_root: str | None = None, seed: int = 42,
                    data_root: str | None = None, cache_dir: str | None = None,
                    hub_cache: str | None = None) -> datasets.Dataset:
    """
    Load, normalise, cap and weight training sources (MMEB-train subsets and the rest of the VLM2Vec-V2 mixture,
    see `train.mixture`) into one `datasets.Dataset` with the columns `COLUMNS`.

    Args:
        specs (`list[DatasetSpec]`): the sources (see [`load_dataset_specs`] for YAML).
        image_root (`str`, *optional*): folder that relative MMEB-train image paths are relative to (MMEB-train's
            `images` parent folder; defaults to the local folder a subset is read from).
        seed (`int`, *optional*, defaults to 42): seed of the random caps and fractional weights.
        data_root (`str`, *optional*): overrides the specs' `data_root` (local copies of the sources).
        cache_dir (`str`, *optional*): where document pages are written (see `train.mixture.ReadContext`).
        hub_cache (`str`, *optional*): the hub cache hub datasets are read from (defaults to huggingface_hub's).
    """
    tables, capped = [], []
    for spec in specs:
        context = ReadContext(image_root=image_root, data_root=data_root or spec.data_root, cache_dir=cache_dir,
                              hub_cache=hub_cache)
        rows = read_source(spec, context)
        if len(rows) == 0:
            raise ValueError(f"dataset {spec.name!r} ({spec.path}) has no rows")
        tables.append(rows)
        capped.append(capped_indices(len(rows), spec, seed))
    parts = []
    sizes = epoch_sizes(specs, [len(kept) for kept in capped])
    for spec, rows, kept, size in zip(specs, tables, capped, sizes, strict=True):
        parts.append(rows.select(_epoch_indices(kept, size, seed)))
        logger.info(f"{spec.name}: {len(rows)} rows, {size} per epoch (cap {spec.max_samples}, "
                    f"weight {spec.weight}, weighting {spec.weighting})")
    return datasets.concatenate_datasets(parts).select_columns(COLUMNS)


def side_content(row: dict, prefix: str) -> dict:
    """The `TTEProcessor` row of one side (`"qry"`, `"pos"`, `"neg"`) of a training row, as `ECRStore.get(...,
    content=...)` and `train.ecr_store.content_hash` expect it (the query side carries `qry_instruction`; a side
    without video has no `video` key, so image/text rows hash as before videos existed)."""
    content = {"text": row.get(f"{prefix}_text") or "", "image": row.get(f"{prefix}_image") or None}
    if row.get(f"{prefix}_video"):
        content["video"] = list(row[f"{prefix}_video"])
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


@dataclass
class ToyArguments:
    """Options of `python -m train.data` (writes the toy MMEB-format set of the tiny CPU recipe)."""

    output_dir: str = field(metadata={"help": "folder the toy set is written to", "aliases": ["--write_toy",
                                                                                              "--output_dir"]})
    rows_per_dataset: int = field(default=32, metadata={"help": "rows of each toy subset"})


def main(argv=None) -> None:
    from train.cli import parse

    (args,) = parse((ToyArguments,), "train.data", __doc__, argv)
    print(write_toy_mmeb(args.output_dir, args.rows_per_dataset))


if __name__ == "__main__":
    main()


__all__ = ["COLUMNS", "DatasetSpec", "HomogeneousSampler", "capped_indices", "check_ecr_provenance",
           "check_unique_ids", "dataset_names_of", "epoch_sizes", "load_dataset_specs", "load_mmeb_train",
           "normalize_row", "read_datasets", "read_table", "row_id_of", "side_content", "write_toy_mmeb"]

"""Training rows as (query, positive target, optional negatives) pairs for ECR generation and distillation, read
by the same readers as contrastive training (`train.data`, `train.mixture`): every source of the VLM2Vec-V2 mixture
(MMEB-train subsets, visual documents, LLaVA-Hound video), the same row ids, the same caps.

Each side is a `TTEProcessor` row (`text`, and `image`, `video` (frame paths) and `instruction` when it has them),
which is what `train.generate_ecr` sends to the reasoner with the dataset's `task_type` prompt.

    from train.mmeb_data import MMEBDatasetConfig, load_mmeb_pairs
    pairs = load_mmeb_pairs(MMEBDatasetConfig(name="MSCOCO_i2t", path="TIGER-Lab/MMEB-train", subset="MSCOCO_i2t",
                                              split="original", image_root="/data/MMEB-train"))

    from train.mmeb_data import dataset_configs  # every source of a mixture recipe
    configs = dataset_configs(["train/recipes/mixture_mmeb_v2.yaml"])
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from train.data import DatasetSpec, capped_indices, read_datasets, side_content
from train.mixture import ReadContext, read_source


@dataclass
class MMEBDatasetConfig(DatasetSpec):
    r"""
    One training source for ECR generation and distillation: every field of `train.data.DatasetSpec` (the same
    YAML entries), with a default of its own and one extra field. `task_type` (one of `processing_tte.TASK_TYPES`,
    default: the parser's, `"retrieval"` for MMEB) picks the reasoner prompt of both sides.

    Args:
        split (`str`, *optional*, defaults to `"train"`): the split to read (a recipe's entries keep theirs).
        max_rows (`int`, *optional*): read at most this many rows (the first ones), after the spec's cap.
    """

    split: str = "train"
    max_rows: int | None = None


@dataclass
class MMEBPair:
    """One row: its query and positive target as `TTEProcessor` rows, plus any negatives."""

    dataset: str
    row_id: str
    query: dict
    target: dict
    negatives: list[dict] = field(default_factory=list)


def _side(row: dict, prefix: str) -> dict:
    """The `TTEProcessor` row of one side (`qry`, `pos`, `neg`) of a training row; no empty media keys."""
    content = side_content(row, prefix)
    return {key: value for key, value in content.items() if value is not None}


def load_mmeb_pairs(config: MMEBDatasetConfig, image_root: str | os.PathLike | None = None, seed: int = 42,
                    data_root: str | os.PathLike | None = None, cache_dir: str | None = None,
                    hub_cache: str | None = None) -> list[MMEBPair]:
    """Read a training source into `MMEBPair`s through the same readers, row ids and cap as training
    (`train.data.load_mmeb_train` with the same `seed`; weights do not apply: every kept row once).

    Raises:
        `ValueError`: a required column is missing, a row is malformed (named by dataset, row and field), two rows
            share an id, or a JSON line is malformed (named by file and line).
    """
    context = ReadContext(image_root=None if image_root is None else str(image_root),
                          data_root=str(data_root) if data_root is not None else config.data_root,
                          cache_dir=cache_dir, hub_cache=hub_cache)
    rows = read_source(config, context)
    kept = capped_indices(len(rows), config, seed)
    if getattr(config, "max_rows", None) is not None:
        kept = kept[:config.max_rows]
    pairs = []
    for row in rows.select(kept):
        has_negative = row["neg_text"] or row["neg_image"] or row["neg_video"]
        negatives = [_side(row, "neg")] if has_negative else []
        pairs.append(MMEBPair(row["dataset"], row["row_id"], _side(row, "qry"), _side(row, "pos"), negatives))
    return pairs


def dataset_config(spec) -> MMEBDatasetConfig:
    """An `MMEBDatasetConfig` from a config or `DatasetSpec`, a mapping (YAML) or a JSON object string (command
    line)."""
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
    if isinstance(spec, DatasetSpec) and not isinstance(spec, MMEBDatasetConfig):
        return MMEBDatasetConfig(**dataclasses.asdict(spec))
    if not isinstance(spec, MMEBDatasetConfig):
        raise ValueError(f"a dataset must be a mapping or an MMEBDatasetConfig, got {type(spec).__name__}")
    return spec


def dataset_configs(items) -> list[MMEBDatasetConfig]:
    """`dataset_config` of each dataset `train.data.read_datasets` reads from `items` (JSON objects, mappings, or
    recipe files such as `train/recipes/mixture_mmeb_v2.yaml`, read with `DatasetSpec` defaults, as training reads
    them)."""
    return [dataset_config(spec) for spec in read_datasets(items, inline_class=MMEBDatasetConfig)]


__all__ = ["MMEBDatasetConfig", "MMEBPair", "dataset_config", "dataset_configs", "load_mmeb_pairs"]

"""Length-bucketed batching: rows processed once each, sorted by token length, padded into batches.

Padding a batch to its longest row wastes compute on every shorter row; sorting rows by length first groups rows of
similar length, so batches carry little padding. Each row goes through the processor exactly once (its length is
read from its own features) and the per-row features are padded into batches here.
"""

from __future__ import annotations

import torch
from transformers import BatchFeature


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of at most `batch_size` rows of similar length (longest first, ties in
    input order). Concatenated, the batches are a permutation of `range(len(lengths))`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def pad_features(features: list[dict], pad_token_id: int, padding_side: str = "right") -> BatchFeature:
    r"""
    Join single-row processor outputs into one batch, as the processor would have made it from all rows at once.

    Per-token tensors (`input_ids`, `attention_mask`, `mm_token_type_ids`, ...: shaped like `input_ids`) are padded
    to the longest row, `input_ids` with `pad_token_id` and the others with 0; every other tensor (`pixel_values`,
    `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, ...) is concatenated along its first dimension in row
    order, over the rows that have it.

    Args:
        features (`list[dict]`): one processor output (a `BatchFeature` of batch size 1) per row.
        pad_token_id (`int`): the tokenizer's pad token id.
        padding_side (`str`, *optional*, defaults to `"right"`): `"left"` for generation prompts.

    Returns:
        `BatchFeature` with tensors.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not features:
        raise ValueError("pad_features needs at least one row")
    width = max(feature["input_ids"].shape[1] for feature in features)
    batch = {}
    for key in dict.fromkeys(key for feature in features for key in feature):
        values = [feature[key] for feature in features if key in feature]
        per_token = len(values) == len(features) and all(
            torch.is_tensor(value) and value.shape == feature["input_ids"].shape
            for value, feature in zip(values, features, strict=True))
        if not per_token:
            batch[key] = torch.cat(values, dim=0)
            continue
        fill = pad_token_id if key == "input_ids" else 0
        padded = []
        for value in values:
            pad = value.new_full((1, width - value.shape[1]), fill)
            padded.append(torch.cat([pad, value] if padding_side == "left" else [value, pad], dim=1))
        batch[key] = torch.cat(padded, dim=0)
    return BatchFeature(batch)

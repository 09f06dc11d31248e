"""Length-bucketed batching: rows processed once each, sorted by token length, padded into batches.

Padding a batch to its longest row wastes compute on every shorter row; sorting rows by length first groups rows of
similar length, so batches carry little padding. Each row goes through the processor exactly once (its length is
read from its own features) and the per-row features are padded into batches here. `map_chunks` runs that per-row
preprocessing in `DataLoader` worker processes, ahead of the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import BatchFeature


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of at most `batch_size` rows of similar length (longest first, ties in
    input order). Concatenated, the batches are a permutation of `range(len(lengths))`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _cat(values: list[torch.Tensor], pin_memory: bool) -> torch.Tensor:
    """`torch.cat(values)` along dim 0, written straight into page-locked memory when `pin_memory` (one copy, not a
    concatenation followed by `Tensor.pin_memory()`)."""
    if not pin_memory:
        return torch.cat(values, dim=0)
    shape = (sum(value.shape[0] for value in values), *values[0].shape[1:])
    out = torch.empty(shape, dtype=values[0].dtype, pin_memory=True)
    return torch.cat(values, dim=0, out=out)


def pad_features(features: list[dict], pad_token_id: int, padding_side: str = "right",
                 pin_memory: bool = False) -> BatchFeature:
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
        pin_memory (`bool`, *optional*, defaults to `False`): allocate the batch's tensors in page-locked memory, so
            that `.to("cuda", non_blocking=True)` overlaps the copy with compute (needs CUDA).

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
            batch[key] = _cat(values, pin_memory)
            continue
        fill = pad_token_id if key == "input_ids" else 0
        padded = []
        for value in values:
            pad = value.new_full((1, width - value.shape[1]), fill)
            padded.append(torch.cat([pad, value] if padding_side == "left" else [value, pad], dim=1))
        batch[key] = _cat(padded, pin_memory)
    return BatchFeature(batch)


# ------------------------------------------------------------------------------ preprocessing in DataLoader workers
@dataclass
class RowError:
    """A row whose preprocessing raised one of the expected errors; carried back from a worker as a value, so the
    main process re-raises (or reports) it exactly as without workers."""

    index: int
    error: BaseException


def process_rows(process, errors: tuple[type[BaseException], ...], rows: list, start: int) -> list:
    """`process(row)` for each of `rows` (rows `start`, `start + 1`, ... of the whole list); a row raising one of
    `errors` gives a `RowError` in its place instead."""
    out = []
    for offset, row in enumerate(rows):
        try:
            out.append(process(row))
        except errors as error:
            out.append(RowError(start + offset, error))
    return out


class _Chunks(Dataset):
    """Item `i` is `function(items[i * size:(i + 1) * size], i * size)`."""

    def __init__(self, items: list, function, size: int):
        self.items, self.function, self.size = items, function, size

    def __len__(self) -> int:
        return -(-len(self.items) // self.size)

    def __getitem__(self, index: int):
        start = index * self.size
        return self.function(self.items[start:start + self.size], start)


def _keep(item):
    return item


def map_chunks(function, items: list, chunk_size: int, num_workers: int = 0, prefetch_factor: int | None = None,
               multiprocessing_context=None) -> Iterator:
    r"""
    Yield `function(chunk, start)` for consecutive chunks of `chunk_size` items, in order; with `num_workers > 0` the
    calls run in `torch.utils.data.DataLoader` worker processes, which work ahead of the consumer.

    Args:
        function (`Callable[[list, int], Any]`): called with a chunk and the index of its first item; must be
            picklable when the workers are spawned (a module-level function or a `functools.partial` of one).
        items (`list`): the items (rows); workers get them by fork, or pickled under a spawn context.
        chunk_size (`int`): items per call (and per message from a worker).
        num_workers (`int`, *optional*, defaults to 0): 0 runs `function` in this process, lazily.
        prefetch_factor (`int`, *optional*): chunks each worker prepares ahead (`DataLoader`'s; defaults to 2).
        multiprocessing_context (`str`, *optional*): `"fork"`, `"spawn"` or `"forkserver"`; defaults to the
            platform's.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    dataset = _Chunks(items, function, chunk_size)
    if num_workers == 0 or not items:
        return (dataset[index] for index in range(len(dataset)))
    workers = min(num_workers, len(dataset))
    return iter(DataLoader(dataset, batch_size=None, shuffle=False, collate_fn=_keep, num_workers=workers,
                           prefetch_factor=prefetch_factor, multiprocessing_context=multiprocessing_context))

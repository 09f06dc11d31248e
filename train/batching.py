"""Length-bucketed batching: rows processed once each, sorted by token length, padded into batches.

Padding a batch to its longest row wastes compute on every shorter row; sorting rows by length first groups rows of
similar length, so batches carry little padding. Each row goes through the processor exactly once (its length is
read from its own features) and the per-row features are padded into batches here. `map_chunks` runs that per-row
preprocessing in `DataLoader` worker processes, ahead of the model.
"""

from __future__ import annotations

import queue
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


class Arena:
    """Reusable memory for the batches `pad_features` builds, one growing buffer per input name: a fresh 60 MB batch
    of pixels costs page faults on every call (on a VM about as much as the copy itself), a reused one does not. A
    batch made in an arena is valid until the next batch made in it."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def empty(self, key: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        size = -(-torch.Size(shape).numel() * dtype.itemsize // 64) * 64
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[key] = torch.empty(size, dtype=torch.uint8)
        return buffer[:torch.Size(shape).numel() * dtype.itemsize].view(dtype).view(shape)


def _cat(values: list[torch.Tensor], pin_memory: bool, arena: Arena | None = None, key: str = "") -> torch.Tensor:
    """`torch.cat(values)` along dim 0, written straight into page-locked memory when `pin_memory` (one copy, not a
    concatenation followed by `Tensor.pin_memory()`), or into `arena`."""
    if not pin_memory and arena is None:
        return torch.cat(values, dim=0)
    shape = (sum(value.shape[0] for value in values), *values[0].shape[1:])
    if pin_memory:
        out = torch.empty(shape, dtype=values[0].dtype, pin_memory=True)
    else:
        out = arena.empty(key, shape, values[0].dtype)
    return torch.cat(values, dim=0, out=out)


def pad_features(features: list[dict], pad_token_id: int, padding_side: str = "right",
                 pin_memory: bool = False, arena: Arena | None = None) -> BatchFeature:
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
        arena (`Arena`, *optional*): build the batch in this reusable memory (CPU, without `pin_memory`); the batch
            is overwritten by the next one built in it.

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
            batch[key] = _cat(values, pin_memory, arena, key)
            continue
        fill = pad_token_id if key == "input_ids" else 0
        padded = []
        for value in values:
            pad = value.new_full((1, width - value.shape[1]), fill)
            padded.append(torch.cat([pad, value] if padding_side == "left" else [value, pad], dim=1))
        batch[key] = _cat(padded, pin_memory, arena, key)
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


def _map_tensors(item, function):
    """`item` with every tensor inside it (in lists, tuples, dicts, `BatchFeature`s) replaced by `function(tensor)`."""
    if torch.is_tensor(item):
        return function(item)
    if isinstance(item, BatchFeature):
        return BatchFeature({key: _map_tensors(value, function) for key, value in item.items()})
    if isinstance(item, dict):
        return {key: _map_tensors(value, function) for key, value in item.items()}
    if isinstance(item, list | tuple):
        return type(item)(_map_tensors(value, function) for value in item)
    return item


def _nbytes(tensor: torch.Tensor) -> int:
    return -(-tensor.numel() * tensor.element_size() // 64) * 64  # 64-byte aligned


class _Slots:
    """A worker's reusable shared-memory buffers. Tensors a worker returns are normally copied into fresh shared
    memory, one new segment per tensor; touching fresh pages is what costs (on a VM: ~30 ms for the 7 MB of pixels of
    one 640x480 image). Here each chunk's tensors are packed into one buffer that the worker allocates once and reuses
    after the main process hands it back (`ChunkStream.release`); nothing blocks: with no free buffer it allocates.
    `buffers` are free buffers from earlier workers (a `SharedBuffers` pool), reused first."""

    def __init__(self, released, buffers=()):
        self.released, self.buffers = released, list(buffers)
        self.free = list(range(len(self.buffers)))

    def pack(self, item) -> tuple[int | None, object]:
        while True:
            try:
                self.free.append(self.released.get_nowait())
            except queue.Empty:
                break
        sizes = []
        _map_tensors(item, lambda tensor: sizes.append(_nbytes(tensor)))
        if not sum(sizes):
            return None, item
        need = sum(sizes)
        fitting = [slot for slot in self.free if self.buffers[slot].numel() >= need]
        if fitting:
            slot = min(fitting, key=lambda index: self.buffers[index].numel())
            self.free.remove(slot)
        else:
            slot = len(self.buffers)
            self.buffers.append(torch.empty(need + need // 4, dtype=torch.uint8).share_memory_())
        buffer, offset = self.buffers[slot], 0

        def place(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal offset
            size = tensor.numel() * tensor.element_size()
            view = buffer[offset:offset + size].view(tensor.dtype).view(tensor.shape)
            offset += _nbytes(tensor)
            return view.copy_(tensor)

        return slot, _map_tensors(item, place)


class SharedBuffers:
    """Shared-memory buffers kept by the consumer of `map_chunks(reuse_memory=True)` across calls, so that the workers
    of the next call start with warm memory instead of allocating it again (one pool per consumer, used by one
    `map_chunks` stream at a time)."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []

    def add(self, storage) -> None:
        if all(buffer.data_ptr() != storage.data_ptr() for buffer in self.buffers):
            self.buffers.append(torch.empty(0, dtype=torch.uint8).set_(storage))

    def split(self, parts: int) -> list[list[torch.Tensor]]:
        return [self.buffers[index::parts] for index in range(parts)]


class _Chunks(Dataset):
    """Item `i` is `function(items[i * size:(i + 1) * size], i * size)`; with `released` (one queue per worker), the
    item is packed into the worker's reusable shared memory and comes as `(worker id, buffer id, item)`; `buffers`
    are each worker's initial free buffers."""

    def __init__(self, items: list, function, size: int, released: list | None = None, buffers: list | None = None):
        self.items, self.function, self.size, self.released, self.buffers = items, function, size, released, buffers
        self.slots = None

    def __len__(self) -> int:
        return -(-len(self.items) // self.size)

    def __getitem__(self, index: int):
        start = index * self.size
        item = self.function(self.items[start:start + self.size], start)
        if self.released is None:
            return item
        worker = torch.utils.data.get_worker_info().id
        if self.slots is None:
            self.slots = _Slots(self.released[worker], self.buffers[worker] if self.buffers else ())
        return (worker, *self.slots.pack(item))


def _keep(item):
    return item


class ChunkStream:
    """The results of `map_chunks`, in order. With `reuse_memory`, call `release(end)` once the items before item
    index `end` are no longer needed (their tensors are views of memory the workers will overwrite)."""

    def __init__(self, results, released: list | None = None, chunk_size: int = 1, total: int = 0,
                 pool: SharedBuffers | None = None):
        self.results, self.released, self.chunk_size, self.total = iter(results), released, chunk_size, total
        self.pending, self.end, self.pool, self.seen = [], 0, pool, set()

    def __iter__(self):
        return self

    def __next__(self):
        result = next(self.results)
        if self.released is None:
            return result
        worker, slot, item = result
        self.end = min(self.end + self.chunk_size, self.total)
        if slot is not None:
            self.pending.append((self.end, worker, slot))
            if self.pool is not None and (worker, slot) not in self.seen:  # keep the buffer for the next workers
                self.seen.add((worker, slot))
                tensors = []
                _map_tensors(item, tensors.append)
                self.pool.add(tensors[0].untyped_storage())
        return item

    def release(self, end: int) -> None:
        """Hand back the memory of every chunk whose items all come before item index `end`."""
        while self.pending and self.pending[0][0] <= end:
            _, worker, slot = self.pending.pop(0)
            self.released[worker].put(slot)


def map_chunks(function, items: list, chunk_size: int, num_workers: int = 0, prefetch_factor: int | None = None,
               multiprocessing_context=None, reuse_memory: bool = False,
               pool: SharedBuffers | None = None) -> ChunkStream:
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
        reuse_memory (`bool`, *optional*, defaults to `False`): workers pack each result's tensors into shared
            buffers they reuse once the consumer calls `ChunkStream.release` (much cheaper than fresh shared memory
            for every tensor); the consumer must release, or the workers keep allocating.
        pool (`SharedBuffers`, *optional*): with `reuse_memory`, buffers kept across calls: the workers start with
            its buffers and add theirs to it. Nothing of an earlier stream may still be in use.

    Returns:
        `ChunkStream`: an iterator over the results.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if num_workers == 0 or not items:
        dataset = _Chunks(items, function, chunk_size)
        return ChunkStream(dataset[index] for index in range(len(dataset)))
    workers = min(num_workers, -(-len(items) // chunk_size))
    context = multiprocessing_context
    if isinstance(context, str) or context is None:
        context = torch.multiprocessing.get_context(context)
    released = [context.Queue() for _ in range(workers)] if reuse_memory else None
    buffers = pool.split(workers) if reuse_memory and pool is not None else None
    loader = DataLoader(_Chunks(items, function, chunk_size, released, buffers), batch_size=None, shuffle=False,
                        collate_fn=_keep, num_workers=workers, prefetch_factor=prefetch_factor,
                        multiprocessing_context=context)
    return ChunkStream(loader, released, chunk_size, len(items), pool if reuse_memory else None)

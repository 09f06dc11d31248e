"""GradCache helpers (Gao et al. 2021): split a processed VLM batch into row chunks, and replay random state.

GradCache embeds a large batch in chunks without a graph, computes the contrastive loss and its gradient with
respect to the embeddings, then re-runs each chunk with a graph and back-propagates that cached gradient. The
result equals a full-batch step while only one chunk's activations are alive at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import torch

# Tensors with one entry per image / per video rather than one per row, keyed by the grid tensor that sizes them.
IMAGE_KEYS = ("pixel_values", "image_grid_thw")
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def _media_per_row(input_ids: torch.Tensor, grid_thw: torch.Tensor, token_id: int, merge_size: int,
                   kind: str) -> list[int]:
    """How many consecutive images (or videos) of `grid_thw` belong to each row, from the rows' placeholder tokens."""
    tokens_per_item = (grid_thw.prod(-1) // merge_size**2).tolist()
    counts, item = [], 0
    for row, row_tokens in enumerate((input_ids == token_id).sum(-1).tolist()):
        start = item
        while row_tokens > 0 and item < len(tokens_per_item):
            row_tokens -= tokens_per_item[item]
            item += 1
        if row_tokens != 0:
            raise ValueError(f"GradCache cannot split the batch: the {kind} placeholder tokens of row {row} do not "
                             f"match the {kind} grids (token id {token_id}, merge size {merge_size})")
        counts.append(item - start)
    if item != len(tokens_per_item):
        raise ValueError(f"GradCache cannot split the batch: {len(tokens_per_item) - item} {kind}(s) have no "
                         f"placeholder tokens in any row")
    return counts


def _split_media(batch: Mapping, keys: tuple[str, ...], counts: list[int], chunk_size: int,
                 patch_counts: list[int]) -> list[dict]:
    """Per chunk of rows, the slices of `keys` (grids, flat pixel tensors) for that chunk's media."""
    chunks = []
    item = patch = 0
    for start in range(0, len(counts), chunk_size):
        n_items = sum(counts[start:start + chunk_size])
        n_patches = sum(patch_counts[item:item + n_items])
        part = {}
        for key in keys:
            if key not in batch or batch[key] is None:
                continue
            if key.startswith("pixel_values"):
                part[key] = batch[key][patch:patch + n_patches]
            else:
                part[key] = batch[key][item:item + n_items]
        chunks.append({k: v for k, v in part.items() if len(v)})
        item, patch = item + n_items, patch + n_patches
    return chunks


def split_batch(batch: Mapping, chunk_size: int, image_token_id: int | None = None,
                video_token_id: int | None = None, merge_size: int = 2) -> list[dict]:
    """
    Split a processed Qwen-VL-style batch into chunks of at most `chunk_size` rows.

    Row tensors (`input_ids`, `attention_mask`, `mm_token_type_ids`, ...) are sliced by row. `pixel_values` is one
    flat tensor of patches for all images of the batch, so it is split by the patch counts in `image_grid_thw`,
    assigning images to rows by counting each row's image placeholder tokens (likewise for videos).

    Args:
        batch (`Mapping`): model inputs as made by `TTEProcessor`.
        chunk_size (`int`): rows per chunk.
        image_token_id, video_token_id (`int`, *optional*): the backbone's placeholder token ids.
        merge_size (`int`, *optional*, defaults to 2): the vision tower's spatial merge size.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    rows = batch["input_ids"].shape[0]
    media_keys = {*IMAGE_KEYS, *VIDEO_KEYS}
    chunks = [{} for _ in range(math.ceil(rows / chunk_size))]
    for key, value in batch.items():
        if key in media_keys or value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != rows:
            raise ValueError(f"GradCache cannot split batch field {key!r}: expected a tensor with {rows} rows")
        for index, chunk in enumerate(chunks):
            chunk[key] = value[index * chunk_size:(index + 1) * chunk_size]
    for keys, token_id, kind in ((IMAGE_KEYS, image_token_id, "image"), (VIDEO_KEYS, video_token_id, "video")):
        grid = batch.get(keys[1])
        if grid is None:
            continue
        if token_id is None:
            raise ValueError(f"GradCache needs the {kind} token id to split a batch with {kind}s")
        counts = _media_per_row(batch["input_ids"], grid, token_id, merge_size, kind)
        parts = _split_media(batch, keys, counts, chunk_size, grid.prod(-1).tolist())
        for chunk, part in zip(chunks, parts, strict=True):
            chunk.update(part)
    return chunks


class RandomState:
    """The CPU and CUDA random states at creation, so a chunk's second (graph) pass sees the same dropout masks as
    its first (no-graph) pass."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    @contextlib.contextmanager
    def replay(self):
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


__all__ = ["RandomState", "split_batch"]

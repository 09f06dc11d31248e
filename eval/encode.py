"""Batched embedding of processor rows with a `TTEForEmbedding`, sharded across `accelerate` processes and
written to an `EmbeddingCache` as it goes.

Rows are length-bucketed: each row goes through the processor once, rows are sorted by token length (within
windows of `window` rows), padded into batches of similar length, embedded, and returned in their original order.
With `num_workers > 0` the per-row processing (image decoding and resizing, video frames, tokenization) runs in
`DataLoader` worker processes that work a window ahead of the model; sorting, padding and the forward pass stay in
this process, so the embeddings are the same as with `num_workers=0`.
Candidates are deduplicated upstream: the harness keys rows by content (`eval.cache.item_key`) and
`EmbeddingCache.missing` drops repeated keys, so each distinct candidate is embedded once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from eval.cache import EmbeddingCache
from train.batching import Arena, RowError, SharedBuffers, length_sorted_batches, map_chunks, pad_features, process_rows

ROW_ERRORS = (ValueError, FileNotFoundError)  # a bad row (missing file, unreadable image, malformed fields)


def _one_row(make, row: dict):
    return make([row])


def _whole_chunk(make, rows: list[dict], start: int):
    return make(rows)


class Encoder:
    r"""Embeds query and candidate rows.

    Args:
        model (`TTEForEmbedding`): the embedder (put in eval mode on `device`).
        processor (`TTEProcessor`): its processor (`ecr_mode` decides what ECR the embedder reads).
        batch_size (`int`, *optional*, defaults to 8): rows per forward pass.
        device (`str` or `torch.device`, *optional*): defaults to the model's device.
        bucket (`bool`, *optional*, defaults to `True`): length-bucketed batching; `False` batches rows in their
            given order (the processor then pads each batch to its longest row).
        window (`int`, *optional*): rows sorted together when bucketing (their processed inputs, pixels included,
            are held in memory at once); defaults to `16 * batch_size`.
        dtype (`torch.dtype`, *optional*): cast the model to this dtype first (e.g. `torch.bfloat16` on GPU);
            by default the model keeps its dtype.
        attn_implementation (`str`, *optional*): set the model's attention implementation first (e.g. `"sdpa"`,
            `"flash_attention_2"`); by default the model keeps its own.
        num_workers (`int`, *optional*, defaults to 0): `DataLoader` worker processes that run the processor (image
            decoding, resizing, tokenization); 0 processes rows in this process. Workers live for one `encode` or
            `fill` call and work up to a window ahead of the model (two windows of inputs in memory); they return
            rows through shared memory that they reuse, and that the `Encoder` keeps for the next call's workers.
            One `encode`/`fill` at a time per `Encoder`.
        prefetch_factor (`int`, *optional*): batches of `batch_size` rows each worker prepares ahead; by default
            enough for the workers together to prepare a whole window while the model embeds the previous one.
        pin_memory (`bool`, *optional*): build the padded batches in page-locked memory and copy them to the
            device without blocking; defaults to `True` on CUDA.
        multiprocessing_context (`str`, *optional*): how workers start (`"fork"`, `"spawn"`, `"forkserver"`);
            defaults to the platform's. Rows reach spawned workers pickled (PIL images pickle).
    """

    def __init__(self, model, processor, batch_size: int = 8, device=None, bucket: bool = True,
                 window: int | None = None, dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                 num_workers: int = 0, prefetch_factor: int | None = None, pin_memory: bool | None = None,
                 multiprocessing_context: str | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if attn_implementation is not None:
            getattr(model, "vlm", model).set_attn_implementation(attn_implementation)  # the backbone attends
        if dtype is not None:
            model = model.to(dtype)
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.bucket = bucket
        self.window = window or 16 * batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.multiprocessing_context = multiprocessing_context
        self._buffers = SharedBuffers()  # the workers' shared memory, warm for the workers of the next call
        self._arena = Arena() if self.device.type == "cpu" and not self.pin_memory else None  # batches, reused
        self.num_encoded = 0

    def _embed(self, batch) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=self.pin_memory)
        dtype = self.model.dtype
        for key, value in batch.items():  # media inputs in the model's dtype (e.g. bf16)
            if torch.is_floating_point(value) and value.dtype != dtype:
                batch[key] = value.to(dtype)
        return self.model(**batch).embeddings.float().cpu()

    def _maker(self, side: str):
        if side not in ("query", "target"):
            raise ValueError(f"side must be 'query' or 'target', got {side!r}")
        return self.processor.process_queries if side == "query" else self.processor.process_targets

    def _processed(self, rows: list[dict], function):
        """`function(chunk, start)` over chunks of `batch_size` rows, in order (a `train.batching.ChunkStream`), in
        workers when `num_workers`, which reuse their shared memory once `release`d."""
        prefetch = self.prefetch_factor
        if self.num_workers and prefetch is None:  # the workers together hold a window ahead of the model
            prefetch = max(2, -(-self.window // (self.batch_size * self.num_workers)))
        return map_chunks(function, rows, self.batch_size, self.num_workers, prefetch if self.num_workers else None,
                          self.multiprocessing_context, reuse_memory=True, pool=self._buffers)

    @torch.inference_mode()
    def stream(self, rows: list[dict], side: str) -> Iterator[torch.Tensor]:
        """Embeddings of `rows` (`side` is `"query"` or `"target"`), float32 on CPU, as consecutive chunks in the
        order of `rows` (one per window when bucketing, one per batch otherwise); workers live for the whole
        stream."""
        make = self._maker(side)
        if not self.bucket:
            chunks, done = self._processed(rows, functools.partial(_whole_chunk, make)), 0
            for batch in chunks:
                embedded = self._embed(batch)
                done += len(embedded)
                chunks.release(done)
                self.num_encoded += len(embedded)
                yield embedded
            return
        chunks = self._processed(rows, functools.partial(process_rows, functools.partial(_one_row, make), ROW_ERRORS))
        window, done = [], 0
        for chunk in chunks:
            for item in chunk:
                if isinstance(item, RowError):
                    raise type(item.error)(f"row {item.index} of this batch: {item.error}") from item.error
                window.append(item)
                if len(window) == self.window:
                    embedded, window = self.embed_features(window), []
                    done += len(embedded)
                    chunks.release(done)
                    yield embedded
        if window:
            yield self.embed_features(window)

    def encode(self, rows: list[dict], side: str) -> torch.Tensor:
        """Embeddings `(len(rows), dim)` of `rows` (`side` is `"query"` or `"target"`), float32 on CPU, in the
        order of `rows`."""
        out = list(self.stream(rows, side))
        return torch.cat(out) if out else torch.empty(0)

    @torch.inference_mode()
    def embed_features(self, features: list) -> torch.Tensor:
        """Embed already processed rows (one processor output each): batches of rows of similar length, padded
        here, returned in the order of `features`. This is the model's share of `encode`."""
        lengths = [feature["input_ids"].shape[1] for feature in features]
        tokenizer = self.processor.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        embeddings = None
        for indices in length_sorted_batches(lengths, self.batch_size):
            batch = pad_features([features[i] for i in indices], pad_id, padding_side="right",
                                 pin_memory=self.pin_memory, arena=self._arena)
            embedded = self._embed(batch)
            if embeddings is None:
                embeddings = embedded.new_empty((len(features), embedded.shape[1]))
            embeddings[indices] = embedded
        self.num_encoded += len(features)
        return embeddings

    def fill(self, cache: EmbeddingCache, items: dict[str, dict], side: str, rank: int = 0, world: int = 1,
             flush_every: int = 256, desc: str | None = None) -> None:
        """Embed this process's share (`rank::world` of all `items`, cache key -> row) that `cache` lacks, with a
        progress bar (rows/s) on rank 0, writing to `cache` every `flush_every` rows or so. The share is fixed by
        the item order alone, so processes that open the cache at different times still cover every item."""
        todo = cache.missing(list(items)[rank::world])
        done, pending = 0, []
        with tqdm(total=len(todo), desc=desc or side, unit="row", disable=rank != 0 or not todo,
                  mininterval=1.0) as bar:
            for embeddings in self.stream([items[k] for k in todo], side):
                pending.append(embeddings)
                bar.update(len(embeddings))
                count = sum(len(chunk) for chunk in pending)
                if count >= flush_every or done + count == len(todo):
                    cache.put(todo[done:done + count], torch.cat(pending))
                    done, pending = done + count, []

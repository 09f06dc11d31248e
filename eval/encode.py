"""Batched embedding of processor rows with a `TTEForEmbedding`, sharded across `accelerate` processes and
written to an `EmbeddingCache` as it goes.

Rows are length-bucketed: each row goes through the processor once, rows are sorted by token length (within
windows of `window` rows), padded into batches of similar length, embedded, and returned in their original order.
Candidates are deduplicated upstream: the harness keys rows by content (`eval.cache.item_key`) and
`EmbeddingCache.missing` drops repeated keys, so each distinct candidate is embedded once.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from eval.cache import EmbeddingCache
from train.batching import length_sorted_batches, pad_features


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
    """

    def __init__(self, model, processor, batch_size: int = 8, device=None, bucket: bool = True,
                 window: int | None = None, dtype: torch.dtype | None = None, attn_implementation: str | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if attn_implementation is not None:
            getattr(model, "vlm", model).set_attn_implementation(attn_implementation)  # the backbone attends
        if dtype is not None:
            model = model.to(dtype)
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.bucket = bucket
        self.window = window or 16 * batch_size
        self.device = device or next(model.parameters()).device
        self.num_encoded = 0

    def _embed(self, batch) -> torch.Tensor:
        batch = batch.to(self.device)
        dtype = self.model.dtype
        for key, value in batch.items():  # media inputs in the model's dtype (e.g. bf16)
            if torch.is_floating_point(value) and value.dtype != dtype:
                batch[key] = value.to(dtype)
        return self.model(**batch).embeddings.float().cpu()

    @torch.inference_mode()
    def encode(self, rows: list[dict], side: str) -> torch.Tensor:
        """Embeddings `(len(rows), dim)` of `rows` (`side` is `"query"` or `"target"`), float32 on CPU, in the
        order of `rows`."""
        make = self.processor.process_queries if side == "query" else self.processor.process_targets
        if self.bucket:
            out = [self._encode_bucketed(rows[start:start + self.window], make, start)
                   for start in range(0, len(rows), self.window)]
        else:
            out = [self._embed(make(rows[start:start + self.batch_size]))
                   for start in range(0, len(rows), self.batch_size)]
        self.num_encoded += len(rows)
        return torch.cat(out) if out else torch.empty(0)

    def _encode_bucketed(self, rows: list[dict], make, offset: int) -> torch.Tensor:
        """Process each row once, embed batches of rows of similar length, restore the order of `rows`."""
        features = []
        for index, row in enumerate(rows):
            try:
                features.append(make([row]))
            except (ValueError, FileNotFoundError) as error:
                raise type(error)(f"row {offset + index} of this batch: {error}") from error
        lengths = [feature["input_ids"].shape[1] for feature in features]
        tokenizer = self.processor.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        embeddings = None
        for indices in length_sorted_batches(lengths, self.batch_size):
            batch = pad_features([features[i] for i in indices], pad_id, padding_side="right")
            embedded = self._embed(batch)
            if embeddings is None:
                embeddings = embedded.new_empty((len(rows), embedded.shape[1]))
            embeddings[indices] = embedded
        return embeddings

    def fill(self, cache: EmbeddingCache, items: dict[str, dict], side: str, rank: int = 0, world: int = 1,
             flush_every: int = 256, desc: str | None = None) -> None:
        """Embed this process's share (`rank::world` of all `items`, cache key -> row) that `cache` lacks, with a
        progress bar (rows/s) on rank 0. The share is fixed by the item order alone, so processes that open the
        cache at different times still cover every item."""
        todo = cache.missing(list(items)[rank::world])
        with tqdm(total=len(todo), desc=desc or side, unit="row", disable=rank != 0 or not todo,
                  mininterval=1.0) as bar:
            for start in range(0, len(todo), flush_every):
                keys = todo[start:start + flush_every]
                cache.put(keys, self.encode([items[k] for k in keys], side))
                bar.update(len(keys))

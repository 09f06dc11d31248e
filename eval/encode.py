"""Batched embedding of processor rows with a `TTEForEmbedding`, sharded across `accelerate` processes and
written to an `EmbeddingCache` as it goes."""

from __future__ import annotations

import torch

from eval.cache import EmbeddingCache


class Encoder:
    """Embeds query and candidate rows.

    Args:
        model (`TTEForEmbedding`): the embedder (put in eval mode on `device`).
        processor (`TTEProcessor`): its processor (`ecr_mode` decides what ECR the embedder reads).
        batch_size (`int`, *optional*, defaults to 8): rows per forward pass.
        device (`str` or `torch.device`, *optional*): defaults to the model's device.
    """

    def __init__(self, model, processor, batch_size: int = 8, device=None):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.device = device or next(model.parameters()).device
        self.num_encoded = 0

    @torch.inference_mode()
    def encode(self, rows: list[dict], side: str) -> torch.Tensor:
        """Embeddings `(len(rows), dim)` of `rows` (`side` is `"query"` or `"target"`), float32 on CPU."""
        make = self.processor.process_queries if side == "query" else self.processor.process_targets
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = make(rows[start:start + self.batch_size]).to(self.device)
            out.append(self.model(**batch).embeddings.float().cpu())
        self.num_encoded += len(rows)
        return torch.cat(out) if out else torch.empty(0)

    def fill(self, cache: EmbeddingCache, items: dict[str, dict], side: str, rank: int = 0, world: int = 1,
             flush_every: int = 256) -> None:
        """Embed this process's share (`rank::world` of all `items`, cache key -> row) that `cache` lacks. The
        share is fixed by the item order alone, so processes that open the cache at different times still
        cover every item."""
        todo = cache.missing(list(items)[rank::world])
        for start in range(0, len(todo), flush_every):
            keys = todo[start:start + flush_every]
            cache.put(keys, self.encode([items[k] for k in keys], side))

"""Contrastive losses for training TTE embedders and unified heads."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def distributed_world() -> tuple[int, int]:
    """`(rank, world_size)` of the default process group, `(0, 1)` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """
    All-gather `tensor` (first dimension may differ between ranks) from every rank, keeping the autograd graph.

    The backward of the gather sums, on each rank, the gradients that every rank's loss sends to that rank's shard,
    so with DDP's gradient averaging the parameter gradient is that of the mean of the per-rank losses, i.e. of the
    loss over the global batch (no world-size factor is needed).

    Returns:
        `(gathered, sizes)`: the concatenation over ranks and each rank's number of rows.
    """
    rank, world = distributed_world()
    if world == 1:
        return tensor, [tensor.shape[0]]
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    if tensor.shape[0] < longest:
        tensor = torch.cat([tensor, tensor.new_zeros(longest - tensor.shape[0], *tensor.shape[1:])])
    gathered = torch.distributed.nn.functional.all_gather(tensor)
    return torch.cat([part[:n] for part, n in zip(gathered, sizes, strict=True)]), sizes


class InfoNCELoss(nn.Module):
    r"""
    InfoNCE over in-batch negatives: each query's positive is the target of the same row, every other target in the
    (global) batch and every explicit hard negative is a negative.

    $$\mathcal{L} = -\frac{1}{B}\sum_i \log \frac{\exp(q_i \cdot t_i / \tau)}{\sum_j \exp(q_i \cdot c_j / \tau)}$$

    Logits are computed in float32 whatever the embeddings' dtype.

    Args:
        temperature (`float`, *optional*, defaults to 0.02):
            The softmax temperature $\tau$ (the paper's 0.02; `TTEConfig.loss_temperature`).
        symmetric (`bool`, *optional*, defaults to `False`):
            Also add the target->query direction (over queries only) and average the two. The paper uses the
            query->target direction only.
        gather_across_devices (`bool`, *optional*, defaults to `True`):
            When a `torch.distributed` process group with more than one rank is running, gather targets (and
            negatives, and queries if symmetric) from all ranks so that the negatives are the global batch. The local
            shard keeps its gradient; labels are offset by the number of rows on lower ranks.

    Example:

    ```python
    >>> loss_fn = InfoNCELoss(temperature=0.02)
    >>> loss = loss_fn(query_embeddings, target_embeddings)                       # (B, D), (B, D)
    >>> loss = loss_fn(query_embeddings, target_embeddings, negative_embeddings)  # + (N, D) or (B, K, D)
    ```
    """

    def __init__(self, temperature: float = 0.02, symmetric: bool = False, gather_across_devices: bool = True):
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"InfoNCELoss temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.gather_across_devices = bool(gather_across_devices)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, "
                f"gather_across_devices={self.gather_across_devices}")

    @staticmethod
    def _validate(query: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor | None:
        for name, value in (("query", query), ("target", target)):
            if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
                raise ValueError(f"InfoNCELoss {name} must be a float tensor of shape (batch, dim), got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
        if query.shape != target.shape:
            raise ValueError(f"InfoNCELoss query and target must have the same shape (one positive per query), got "
                             f"{tuple(query.shape)} and {tuple(target.shape)}")
        if query.shape[0] == 0:
            raise ValueError("InfoNCELoss needs at least one query")
        if negatives is None:
            return None
        if not isinstance(negatives, torch.Tensor) or negatives.dim() not in (2, 3) or \
                not negatives.is_floating_point() or negatives.shape[-1] != query.shape[-1]:
            raise ValueError(f"InfoNCELoss negatives must be a float tensor of shape (num_negatives, {query.shape[-1]})"
                             f" or (batch, negatives_per_row, {query.shape[-1]}), got "
                             f"{getattr(negatives, 'shape', type(negatives).__name__)}")
        if negatives.dim() == 3 and negatives.shape[0] != query.shape[0]:
            raise ValueError(f"InfoNCELoss per-row negatives must have batch size {query.shape[0]}, got "
                             f"{tuple(negatives.shape)}")
        return negatives.reshape(-1, negatives.shape[-1])

    def forward(self, query: torch.Tensor, target: torch.Tensor, negatives: torch.Tensor | None = None,
                target_ids: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query (`torch.Tensor` of shape `(batch, dim)`): this rank's query embeddings.
            target (`torch.Tensor` of shape `(batch, dim)`): this rank's positive target embeddings, row-aligned.
            negatives (`torch.Tensor` of shape `(num_negatives, dim)` or `(batch, k, dim)`, *optional*):
                Explicit hard negatives; every one is a candidate for every query (of every rank).
            target_ids (`torch.LongTensor` of shape `(batch,)`, *optional*):
                Content ids of the targets (equal ids = the same target, e.g. a class label shared by several rows).
                Another row's copy of a query's own positive is not used as a negative for it.

        Returns:
            `torch.Tensor`: the scalar mean loss over this rank's queries.
        """
        negatives = self._validate(query, target, negatives)
        query, target = query.float(), target.float()
        rank, world = distributed_world()
        distributed = self.gather_across_devices and world > 1
        if distributed:
            all_targets, sizes = gather_with_grad(target)
            # every rank must join the gather (and its backward), with or without negatives of its own: an empty
            # slice of `target` keeps the gather in the graph exactly when the targets are
            local_negatives = negatives.float() if negatives is not None else target[:0]
            all_negatives, _ = gather_with_grad(local_negatives)
            offset = sum(sizes[:rank])
        else:
            all_targets, offset = target, 0
            all_negatives = negatives.float() if negatives is not None else None
        candidates = all_targets if all_negatives is None else torch.cat([all_targets, all_negatives])
        labels = torch.arange(query.shape[0], device=query.device) + offset
        logits = query @ candidates.T / self.temperature
        if target_ids is not None:
            logits = self._mask_duplicates(logits, labels, target_ids, distributed)
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            all_queries = gather_with_grad(query)[0] if distributed else query
            loss = (loss + F.cross_entropy(target @ all_queries.T / self.temperature, labels)) / 2
        return loss

    @staticmethod
    def _mask_duplicates(logits: torch.Tensor, labels: torch.Tensor, target_ids: torch.Tensor,
                         distributed: bool) -> torch.Tensor:
        """Set to -inf the logits of targets equal to a row's own positive (other than the positive itself)."""
        if target_ids.shape != labels.shape:
            raise ValueError(f"InfoNCELoss target_ids must have shape {tuple(labels.shape)}, "
                             f"got {tuple(target_ids.shape)}")
        all_ids = target_ids
        if distributed:
            all_ids = gather_with_grad(target_ids.to(logits.device))[0]
        same = target_ids.to(logits.device)[:, None] == all_ids[None, :]
        same[torch.arange(len(labels), device=logits.device), labels] = False
        duplicate = F.pad(same, (0, logits.shape[1] - same.shape[1]))
        return logits.masked_fill(duplicate, float("-inf"))


def ecr_positions(attention_mask: torch.Tensor, ecr_lengths: torch.Tensor) -> torch.Tensor:
    """`(batch, seq)` bool mask of the last `ecr_lengths[i]` attended tokens of each row: the ECR assistant turn and
    its end-of-turn token in an embedder input (either padding side)."""
    mask = attention_mask.bool()
    index = attention_mask.long().cumsum(1)  # 1-based position among the attended tokens
    first = mask.sum(1, keepdim=True) - ecr_lengths.to(mask.device).long()[:, None]
    return mask & (index > first)


def ecr_nll(hidden: torch.Tensor, lm_head: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            ecr_lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """
    The summed next-token negative log-likelihood of each row's ECR tokens (see `ecr_positions`), each predicted by
    `lm_head` from the final hidden state of the position before it, and the number of tokens summed. The LM head
    runs on those positions only (not the whole sequence), in float32 for the loss.
    """
    targets = ecr_positions(attention_mask, ecr_lengths)[:, 1:]
    states = hidden[:, :-1][targets]
    if states.shape[0] == 0:
        return hidden.sum() * 0.0, 0
    logits = lm_head(states).float()
    return F.cross_entropy(logits, input_ids[:, 1:][targets], reduction="sum"), int(states.shape[0])


__all__ = ["InfoNCELoss", "distributed_world", "ecr_nll", "ecr_positions", "gather_with_grad"]

"""Reward functions for training the reasoner with GRPO (`train.rl_reasoner`), in TRL's reward-function shape: each
is called with the batch's `prompts`, `completions`, `completion_ids` and every dataset column as lists, and returns
one float per completion.

- `RetrievalReward`: a frozen embedder embeds the row with the sampled ECR and scores how well it retrieves its pair
  among negatives that carry their stored ECR. For a query-side sample the candidates are the gold target and the
  negatives; for a target-side sample the anchor is the row's query (with its stored ECR) and the sampled ECR rides on
  the gold target. The reward is the gold's InfoNCE probability at the embedder's temperature (`"probability"`, the
  paper's ideal ECR), its reciprocal rank (`"reciprocal_rank"`), or its similarity margin over the mean negative
  (`"margin"`). Embeddings of the sides that do not change during RL are cached (bounded LRU).
- `FormatReward`: 1 for a completion in the ECR format `[<think> ... </think>] Answer: ...`, else 0.
- `LengthPenalty`: minus the fraction by which a completion's tokens exceed a budget.

Dataset columns read by `RetrievalReward` (written by `train.rl_reasoner.rl_dataset`): `dataset`, `side`, and
`query`, `target`, `negatives` as JSON (`TTEProcessor` rows with their stored `ecr`; `negatives` a list).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import torch

REWARD_KINDS = ("probability", "reciprocal_rank", "margin")
_FORMAT = re.compile(r"^\s*(<think>(?:(?!<think>).)*?</think>\s*)?Answer:\s*\S", re.DOTALL)


def completion_text(completion) -> str:
    """The text of one completion: a string, or a conversational completion (assistant messages whose content is a
    string or a list of text parts)."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message["content"]
        parts += [content] if isinstance(content, str) else [p.get("text") or "" for p in content]
    return "".join(parts)


class TraceDecoder:
    """Completion token ids -> the ECR text `train.generate_ecr`'s `LocalBackend` stores for them: up to the first
    stop token, special tokens kept, media tokens removed (`trace_text`). TRL decodes completions without special
    tokens, which drops `<think>` where the tokenizer marks it special; the rewards read this instead."""

    def __init__(self, processor, stop_ids):
        self.processor, self.stop_ids = processor, set(stop_ids)

    def __call__(self, ids) -> str:
        from train.reasoner_backends import trace_length, trace_text

        ids = list(ids)
        return trace_text(self.processor, ids[:trace_length(ids, self.stop_ids)])[0]


def completion_texts(completions, completion_ids, decoder: TraceDecoder | None) -> list[str]:
    """Each completion's ECR text: decoded from its ids by `decoder`, else TRL's decoded text."""
    if decoder is not None:
        return [decoder(ids) for ids in completion_ids]
    return [completion_text(c) for c in completions]


class FormatReward:
    """1.0 for a completion in the ECR format, `<think> reasoning </think> Answer: answer` (the reasoning may be
    left out, as the paper's teacher does for rows with nothing to reason about), 0.0 otherwise (an unclosed
    `<think>`, no answer, or text before either)."""

    __name__ = "format"

    def __init__(self, decoder: TraceDecoder | None = None):
        self.decoder = decoder

    def __call__(self, completions, completion_ids=None, **kwargs) -> list[float]:
        return [float(bool(_FORMAT.match(text))) for text in completion_texts(completions, completion_ids,
                                                                               self.decoder)]


class LengthPenalty:
    """`-(tokens - budget) / budget` for a completion longer than `budget` tokens, 0 otherwise."""

    def __init__(self, budget: int):
        if budget < 1:
            raise ValueError(f"the length budget must be a positive number of tokens, got {budget}")
        self.budget = budget
        self.__name__ = f"length_penalty_{budget}"

    def __call__(self, completions, completion_ids, **kwargs) -> list[float]:
        return [-max(0, len(ids) - self.budget) / self.budget for ids in completion_ids]


def target_key(row: dict) -> tuple[str, str]:
    """Two targets are the same for the reward when they show the same text and carry the same ECR."""
    return (row.get("text") or "").strip(), (row.get("ecr") or "").strip()


def distinct_targets(rows, gold: dict, limit: int | None = None) -> list[dict]:
    """The rows (`None`s skipped) that differ from `gold` and from each other (`target_key`), in order, at most
    `limit`."""
    seen, out = {target_key(gold)}, []
    for row in rows:  # `rows` may be lazy draws: none is taken once `limit` are found
        if row is not None and target_key(row) not in seen:
            seen.add(target_key(row))
            out.append(row)
            if len(out) == limit:
                break
    return out


def score(similarities: torch.Tensor, kind: str, temperature: float) -> float:
    """The reward of the gold candidate (index 0) from its similarities to the anchor."""
    if kind == "probability":
        return torch.softmax(similarities / temperature, dim=0)[0].item()
    if kind == "reciprocal_rank":
        return 1.0 / (1 + int((similarities[1:] > similarities[0]).sum()))
    negatives = similarities[1:]
    return (similarities[0] - negatives.mean()).item() if len(negatives) else 0.0


class RetrievalReward:
    r"""
    The frozen embedder as the reward model (see the module docstring).

    Args:
        model (`TTEForEmbedding`): the embedder; it is frozen and put in eval mode.
        processor (`TTEProcessor`): its processor (its `ecr_mode` decides what of the ECR the embedder reads).
        kind (`str`, defaults to `"probability"`): one of `REWARD_KINDS`.
        temperature (`float`, *optional*): softmax temperature; defaults to the embedder's `loss_temperature`.
        in_batch_negatives (`bool`, defaults to `True`): the other gold targets (queries, for target-side rows) of
            the same dataset in the batch are negatives too, besides each row's own.
        batch_size (`int`, defaults to 32): rows per embedder forward pass.
        device (*optional*): where the embedder runs (the trainer's device); defaults to the model's.
        cache_size (`int`, defaults to 65536): cached embeddings of fixed sides (least recently used dropped).
        decoder (`TraceDecoder`, *optional*): reads each completion's ECR from its token ids (else TRL's text).
    """

    def __init__(self, model, processor, kind: str = "probability", temperature: float | None = None,
                 in_batch_negatives: bool = True, batch_size: int = 32, device=None, cache_size: int = 65536,
                 decoder: TraceDecoder | None = None):
        from eval.encode import Encoder

        if kind not in REWARD_KINDS:
            raise ValueError(f"reward kind must be one of {list(REWARD_KINDS)}, got {kind!r}")
        model.requires_grad_(False)
        self.encoder = Encoder(model.to(device) if device is not None else model, processor, batch_size=batch_size)
        self.kind, self.in_batch_negatives, self.cache_size = kind, in_batch_negatives, cache_size
        self.decoder = decoder
        self.temperature = temperature or model.config.loss_temperature
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.__name__ = f"retrieval_{kind}"

    @classmethod
    def from_pretrained(cls, path: str, device=None, **kwargs) -> RetrievalReward:
        """The reward of a saved `TTEForEmbedding` folder, in its dtype, with its processor (and the `ecr_mode` saved
        with it); the project's own classes are used, no remote code."""
        from modeling_tte import TTEForEmbedding
        from processing_tte import TTEProcessor

        model = TTEForEmbedding.from_pretrained(path, dtype="auto", trust_remote_code=False)
        return cls(model, TTEProcessor.from_pretrained(path, trust_remote_code=False), device=device, **kwargs)

    def fixed(self, rows: list[dict], side: str) -> list[torch.Tensor]:
        """Normalised embeddings of rows that do not change during RL (stored ECR), from the cache when there."""
        keys = [side + json.dumps(row, sort_keys=True) for row in rows]
        missing = {key: row for key, row in zip(keys, rows, strict=True) if key not in self.cache}
        if missing:
            embedded = torch.nn.functional.normalize(self.encoder.encode(list(missing.values()), side), dim=-1)
            self.cache.update(zip(missing, embedded, strict=True))
        for key in keys:
            self.cache.move_to_end(key)
        out = [self.cache[key] for key in keys]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out

    def sampled(self, rows: list[dict], side: str) -> torch.Tensor:
        """Normalised embeddings of rows with a sampled ECR (never cached)."""
        return torch.nn.functional.normalize(self.encoder.encode(rows, side), dim=-1)

    def negatives(self, index: int, datasets, targets: list[dict], negatives: list[list[dict]]) -> list[dict]:
        """The negatives of row `index`: its own, then the gold targets of the other rows of its dataset when
        `in_batch_negatives`; none equal to its gold (the batch holds each prompt several times), none twice."""
        batch = [t for t, name in zip(targets, datasets, strict=True) if name == datasets[index]]
        return distinct_targets(negatives[index] + (batch if self.in_batch_negatives else []), targets[index])

    def __call__(self, completions, dataset, side, query, target, negatives, completion_ids=None,
                 **kwargs) -> list[float]:
        ecrs = completion_texts(completions, completion_ids, self.decoder)
        queries, targets = [json.loads(q) for q in query], [json.loads(t) for t in target]
        negs = [json.loads(n) for n in negatives]
        on_query = [s == "query" for s in side]
        rows = range(len(ecrs))
        pools = [self.negatives(i, dataset, targets, negs) for i in rows]
        # one encoder call per kind of row: sampled queries / targets, stored queries, stored targets (in row order)
        sampled_queries = iter(self.sampled([{**queries[i], "ecr": ecrs[i]} for i in rows if on_query[i]], "query"))
        sampled_targets = iter(self.sampled([{**targets[i], "ecr": ecrs[i]} for i in rows if not on_query[i]],
                                            "target"))
        stored_queries = iter(self.fixed([queries[i] for i in rows if not on_query[i]], "query"))
        stored_targets = iter(self.fixed([row for i in rows for row in [targets[i]] * on_query[i] + pools[i]],
                                         "target"))
        rewards = []
        for i in rows:
            anchor = next(sampled_queries) if on_query[i] else next(stored_queries)
            gold = next(stored_targets) if on_query[i] else next(sampled_targets)
            pool = torch.stack([gold, *(next(stored_targets) for _ in pools[i])])
            rewards.append(score(pool @ anchor, self.kind, self.temperature))
        if kwargs.get("log_metric") is not None:  # TRL's: the mean reward of each dataset, logged beside the total
            for name in dict.fromkeys(dataset):
                values = [r for r, d in zip(rewards, dataset, strict=True) if d == name]
                kwargs["log_metric"](f"retrieval/{name}", sum(values) / len(values))
        return rewards


__all__ = ["REWARD_KINDS", "FormatReward", "LengthPenalty", "RetrievalReward", "TraceDecoder", "completion_text",
           "completion_texts", "distinct_targets", "score", "target_key"]

"""Ranking metrics of the MMEB-V2 protocol (VLM2Vec-V2 scoring), as pure functions.

Per query: `ranked` is the list of candidate names by descending score, `relevance` maps each label (a relevant
candidate name) to its graded relevance. Conventions of the reference, reproduced exactly:
precision@k divides by k even when fewer than k candidates exist; recall is 1.0 for a query with no labels;
hit, map and mrr are 0.0 for it; AP@k is normalised by min(#labels, k); NDCG uses gain rel (linear) or 2^rel - 1
(exponential), discount log2(rank + 1), and the ideal DCG of the sorted relevance values cut at k.
A ranked list may name a candidate twice (a local row listing it twice): precision and recall count distinct
labels found, AP, MRR and NDCG go by rank positions, as in the reference.
Labels keep their own relevance (no `set()` before pairing: see the README on graded qrels);
`reference_pairing` reproduces the reference's pairing for users who must match its published numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

KS = (1, 5, 10)
METRICS = ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1", "map", "mrr")


def score_keys(ks: Sequence[int] = KS) -> list[str]:
    """The key set of a `{task}_score.json`: `hit@1 ... mrr@10`, `num_pred`, `num_data`."""
    return [f"{metric}@{k}" for metric in METRICS for k in ks] + ["num_pred", "num_data"]


def rank_candidates(scores: torch.Tensor, names: Sequence[str]) -> list[str]:
    """`names` by descending score; equal scores keep their order in `names` (a stable sort)."""
    if len(scores) != len(names):
        raise ValueError(f"got {len(scores)} scores for {len(names)} candidate names")
    order = torch.sort(scores.float(), descending=True, stable=True).indices.tolist()
    return [names[i] for i in order]


def dcg(gains: Iterable[float]) -> float:
    """Discounted cumulative gain, rank r (from 1) discounted by log2(r + 1)."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg_at_k(ranked: Sequence[str], relevance: dict[str, float], k: int, exponential: bool = False) -> float:
    """NDCG@k with linear (rel) or exponential (2^rel - 1) gain; 0.0 when the ideal DCG is 0."""
    gain = (lambda rel: 2.0 ** rel - 1.0) if exponential else float
    ideal = dcg(gain(rel) for rel in sorted(relevance.values(), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return dcg(gain(relevance.get(name, 0.0)) for name in ranked[:k]) / ideal


def average_precision_at_k(ranked: Sequence[str], labels: set[str], k: int) -> float:
    """AP@k normalised by min(#labels, k); 0.0 with no labels."""
    if not labels:
        return 0.0
    found, total = 0, 0.0
    for rank, name in enumerate(ranked[:k], start=1):
        if name in labels:
            found += 1
            total += found / rank
    return total / min(len(labels), k)


def reciprocal_rank_at_k(ranked: Sequence[str], labels: set[str], k: int) -> float:
    """1 / rank of the first label within the top k; 0.0 when none is there."""
    for rank, name in enumerate(ranked[:k], start=1):
        if name in labels:
            return 1.0 / rank
    return 0.0


def reference_pairing(relevance: dict[str, float]) -> dict[str, float]:
    """The reference's graded relevance: its labels go through `set()` (Python's set order, which for string ids
    depends on `PYTHONHASHSEED`) and are then zipped with the grades in their original order, so with unequal
    grades a grade can land on another label. Equal to `relevance` when all grades are equal."""
    return dict(zip(list(set(relevance)), relevance.values(), strict=True))


def query_metrics(ranked: Sequence[str], relevance: dict[str, float], ks: Sequence[int] = KS,
                  reference_ndcg: bool = False) -> dict[str, float]:
    """Every metric at every k for one query (`reference_ndcg`: NDCG with `reference_pairing`)."""
    labels = set(relevance)
    graded = reference_pairing(relevance) if reference_ndcg else relevance
    out = {}
    for k in ks:
        found = len(set(ranked[:k]) & labels)
        precision = found / k
        recall = found / len(labels) if labels else 1.0
        out[f"hit@{k}"] = 1.0 if found else 0.0
        out[f"ndcg_linear@{k}"] = ndcg_at_k(ranked, graded, k)
        out[f"ndcg_exponential@{k}"] = ndcg_at_k(ranked, graded, k, exponential=True)
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[f"map@{k}"] = average_precision_at_k(ranked, labels, k)
        out[f"mrr@{k}"] = reciprocal_rank_at_k(ranked, labels, k)
    return out


def task_scores(per_query: Sequence[dict[str, float]], num_data: int | None = None,
                ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean of each metric over the queries, plus `num_pred` (queries scored) and `num_data` (rows in the task)."""
    keys = score_keys(ks)[:-2]
    count = len(per_query)
    scores = {key: (sum(q[key] for q in per_query) / count if count else 0.0) for key in keys}
    scores["num_pred"] = count
    scores["num_data"] = count if num_data is None else num_data
    return scores

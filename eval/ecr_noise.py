"""Noisy ECR (the paper's open question 3): how much does a TTE embedder lose when the reasoner's answers are wrong?

`noisy_answers` replaces the answer line of an exact fraction of a dataset's query-side traces with another answer
drawn from the same dataset's answers (the reasoning before it is kept), and `write_noisy_store` writes the result
as an ECR store the harness reads like any other.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from processing_tte import format_ecr, parse_ecr
from train.ecr_store import ECRRecord, ECRStore


def noisy_answers(records: Iterable[ECRRecord], rate: float, seed: int = 0,
                  reasoner: str = "noisy") -> list[ECRRecord]:
    """
    The query-side records of `records`, with the answers of `round(rate * n)` of each dataset's `n` replaced.

    Each replaced record gets an answer of another query of the same dataset that differs from its own (the
    dataset's answer pool), so a replaced answer is wrong whenever the original was right. Target-side records are
    returned unchanged. Returns the records in the input order; `reasoner` names the replaced ones.
    """
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be between 0 and 1, got {rate}")
    records = list(records)
    by_dataset: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if record.side == "query":
            by_dataset[record.dataset].append(index)
    rng, out = random.Random(seed), list(records)
    for dataset, indices in sorted(by_dataset.items()):
        pool = sorted({records[i].answer for i in indices if records[i].answer})
        for index in rng.sample(indices, round(rate * len(indices))):
            record = records[index]
            others = [answer for answer in pool if answer != record.answer]
            if not others:
                raise ValueError(f"{dataset}: every query has the answer {record.answer!r}; nothing to swap it for")
            answer = rng.choice(others)
            out[index] = replace(record, ecr=format_ecr(parse_ecr(record.ecr).think, answer), answer=answer,
                                 reasoner=reasoner, request_hash=None)
    return out


def write_noisy_store(source: ECRStore, out, rate: float, datasets: Iterable[str], seed: int = 0) -> Path:
    """An ECR store at `out` with `source`'s records of `datasets`, query answers replaced at `rate`."""
    out, names = Path(out), set(datasets)
    store = ECRStore(out)
    if not len(store):
        store.add(noisy_answers([r for r in source if r.dataset in names], rate, seed, reasoner=f"noisy-{rate:g}"))
    return out

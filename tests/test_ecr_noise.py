"""Noisy ECR for the robustness curve: exactly the requested fraction of answers, swapped within the task."""

from __future__ import annotations

import pytest

from eval.ecr_noise import noisy_answers, write_noisy_store
from eval.synthetic.write import write_benchmark
from processing_tte import parse_ecr
from train.ecr_store import ECRStore


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = write_benchmark(tmp_path_factory.mktemp("syn"), num_train=4, num_test=40, seed=0,
                          tasks=["Syn-Links", "Syn-Count"])
    return ECRStore(out / "ecr-teacher")


def _eval_records(store):
    return [r for r in store if not r.dataset.endswith(".train")]


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_exactly_the_requested_fraction_of_each_tasks_answers_is_replaced(teacher, rate):
    records = _eval_records(teacher)
    noisy = noisy_answers(records, rate, seed=1)
    assert [r.key for r in noisy] == [r.key for r in records]
    for task in ("Syn-Links", "Syn-Count"):
        pairs = [(a, b) for a, b in zip(records, noisy, strict=True) if a.dataset == task and a.side == "query"]
        pool = {a.answer for a, _ in pairs}
        changed = [(a, b) for a, b in pairs if a.answer != b.answer]
        assert len(changed) == round(rate * len(pairs)) == sum(a.ecr != b.ecr for a, b in pairs)
        for before, after in changed:
            assert after.answer in pool and parse_ecr(after.ecr).answer == after.answer
            assert parse_ecr(after.ecr).think == parse_ecr(before.ecr).think
    assert all(a == b for a, b in zip(records, noisy, strict=True) if a.side == "target")


def test_the_choice_is_seeded_and_the_store_is_written(teacher, tmp_path):
    records = _eval_records(teacher)
    assert noisy_answers(records, 0.5, seed=3) == noisy_answers(records, 0.5, seed=3)
    assert noisy_answers(records, 0.5, seed=3) != noisy_answers(records, 0.5, seed=4)
    store = ECRStore(write_noisy_store(teacher, tmp_path / "noisy", 0.5, ["Syn-Links"], seed=0))
    assert {r.dataset for r in store} == {"Syn-Links"}
    with pytest.raises(ValueError, match="between 0 and 1"):
        noisy_answers(records, 1.5)

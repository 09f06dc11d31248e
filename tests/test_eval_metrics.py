"""Ranking metrics against hand-computed values, and the task registry's shape."""

import math

import pytest
import torch

from eval.metrics import KS, query_metrics, rank_candidates, score_keys, task_scores
from eval.tasks import all_tasks, categories, get_task, select_tasks
from processing_tte import TASK_TYPES

L2 = math.log2


def test_single_label_at_rank_two():
    m = query_metrics(["a", "gold", "b", "c"], {"gold": 1.0})
    assert m["hit@1"] == 0.0 and m["hit@5"] == 1.0
    assert m["precision@1"] == 0.0
    assert m["precision@5"] == pytest.approx(1 / 5)  # divides by k although only 4 candidates exist
    assert m["precision@10"] == pytest.approx(1 / 10)
    assert m["recall@5"] == 1.0 and m["recall@1"] == 0.0
    assert m["f1@5"] == pytest.approx(2 * 0.2 * 1.0 / 1.2)
    assert m["mrr@1"] == 0.0 and m["mrr@5"] == pytest.approx(0.5)
    assert m["map@5"] == pytest.approx(0.5)
    assert m["ndcg_linear@5"] == pytest.approx(1 / L2(3))
    assert m["ndcg_exponential@5"] == pytest.approx(1 / L2(3))


def test_graded_relevance_ndcg():
    # ranks: x (rel 1) at 1, y (irrelevant) at 2, z (rel 2) at 3
    ranked, rel = ["x", "y", "z", "w"], {"x": 1.0, "z": 2.0}
    m = query_metrics(ranked, rel)
    lin_dcg = 1 / L2(2) + 2 / L2(4)
    lin_ideal = 2 / L2(2) + 1 / L2(3)
    assert m["ndcg_linear@5"] == pytest.approx(lin_dcg / lin_ideal)
    exp_dcg = 1 / L2(2) + 3 / L2(4)
    exp_ideal = 3 / L2(2) + 1 / L2(3)
    assert m["ndcg_exponential@5"] == pytest.approx(exp_dcg / exp_ideal)
    assert m["ndcg_linear@1"] == pytest.approx(1 / 2)  # ideal@1 is the grade-2 page
    assert m["ndcg_exponential@1"] == pytest.approx(1 / 3)
    # map@5: hits at 1 and 3 -> (1/1 + 2/3) / min(2, 5)
    assert m["map@5"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map@1"] == pytest.approx(1.0)  # normalised by min(#rel, 1) = 1
    assert m["recall@1"] == pytest.approx(0.5) and m["precision@1"] == 1.0


def test_graded_pairs_are_not_scrambled():
    # swapping which label carries grade 2 must change NDCG: labels keep their own grade
    ranked = ["p1", "p2"]
    a = query_metrics(ranked, {"p1": 2.0, "p2": 1.0})["ndcg_linear@5"]
    b = query_metrics(ranked, {"p1": 1.0, "p2": 2.0})["ndcg_linear@5"]
    assert a == pytest.approx(1.0)
    assert b == pytest.approx((1 + 2 / L2(3)) / (2 + 1 / L2(3)))


def test_no_relevant_labels_conventions():
    m = query_metrics(["a", "b"], {})
    for k in KS:
        assert m[f"recall@{k}"] == 1.0
        assert m[f"hit@{k}"] == m[f"map@{k}"] == m[f"mrr@{k}"] == m[f"ndcg_linear@{k}"] == 0.0
        assert m[f"f1@{k}"] == 0.0


def test_k_larger_than_candidates_and_all_relevant():
    m = query_metrics(["a", "b"], {"a": 1.0, "b": 1.0})
    assert m["precision@10"] == pytest.approx(2 / 10)
    assert m["recall@10"] == 1.0 and m["ndcg_linear@10"] == pytest.approx(1.0)
    assert m["map@10"] == pytest.approx(1.0)  # (1 + 1) / min(2, 10)
    assert m["map@1"] == pytest.approx(1.0)


def test_a_candidate_listed_twice_counts_once_for_precision_and_recall_but_by_position_elsewhere():
    # the reference: precision/recall over set(top k); AP, MRR and NDCG walk the ranked positions
    m = query_metrics(["g", "g", "x"], {"g": 1.0})
    assert m["precision@5"] == pytest.approx(1 / 5) and m["recall@5"] == 1.0 and m["hit@1"] == 1.0
    assert m["map@5"] == pytest.approx((1 + 2 / 2) / 1)  # two positions hit, normalised by min(1, 5)
    assert m["ndcg_linear@5"] == pytest.approx(1 + 1 / L2(3))  # DCG counts both slots; ideal is one gold


def test_reference_ndcg_pairs_grades_after_set():
    from eval.metrics import reference_pairing

    relevance = {f"doc-{i}": float(i % 3 + 1) for i in range(20)}  # set order differs from this order
    paired = reference_pairing(relevance)
    assert list(paired) == list(set(relevance)) and list(paired.values()) == list(relevance.values())
    assert paired != relevance
    ranked = list(relevance)
    assert query_metrics(ranked, relevance, reference_ndcg=True)["ndcg_linear@5"] == pytest.approx(
        query_metrics(ranked, paired)["ndcg_linear@5"])
    equal = {"a": 1.0, "b": 1.0}
    assert query_metrics(["b", "a"], equal, reference_ndcg=True) == query_metrics(["b", "a"], equal)


def test_ties_keep_candidate_order_and_ideal_ties():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9])
    assert rank_candidates(scores, ["a", "b", "c", "d"]) == ["b", "d", "a", "c"]
    # two labels with equal grade in either order give the same (perfect) NDCG
    assert query_metrics(["d", "b", "a"], {"b": 1.0, "d": 1.0})["ndcg_linear@5"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 scores for 2"):
        rank_candidates(torch.zeros(3), ["a", "b"])


def test_task_scores_means_and_keys():
    per_query = [query_metrics(["g", "x"], {"g": 1.0}), query_metrics(["x", "g"], {"g": 1.0})]
    scores = task_scores(per_query, num_data=3)
    assert list(scores) == score_keys()
    assert len(score_keys()) == 8 * 3 + 2
    assert scores["hit@1"] == pytest.approx(0.5) and scores["mrr@5"] == pytest.approx(0.75)
    assert scores["num_pred"] == 2 and scores["num_data"] == 3


def test_registry_counts_and_types():
    v2 = all_tasks("mmeb_v2")
    assert len(v2) == 78 and len(all_tasks("mmeb_v1")) == 36
    counts = {c: len(select_tasks([c])) for c in categories()}
    assert counts == {"I-CLS": 10, "I-QA": 10, "I-RET": 12, "I-VG": 4, "V-CLS": 5, "V-QA": 5, "V-RET": 5,
                      "V-MRET": 3, "VD-ViDoRe-V1": 10, "VD-ViDoRe-V2": 4, "VD-VisRAG": 6, "VD-OOD": 4}
    assert {t.modality for t in v2.values()} == {"image", "video", "visdoc"}
    assert all(t.task_type in TASK_TYPES for t in v2.values())
    assert all(t.hub[0] and t.hub[2] for t in v2.values())
    assert sum(t.ood for t in all_tasks("mmeb_v1").values()) == 16
    assert get_task("ViDoRe_arxivqa").headline == "ndcg_linear@5" and get_task("MSR-VTT").headline == "hit@1"
    assert get_task("MSR-VTT").eval_type == "global" and get_task("NExTQA").eval_type == "local"
    assert len(select_tasks(["visdoc"])) == 24 and len(select_tasks("all")) == 78


def test_selectors_mix_modalities_categories_and_names_in_registry_order():
    chosen = [t.name for t in select_tasks("ViDoRe_arxivqa,V-MRET,MSCOCO")]
    assert chosen == ["MSCOCO", "QVHighlight", "Charades-STA", "MomentSeeker", "ViDoRe_arxivqa"]
    assert len(select_tasks(["video", "V-CLS"])) == 18  # each task once


def test_unknown_task_or_category():
    with pytest.raises(KeyError, match="'ImageNet-2K' is not in the mmeb_v2 registry"):
        get_task("ImageNet-2K")
    with pytest.raises(KeyError, match="'X-CLS' is not in the mmeb_v2 registry"):
        select_tasks(["X-CLS"])

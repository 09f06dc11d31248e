"""The main job's --quick setting runs every stage (the ablations and RL included) through the real code paths,
writes its report, and the report is rewritten from results.json alone."""

import json

import pytest
from PIL import Image

from eval.demo import HEADS, main
from eval.demo_ablations import NOISE_RATES, noise_variant
from eval.demo_report import main as report
from eval.demo_rl import RL_VARIANT

CORE = ["No ECR", "TTE_t (teacher ECR)", "TTE_s (student ECR)", "Answer-only (student)"] + [
    f"TTE_u {head}" for head in HEADS]


def test_quick_demo_with_ablations_runs_every_stage_and_writes_the_report(tmp_path):
    results = main(["--quick", "--ablations", "--rl", "--jobs", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    variants = list(saved["table"])
    assert variants[:len(CORE)] == CORE
    assert "Joint SFT + InfoNCE (own ECR)" in variants and "TTE_t embedder, answer-only student ECR" in variants
    assert [noise_variant(rate) for rate in NOISE_RATES] == [v for v in variants if "wrong answers" in v]
    assert sum("hidden state" in v for v in variants) == 4
    assert set(saved["table"]["No ECR"]) >= {"Syn-Links", "CLS", "VQA", "RET", "VG", "Overall"}
    assert set(results["stage_seconds"]) == {
        "backbone", "data + teacher ECR", "perception pretraining", "student SFT", "student ECR",
        "answer-only student SFT", "answer-only student ECR", "embedders", "TTE_u heads", "evaluation",
        "joint SFT + InfoNCE", "joint ECR", "RL (GRPO)", "RL student ECR"}
    assert set(saved["runs"][0]["student_answer_accuracy"]) == {"full", "answer_only", "joint", "rl"}
    assert RL_VARIANT in variants and [step for step, _ in saved["runs"][0]["rl_reward"]] == [1, 2]
    # the noise-free row is the TTE_t row: same embedder, same ECR
    assert saved["table"][noise_variant(0.0)] == saved["table"]["TTE_t (teacher ECR)"]
    table = (tmp_path / "results.md").read_text()
    assert "| TTE_s (student ECR) |" in table and "Wall time per stage" in table
    with Image.open(tmp_path / "results.png") as chart, Image.open(tmp_path / "noise.png") as curve:
        assert chart.size == (1000, 60 + 26 * len(variants)) and curve.size == (640, 400)
    assert (tmp_path / "rl_reward.png").is_file() and "| rl |" in (tmp_path / "results.md").read_text()
    for name in ("pretrained", "student", "embed-full", "embed-joint", "unified-self_init", "ecr-joint",
                 "student-rl", "ecr-student-rl"):
        assert (tmp_path / "seed0" / name).is_dir()

    # the trainings run in two worker processes compute what one process computes, stage by stage in order
    alone = main(["--quick", "--jobs", "1", "--out", str(tmp_path / "one-process")])
    assert alone["runs"][0]["scores"] == {name: results["runs"][0]["scores"][name] for name in CORE}
    assert alone["runs"][0]["student_answer_accuracy"] == {
        name: results["runs"][0]["student_answer_accuracy"][name] for name in ("full", "answer_only")}

    (tmp_path / "results.md").unlink()
    (tmp_path / "noise.png").unlink()
    report(["--results", str(tmp_path / "results.json")])
    assert (tmp_path / "results.md").read_text() == table and (tmp_path / "noise.png").is_file()

    # the thinking-budget curve on the same run: budget 0 is the full-ECR embedder without ECR, a cut trace stays
    # within its budget, a forced one ends with an answer; the routed TTE_u rows run from always to never thinking
    from eval.bench_thinking import main as bench_thinking

    rows = bench_thinking(["--run_dir", str(tmp_path / "seed0"), "--output_dir", str(tmp_path / "thinking"),
                           "--budgets", "0", "3", "--force_answer_tokens", "4", "--head_steps", "4",
                           "--thresholds", "0.5", "--latency_queries", "2"])
    assert [(r["budget"], r["style"]) for r in rows] == [(0, "none"), (3, "cut"), (3, "forced")]
    cut, forced = rows[1], rows[2]
    assert cut["tokens"] <= 3 < forced["tokens"] <= 3 + 4 + 4
    saved = json.loads((tmp_path / "thinking" / "thinking.json").read_text())
    assert set(saved["rows"][0]["scores"]) == set(saved["no_ecr_embedder"])
    assert (tmp_path / "thinking" / "thinking.png").is_file() and (tmp_path / "thinking" / "router.png").is_file()
    routed = saved["router"]
    assert [r["label"] for r in routed] == ["TTE_u always", "TTE_u router @ 0.5", "TTE_u never"]
    assert routed[0]["think_fraction"] == 1 and routed[-1]["think_fraction"] == 0 == routed[-1]["query_tokens"]
    assert routed[0]["query_tokens"] >= routed[1]["query_tokens"] >= 0
    assert [r["variant"] for r in saved["latency"]] == ["no ECR (embedder)", "TTE_s two-model",
                                                        *(r["label"] for r in routed)]
    assert saved["latency"][-1]["tokens_per_query"] == 0 < saved["latency"][2]["tokens_per_query"]
    assert saved["router_log"]["fitted"]["rows"] > 0


def test_results_of_seeds_run_separately_merge_into_one_report(tmp_path):
    from eval.demo_report import merge_results

    def part(seed, value):
        return {"settings": {"num_train": 1}, "quick": True, "ablations": False, "machine": "m",
                "runs": [{"seed": seed, "scores": {"No ECR": {t: value for t in tasks}},
                          "student_answer_accuracy": {"full": {t: value for t in tasks}}}],
                "stage_seconds": {"student SFT": 10.0}, "total_seconds": 12.0}

    from eval.tasks import all_tasks

    tasks = list(all_tasks("synthetic"))
    for seed, value in ((0, 0.2), (1, 0.4)):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(part(seed, value)))
    report(["--results", str(tmp_path / "s0" / "results.json"), str(tmp_path / "s1" / "results.json"),
            "--output_dir", str(tmp_path / "all")])
    merged = json.loads((tmp_path / "all" / "results.json").read_text())
    assert [run["seed"] for run in merged["runs"]] == [0, 1]
    assert abs(merged["table"]["No ECR"]["Overall"] - 0.3) < 1e-9
    assert merged["stage_seconds"] == {"student SFT": 20.0} and merged["total_seconds"] == 24.0
    other = part(2, 0.1)
    other["settings"] = {"num_train": 2}
    with pytest.raises(ValueError, match="different settings"):
        merge_results([part(0, 0.2), other])
    with pytest.raises(ValueError, match="appears twice"):
        merge_results([part(0, 0.2), part(0, 0.3)])

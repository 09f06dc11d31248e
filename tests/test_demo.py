"""The main job's --quick setting runs every stage through the real code paths and writes its report."""

import json

from PIL import Image

from eval.demo import HEADS, main


def test_quick_demo_runs_every_stage_and_writes_the_table(tmp_path):
    results = main(["--quick", "--out", str(tmp_path)])
    variants = ["No ECR", "TTE_t (teacher ECR)", "TTE_s (student ECR)", "Answer-only (student)"] + [
        f"TTE_u {head}" for head in HEADS]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["table"]) == variants
    assert set(saved["table"]["No ECR"]) >= {"Syn-Links", "CLS", "VQA", "RET", "VG", "Overall"}
    assert set(results["stage_seconds"]) == {"backbone", "data + teacher ECR", "student SFT", "student ECR",
                                             "answer-only student SFT", "answer-only student ECR", "embedders",
                                             "TTE_u heads", "evaluation"}
    table = (tmp_path / "results.md").read_text()
    assert "| TTE_s (student ECR) |" in table and "Wall time per stage" in table
    with Image.open(tmp_path / "results.png") as chart:
        assert chart.size == (1000, 460)
    for name in ("student", "embed-full", "unified-self_init"):
        assert (tmp_path / "seed0" / name / "config.json").is_file()

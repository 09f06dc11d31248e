"""The speed benchmark runs end to end on a tiny backbone, and each fast path agrees with its baseline.

Speed itself is measured by running `python -m eval.bench_speed`, never asserted here.
"""

import json

from eval import bench_speed


def test_benchmark_runs_and_fast_paths_match_their_baselines(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench_speed.main(["--hidden-size", "32", "--num-layers", "2", "--gen-tokens", "4", "--batch", "3",
                                "--encode-rows", "6", "--encode-batch", "2", "--gen-batch", "3", "--repeats", "1",
                                "--head", "last_token", "self_init", "--threads", "1", "--clock", "process",
                                "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    assert [record["head"] for record in results["think_and_embed"]] == ["last_token", "self_init"]
    for record in results["think_and_embed"]:
        assert record["max_abs_diff"] < 1e-4
        assert record["single/generate"] > 0 and record["two-pass/single"] > 0
        assert record["single"]["rows_per_s"] > 0 and record["single"]["peak_mib"] > 0
    assert results["settings"]["num_head_layers"] == 1  # 8 of 28 layers, scaled to 2 (at least one)
    assert results["encoding"]["max_abs_diff"] < 1e-5 and results["encoding"]["rows"] == 6
    assert results["generation"]["same_texts"] and results["generation"]["ecr_tokens"] == [4, 4, 4]
    printed = capsys.readouterr().out
    assert printed.count("| think-and-embed") == 4 and "bucketed/naive" in printed and "batched/sequential" in printed

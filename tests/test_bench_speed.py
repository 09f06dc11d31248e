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
                                "--profile", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    assert [record["head"] for record in results["think_and_embed"]] == ["last_token", "self_init"]
    for record in results["think_and_embed"]:
        assert record["max_abs_diff"] < 1e-4
        assert record["single/generate"] > 0 and record["two-pass/single"] > 0
        assert record["single"]["rows_per_s"] > 0 and record["single"]["peak_mib"] > 0
        regions = record["profile"]
        assert min(regions[name] for name in ("generate", "final_decode_step", "merge_states", "head")) > 0
        assert regions["total"] >= regions["generate"] + regions["head"]
    assert results["settings"]["num_head_layers"] == 1  # 8 of 28 layers, scaled to 2 (at least one)
    assert results["encoding"]["max_abs_diff"] < 1e-5 and results["encoding"]["rows"] == 6
    assert results["generation"]["same_texts"] and results["generation"]["ecr_tokens"] == [4, 4, 4]
    assert results["encoding"]["padded_tokens"]["naive/bucketed"] >= 1
    printed = capsys.readouterr().out
    assert printed.count("| think-and-embed") == 4 and "bucketed/naive" in printed and "batched/sequential" in printed
    assert "| `self_init` |" in printed.split("One single pass per region")[1]


def test_padded_tokens_count_what_bucketing_saves():
    padded = bench_speed.padded_tokens([1, 10, 1, 10, 3], batch_size=2)
    assert (padded["rows"], padded["naive"], padded["bucketed"]) == (25, 10 * 2 + 10 * 2 + 3, 10 * 2 + 3 * 2 + 1)


def test_the_warm_up_round_calls_the_warm_ups_and_is_not_timed():
    calls = []
    runs = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    warmups = {"a": lambda: calls.append("warm a"), "b": lambda: calls.append("warm b")}
    results = bench_speed.race(runs, 2, bench_speed.torch.device("cpu"), warmups=warmups)
    assert calls == ["warm b", "warm a", "a", "b", "b", "a"]
    assert [len(entry["times"]) for entry in results.values()] == [2, 2]


def test_presets_give_real_shapes_and_the_command_line_wins():
    two_b = bench_speed.parse_args(["--preset", "2b"])
    shape = {name: getattr(two_b, name) for name in bench_speed.SHAPE}
    assert shape == {"hidden_size": 1536, "num_layers": 28, "num_heads": 12, "num_kv_heads": 2,
                     "intermediate_size": 8960, "vision_depth": 32, "vision_width": 1280, "vision_heads": 16,
                     "vision_mlp_ratio": 4, "patch_size": 14} and two_b.dtype == "bfloat16"
    mid = bench_speed.parse_args(["--preset", "mid", "--num_layers", "2", "--gen_tokens", "7"])
    assert (mid.hidden_size, mid.num_layers, mid.gen_tokens) == (768, 2, 7)
    dry = bench_speed.parse_args(["--preset", "mid", "--dry_run", "--batch", "8"])
    assert (dry.batch, dry.repeats, dry.encode_rows) == (1, 0, 1)


def test_the_gpu_command_dry_runs_on_the_cpu(tmp_path, capsys):
    """`eval.bench_gpu --dry_run`: the 2b preset (one decoder layer, one vision block) through every path once,
    then the encoder benchmark; the summary says what it could not measure here."""
    from eval import bench_gpu

    results = bench_gpu.main(["--device", "cpu", "--dry_run", "--output_dir", str(tmp_path)])
    sdpa = results["speed"]["sdpa"]
    assert "DRY RUN" in sdpa["heading"] and sdpa["settings"]["hidden_size"] == 1536
    assert sdpa["settings"]["dtype"] == "torch.bfloat16" and sdpa["settings"]["attn_implementation"] == "sdpa"
    assert [r["head"] for r in sdpa["think_and_embed"]] == list(bench_speed.HEAD_TYPES)
    assert sdpa["generation"]["same_texts"] and sdpa["encoding"]["rows"] == 1
    assert {r["workers"] for r in results["encoder"]["records"] if "workers" in r} >= {0, 2, 4}
    summary = (tmp_path / "summary.md").read_text()
    assert "accelerator utilisation: not measured" in summary and (tmp_path / "speed_sdpa.json").is_file()
    assert all(record["profile"]["head"] > 0 for record in sdpa["think_and_embed"]) and "| `qformer` |" in summary

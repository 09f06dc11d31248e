"""Smoke test of the encoder benchmark (`python -m eval.bench_encoder`) at tiny settings."""

import json

from eval.bench_encoder import main, run, table


def test_bench_encoder_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    records = main(["--rows", "8", "--repeats", "1", "--workers", "0", "2", "--batch-size", "2", "--window", "4",
                    "--image-size", "160x120", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| 2 workers |" in printed and "load average" in printed
    names = [record["pipeline"] for record in records]
    assert names == ["model only", "preprocessing only", "0 workers", "2 workers"]
    by_name = {record["pipeline"]: record for record in records}
    assert by_name["2 workers"]["max_abs_diff"] == 0.0 and by_name["0 workers"]["x_0_workers"] > 0
    assert all(record["rows_per_s"] > 0 and record["cpu_ms_per_row"] > 0 for record in records)
    assert "met" in by_name["2 workers"] and json.loads(out.read_text())["records"][0]["rows"] == 8
    assert table(records).count("\n") == len(records) + 1
    assert callable(run)

"""The scale benchmark runs end to end on a small store, in real reader processes, and cleans up after itself.

Speed and memory at scale are measured by running `python -m eval.bench_scale`, never asserted here.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eval import bench_scale

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_runs_at_20k_records_and_removes_its_store(tmp_path):
    out, scratch = tmp_path / "scale.json", tmp_path / "scratch"
    scratch.mkdir()
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "eval.bench_scale", "--records", "20000", "--skip-encoder",
                          "--lookups", "5000", "--dir", str(scratch), "--json", str(out)], cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.monotonic() - started < 30 + 30  # < 30 s on an idle 2-core machine; slack for a loaded one
    results = json.loads(out.read_text())["store"]
    assert list(scratch.iterdir()) == []  # the temp store (parts and index) is gone
    dict_store, indexed = results["dict"], results["index"]
    for report in (dict_store, indexed):
        assert report["todo"] == 2000 and report["job_rows"] == 20000  # 10% of the job not done yet
        assert report["lookups_per_s"] > 0 and report["peak_mib"] > report["rss_before_mib"] > 0
    assert indexed["index_mib"] > 0 and indexed["first_open_s"] > 0 and indexed["second_open_s"] > 0
    table = run.stdout
    for row in ("open, first (s)", "open, second (s)", "reader peak RSS (MiB)", "random lookups/s",
                "second concurrent reader peak RSS (MiB)", "missing rows of a 10%-unfinished job"):
        assert f"| {row}" in table, row
    assert "encoder half" not in table  # --skip-encoder


def test_the_encoder_half_is_none_until_its_module_exists():
    if (REPO / "eval" / "bench_encoder.py").exists():
        import pytest

        pytest.skip("eval.bench_encoder exists: its own tests cover it")
    assert bench_scale.encoder_rows(bench_scale.parse_args([])) is None

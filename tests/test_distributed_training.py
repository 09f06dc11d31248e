"""A real 2-process `accelerate launch` run (CPU, gloo, DDP) equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "contrastive_worker.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], timeout: int = 420) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate CLI is not next to this Python")
def test_two_processes_equal_one_process_on_the_same_global_batch(tiny_qwen2_vl, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    _run([sys.executable, str(WORKER), "--backbone", tiny_qwen2_vl, "--out", str(single), "--per-device-batch", "8"])
    # two ranks of 4 rows each, cross-device negatives, GradCache chunks of 2 (no_sync for all but the last)
    _run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
          str(WORKER), "--backbone", tiny_qwen2_vl, "--out", str(double), "--per-device-batch", "4",
          "--gradcache-chunk", "2"])

    one = json.loads((single / "result-0.json").read_text())
    ranks = [json.loads((double / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    for result in ranks:
        assert result["world_size"] == 2 and result["args_world_size"] == 2
        assert result["wrapped"] == "DistributedDataParallel"
    assert one["world_size"] == 1
    assert len(one["losses"]) == 2
    assert ranks[0]["training_loss"] == pytest.approx(one["training_loss"], abs=1e-5)
    assert ranks[1]["training_loss"] == pytest.approx(one["training_loss"], abs=1e-5)

    initial = torch.load(single / "params-initial.pt")
    one_process, two_processes = torch.load(single / "params.pt"), torch.load(double / "params.pt")
    assert set(one_process) == set(two_processes) == set(initial)
    moved = max((one_process[name] - initial[name]).abs().max().item() for name in initial)
    assert moved > 1e-3, "the two SGD steps should move the parameters"
    for name, value in one_process.items():
        torch.testing.assert_close(two_processes[name], value, atol=1e-5, rtol=0, msg=name)

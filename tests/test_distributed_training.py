"""A real 2-process `accelerate launch` run (CPU, gloo, DDP) equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import signal
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


def _run(command: list[str], timeout: int = 300) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1"}
    # a new session, so that a stalled run's workers (children of the launcher) are killed with it
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} timed out after {timeout} s:\n{stderr[-6000:]}")
    return process.returncode, stdout, stderr


def _check(returncode: int, stdout: str, stderr: str, command: list[str]) -> None:
    assert returncode == 0, f"{' '.join(command)} failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"


def _launch(worker_args: list[str]) -> None:
    """`accelerate launch` two CPU processes (the command line that really starts two gloo ranks); one retry on a
    fresh port if the rendezvous port was taken in the meantime (other jobs share this machine)."""
    for attempt in range(2):
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   str(WORKER), *worker_args]
        returncode, stdout, stderr = _run(command)
        if returncode == 0 or attempt or "address already in use" not in stderr.lower():
            return _check(returncode, stdout, stderr, command)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate CLI is not next to this Python")
@pytest.mark.parametrize("gradcache", [["--gradcache-chunk", "2"], []], ids=["gradcache", "plain"])
def test_two_processes_equal_one_process_on_the_same_global_batch(tiny_qwen2_vl, tmp_path, gradcache):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    command = [sys.executable, str(WORKER), "--backbone", tiny_qwen2_vl, "--out", str(single),
               "--per-device-batch", "8"]
    _check(*_run(command), command)
    # two ranks of 4 rows each, cross-device negatives (only rank 0 has hard negatives), GradCache chunks of 2
    # (no_sync for all but the last) or the plain setting
    _launch(["--backbone", tiny_qwen2_vl, "--out", str(double), "--per-device-batch", "4", *gradcache])

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

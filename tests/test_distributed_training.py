"""A real 2-process `accelerate launch` run (CPU, gloo, DDP) equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import run_process_tree

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "contrastive_worker.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], log_dir: Path, timeout: int = 300) -> tuple[int, str, str]:
    """Run `command` with its output in files under `log_dir`; a run that stalls (e.g. a deadlocked collective)
    fails the test after `timeout` seconds with every process of its tree killed, workers included (they run in
    their own sessions, so a process-group kill would miss them)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1"}
    run = run_process_tree(command, env=env, cwd=REPO, timeout=timeout, log_dir=log_dir)
    if run.timed_out:
        pytest.fail(f"{' '.join(command)} timed out after {timeout} s (killed {len(run.killed)} processes):\n"
                    f"{run.stderr[-6000:]}")
    return run.returncode, run.stdout, run.stderr


def _check(returncode: int, stdout: str, stderr: str, command: list[str]) -> None:
    assert returncode == 0, f"{' '.join(command)} failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"


def _launch(worker_args: list[str], log_dir: Path) -> None:
    """`accelerate launch` two CPU processes (the command line that really starts two gloo ranks); one retry on a
    fresh port if the rendezvous port was taken in the meantime (other jobs share this machine)."""
    for attempt in range(2):
        command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   str(WORKER), *worker_args]
        returncode, stdout, stderr = _run(command, log_dir / f"launch-{attempt}")
        if returncode == 0 or attempt or "address already in use" not in stderr.lower():
            return _check(returncode, stdout, stderr, command)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="the accelerate CLI is not next to this Python")
@pytest.mark.parametrize("gradcache", [["--gradcache-chunk", "2"], []], ids=["gradcache", "plain"])
def test_two_processes_equal_one_process_on_the_same_global_batch(tiny_qwen2_vl, tmp_path, gradcache):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    command = [sys.executable, str(WORKER), "--backbone", tiny_qwen2_vl, "--out", str(single),
               "--per-device-batch", "8"]
    _check(*_run(command, tmp_path / "logs-single"), command)
    # two ranks of 4 rows each, cross-device negatives (only rank 0 has hard negatives), GradCache chunks of 2
    # (no_sync for all but the last) or the plain setting
    _launch(["--backbone", tiny_qwen2_vl, "--out", str(double), "--per-device-batch", "4", *gradcache],
            tmp_path / "logs-double")

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

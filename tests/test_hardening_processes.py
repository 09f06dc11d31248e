"""Issue 13: a deadlocked multi-process job fails its test within the timeout and leaves no process behind.

The workers that `accelerate launch` (torch elastic) starts run in their own sessions, so killing the launcher's
process group misses them, and a worker that survives holding an inherited stdout pipe blocks `communicate()`
forever. `tests.helpers.run_process_tree` writes output to files and kills the whole tree.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import process_tree, run_process_tree

ACCELERATE = Path(sys.executable).with_name("accelerate")
TIMEOUT = 25  # seconds: the workers block about 5 s after the launch on a busy 2-core machine

# rank 0 waits in a barrier that rank 1 never joins; rank 1 waits for a message rank 0 never sends
DEADLOCK = '''
import os, sys
from pathlib import Path
out = Path(sys.argv[1])
rank = os.environ["RANK"]
(out / f"pid-{rank}").write_text(str(os.getpid()))
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
(out / f"blocked-{rank}").write_text("1")
print(f"rank {rank} blocks now", flush=True)
if dist.get_rank() == 0:
    dist.barrier()
else:
    dist.recv(torch.zeros(1), src=0)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not ACCELERATE.exists() or not Path("/proc").is_dir(),
                    reason="needs the accelerate CLI next to this Python and /proc")
def test_a_deadlocked_two_process_job_fails_in_time_and_leaves_no_process(tmp_path):
    script = tmp_path / "deadlock.py"
    script.write_text(DEADLOCK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1"}
    command = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(script), str(tmp_path)]
    started = time.monotonic()
    run = run_process_tree(command, env=env, cwd=tmp_path, timeout=TIMEOUT, log_dir=tmp_path / "logs")
    assert time.monotonic() - started < TIMEOUT + 20, "the run must end soon after its timeout"
    assert run.timed_out, f"the job should deadlock, it exited with {run.returncode}:\n{run.stderr[-3000:]}"
    workers = [int((tmp_path / f"pid-{rank}").read_text()) for rank in (0, 1)]
    assert all((tmp_path / f"blocked-{rank}").exists() for rank in (0, 1)), run.stderr[-3000:]
    assert "rank 0 blocks now" in run.stdout and "rank 1 blocks now" in run.stdout
    # the tree kill found the workers (they run in their own sessions, which a process-group kill misses)
    assert set(workers) <= set(run.killed)
    assert not any(_alive(pid) for pid in workers)
    assert process_tree(None, run.marker) == []

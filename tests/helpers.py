"""Small builders shared by tests: generated images, frames and rows; running a multi-process job so that it can
neither hang the test nor leave a process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


# The first lines of a script run in a fresh interpreter to load a saved folder: importing the project's own
# modules fails there, so only the folder's remote code can provide the classes.
BLOCK_PROJECT_MODULES = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"configuration_tte", "modeling_tte", "processing_tte", "prompts_tte",
                                  "sentence_tte", "train", "eval", "tests"}:
            raise ImportError(f"project module {name} must not be importable here")
sys.meta_path.insert(0, Block())
"""


def solid(colour: str, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def mixed_rows() -> list[dict]:
    """An image row with ECR, a 3-frame video row, and a text-only row."""
    return [
        {"image": solid("red"), "instruction": "Find a caption.", "ecr": "<think>It is red.</think> Answer: red"},
        {"video": [solid(c) for c in ("red", "blue", "green")], "text": "what happens", "ecr": "Answer: colours"},
        {"text": "a red square", "instruction": "Represent the text."},
    ]


# ---------------------------------------------------------------- process trees (multi-process tests)
MARKER = "TTE_TEST_PROCESS_TREE"


@dataclass
class TreeRun:
    """What `run_process_tree` saw: the exit status (`None` when it timed out), the output, the wall time, the
    processes it had to kill, and the environment marker its processes carried."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    killed: list[int]
    marker: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """`(state, parent pid)` of a live process from /proc, or `None` if it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text.rsplit(")", 1)[1].split()[:2]
    return None if state in ("Z", "X") else (state, int(ppid))


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def process_tree(root: int | None, marker: str | None = None) -> list[int]:
    """Live processes of the tree under `root` (itself included; `None`: no root), found by parent pid, and every
    process whose environment carries `MARKER=marker` (which finds workers that started their own session and were
    re-parented when their launcher died)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = info[1]
    tree = {root} if root in table else set()
    grown = True
    while grown:
        children = {pid for pid, ppid in table.items() if ppid in tree} - tree
        grown, tree = bool(children), tree | children
    if marker is not None:
        token = f"{MARKER}={marker}".encode()
        tree |= {pid for pid in table if pid != os.getpid() and _has_marker(pid, token)}
    return sorted(tree)


def kill_process_tree(root: int | None, marker: str | None = None, rounds: int = 20) -> list[int]:
    """SIGKILL every process of `process_tree(root, marker)` until none is left (a dying process may fork);
    returns the pids it killed."""
    killed = []
    for _ in range(rounds):
        pids = process_tree(root, marker)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.extend(pids)
        time.sleep(0.1)
    return sorted(set(killed))


def run_process_tree(command: list[str], env: dict, cwd, timeout: float, log_dir) -> TreeRun:
    """
    Run `command` (e.g. `accelerate launch ...`) so that it cannot hang the test: its output goes to files in
    `log_dir`, not to pipes that a surviving worker could hold open, its processes carry a marker in their
    environment, and on `timeout`, or after it exits, every process of its tree is killed (`kill_process_tree`).
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    start = time.monotonic()
    with open(log_dir / "stdout.txt", "w") as stdout, open(log_dir / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, env={**env, MARKER: marker}, cwd=cwd, stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        # a launcher that exited was reaped, so its pid may be reused: then only the marker names its processes
        killed = kill_process_tree(process.pid if returncode is None else None, marker)
        process.wait()
    return TreeRun(returncode, (log_dir / "stdout.txt").read_text(errors="replace"),
                   (log_dir / "stderr.txt").read_text(errors="replace"), time.monotonic() - start, killed, marker)

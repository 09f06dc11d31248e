"""The process group of a job started by `accelerate launch` / `torchrun` (or a single process)."""

from __future__ import annotations

import os


def process_state():
    """This process's `accelerate.PartialState` (gloo on machines without CUDA). Refuses a launch whose processes
    do not form one group: each would then do all the work (e.g. `--multi_gpu` on a CPU machine without
    `cpu=True` starts independent rank-0 jobs)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(f"launched as {launched} processes but accelerate sees {state.num_processes}: every "
                           "process would do all the work (check the `accelerate launch` flags)")
    return state

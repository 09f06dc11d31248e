"""Named demo stages with their wall times, run in worker processes when the machine has cores to spare.

`Stages(seconds, jobs)`: `stages(name, function, *args)` runs a stage now, in this process, and returns its result;
`stages.submit(name, function, *args)` returns a future and, with `jobs > 1`, runs the stage in one of `jobs`
worker processes as soon as every future among its arguments is done (with `jobs == 1`, at once, in this process:
submission order is then the run order). A stage is a module-level function (workers import it) whose outputs are
files, so a stage run in a worker is the same computation as in this process; every worker uses one torch thread.
`seconds` records each stage name's summed time in the process that ran it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor

logger = logging.getLogger(__name__)


def _start_worker() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)


def _timed(function, args: tuple, kwargs: dict):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _resolved(values):
    return [value.result() if isinstance(value, Future) else value for value in values]


class Stages:
    """Runs named stages (now, or as futures in `jobs` worker processes) and records each one's time."""

    def __init__(self, seconds: dict, jobs: int = 1):
        self.seconds = seconds
        self.jobs = jobs
        self._workers = None
        self._waiters = None
        if jobs > 1:
            self._workers = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_start_worker)
            self._waiters = ThreadPoolExecutor(max_workers=64, thread_name_prefix="stage")

    def _record(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 1)
        logger.info("stage %s done in %.1f s", name, seconds)

    def __call__(self, name: str, function, *args, **kwargs):
        """Run a stage in this process now; its result."""
        logger.info("stage %s ...", name)
        result, seconds = _timed(function, tuple(_resolved(args)), kwargs)
        self._record(name, seconds)
        return result

    def submit(self, name: str, function, *args, **kwargs) -> Future:
        """A future of the stage's result; futures among `args` are waited for and replaced by their results."""
        if self._workers is None:
            done = Future()
            done.set_result(self(name, function, *args, **kwargs))
            return done

        def wait_then_run():
            resolved = tuple(_resolved(args))
            logger.info("stage %s ... (worker)", name)
            result, seconds = self._workers.submit(_timed, function, resolved, kwargs).result()
            self._record(name, seconds)
            return result

        return self._waiters.submit(wait_then_run)

    def close(self, cancel: bool = False) -> None:
        """Wait for the submitted stages (or, with `cancel`, only for those already running) and stop the workers."""
        if self._workers is not None:
            self._waiters.shutdown(wait=True, cancel_futures=cancel)
            self._workers.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self):
        return self

    def __exit__(self, error_type, *exc):
        self.close(cancel=error_type is not None)

"""MMEB-V1 / MMEB-V2 task loaders, one module per task family, each reading the family's published layout (the
one the reference evaluator, VLM2Vec-V2, reads) into a `eval.data.TaskData`.

`spec.format` names the family module: `image` (MMEB-V2 image tasks), `mmeb_v1`, `video_retrieval`,
`video_classification`, `video_qa`, `moment_retrieval`, `visdoc`. Each module has
`load(spec, source, num_frames) -> TaskData`; `eval.mmeb.source.DataSource` says where annotations and media come
from.
"""

from __future__ import annotations

import importlib
import time

from eval.data import TaskData
from eval.mmeb.source import DataSource, DataSourceError
from eval.tasks import TaskSpec

FAMILIES = ("image", "mmeb_v1", "video_retrieval", "video_classification", "video_qa", "moment_retrieval", "visdoc")

__all__ = ["DataSource", "DataSourceError", "FAMILIES", "check_task", "load_task"]


def load_task(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load `spec` from `source` with its family's loader."""
    if spec.format not in FAMILIES:
        raise ValueError(f"task {spec.name}: unknown task format {spec.format!r} (one of {list(FAMILIES)})")
    module = importlib.import_module(f"eval.mmeb.{spec.format}")
    return module.load(spec, source, num_frames)


def check_task(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> dict:
    """Whether a task's annotations and media are found, without a model: rows, pool size, frames per video, or
    the error that loading it raised."""
    start = time.perf_counter()
    try:
        data = load_task(spec, source, num_frames)
    except (OSError, ValueError, KeyError) as error:
        return {"task": spec.name, "ok": False, "error": f"{type(error).__name__}: {error}",
                "seconds": time.perf_counter() - start}
    rows = [q.row for q in data.queries] + list(data.corpus.values())
    frames = [len(row["video"]) for row in rows if isinstance(row.get("video"), list)]
    return {"task": spec.name, "ok": True, "rows": len(data.queries), "candidates": len(data.corpus),
            "videos": len(frames), "frames": (min(frames), max(frames)) if frames else None,
            "seconds": time.perf_counter() - start}

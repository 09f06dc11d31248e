"""The MMEB task registry: every MMEB-V1 (36) and MMEB-V2 (78) task, read from `eval/mmeb_tasks.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

REGISTRY_PATH = Path(__file__).with_name("mmeb_tasks.json")
BENCHMARKS = ("mmeb_v1", "mmeb_v2", "synthetic")  # synthetic: the offline demo (eval/synthetic)
FORMATS = ("image", "mmeb_v1", "video_retrieval", "video_classification", "video_qa", "moment_retrieval", "visdoc")
MODALITIES = ("image", "video", "visdoc")


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task.

    Args:
        name (`str`): the task name used in file names and the leaderboard (e.g. `"ImageNet-1K"`).
        benchmark (`str`): `"mmeb_v1"`, `"mmeb_v2"` or `"synthetic"` (the offline demo benchmark).
        category (`str`): e.g. `"CLS"` (V1) or `"I-CLS"`, `"V-MRET"`, `"VD-ViDoRe-V2"` (V2).
        modality (`str`): `"image"`, `"video"` or `"visdoc"`.
        format (`str`): the loader family (`eval/mmeb/<format>.py`), one of `FORMATS`.
        eval_type (`str`): `"local"` ranks each row's own candidates, `"global"` the task's deduplicated candidates.
        task_type (`str`): the TTE reasoner prompt type (`processing_tte.TASK_TYPES`).
        parser (`str`, *optional*): image tasks: the reference parser (`image_cls`, `image_qa`, `image_i2t`,
            `image_t2i`, `image_i2i_vg`), which decides how queries and candidates are built and named.
        media (`str`, *optional*): the task's media folder under the MMEB-V2 data tree (the reference YAML's
            `image_root` / `frame_root`, e.g. `"video-tasks/frames/video_ret/MSR-VTT"`); `None` when the
            annotations carry the media (visual documents).
        hub (`tuple`): `(dataset repo, config or None, split)` on the Hugging Face hub.
        instruction (`str`, *optional*): the query instruction when the data does not carry one.
        target_instruction (`str`, *optional*): the candidate instruction when the data does not carry one.
        ood (`bool`, *optional*): MMEB-V1 out-of-distribution task.
    """

    name: str
    benchmark: str
    category: str
    modality: str
    format: str
    eval_type: str
    task_type: str
    parser: str | None = None
    media: str | None = None
    hub: tuple = field(default=(None, None, "test"))
    instruction: str | None = None
    target_instruction: str | None = None
    ood: bool | None = None

    @property
    def headline(self) -> str:
        """The leaderboard metric: `hit@1` for image and video, `ndcg_linear@5` for visual documents."""
        return _registry()["headline"][self.modality]


@lru_cache(maxsize=1)
def _registry() -> dict:
    return json.loads(REGISTRY_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=2)
def all_tasks(benchmark: str = "mmeb_v2") -> dict[str, TaskSpec]:
    """Every task of `benchmark`, by name, in leaderboard order."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {list(BENCHMARKS)}, got {benchmark!r}")
    tasks = {}
    for entry in _registry()[benchmark]:
        entry = dict(entry, hub=tuple(entry["hub"]))
        tasks[entry["name"]] = TaskSpec(benchmark=benchmark, **entry)
    return tasks


def categories(benchmark: str = "mmeb_v2") -> list[str]:
    """The categories of `benchmark`, in leaderboard order."""
    return list(dict.fromkeys(task.category for task in all_tasks(benchmark).values()))


def get_task(name: str, benchmark: str = "mmeb_v2") -> TaskSpec:
    """The task called `name`; a `KeyError` listing close names when it is not in the registry."""
    tasks = all_tasks(benchmark)
    if name not in tasks:
        close = [t for t in tasks if t.lower().startswith(name.lower()[:3])]
        raise KeyError(f"task {name!r} is not in the {benchmark} registry ({len(tasks)} tasks)"
                       + (f"; did you mean one of {close}?" if close else ""))
    return tasks[name]


def select_tasks(selectors: list[str] | str, benchmark: str = "mmeb_v2") -> list[TaskSpec]:
    """The tasks that `selectors` name, each `"all"`, a modality (`"image"`, `"video"`, `"visdoc"`), a category
    (`"I-CLS"`, `"V-MRET"`, ...) or a task name; registry order, each task once. A comma-separated string works
    too (`"video,ViDoRe_arxivqa"`)."""
    if isinstance(selectors, str):
        selectors = [part.strip() for part in selectors.split(",") if part.strip()]
    if not selectors:
        raise KeyError("no tasks selected: name tasks, a category, a modality or 'all'")
    tasks = list(all_tasks(benchmark).values())
    chosen: set[str] = set()
    for selector in selectors:
        group = [t.name for t in tasks if selector in ("all", t.category, t.modality)]
        chosen.update(group or [get_task(selector, benchmark).name])
    return [t for t in tasks if t.name in chosen]

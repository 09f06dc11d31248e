"""Video retrieval (MSR-VTT, MSVD, DiDeMo, YouCook2, VATEX): a caption query ranks every video of the split.

As the reference's `msrvtt/msvd/didemo/youcook2/vatex_dataset.py` read them: the query is the dataset's
instruction and the caption (MSVD and VATEX: the first of a list); the candidate is the shared target instruction
and exactly `num_frames` frames of `<frame_root>/<video key>` (the reference asserts the count); the candidate
name is the video key, and the pool holds every row's video, first occurrence first (global ranking).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from eval.data import TaskData, TaskDataError
from eval.mmeb import columns
from eval.mmeb.source import DataSource
from eval.mmeb.video_common import media_root, new_task, records, text_row, video, video_row, where
from eval.tasks import TaskSpec

TARGET_INSTRUCTION = "Understand the content of the provided video."


@dataclass(frozen=True)
class _Dataset:
    """Which columns a dataset's parser reads and how it gets the video key and the caption."""

    instruction: str
    key: str  # column holding the video key (DiDeMo: a video path whose file stem is the key)
    caption: str
    caption_is_list: bool = False  # take the first caption of a list
    key_from_path: bool = False
    also_read: tuple = ()  # columns the parser reads without using them for evaluation


DATASETS = {
    "MSR-VTT": _Dataset("Find a video that contains the following visual content:", "video_id", "caption",
                        also_read=("video",)),
    "MSVD": _Dataset("Find the video snippet that corresponds to the given summary:", "video_id", "caption",
                     caption_is_list=True, also_read=("video",)),
    "DiDeMo": _Dataset("Find a video that includes the following described scenes:", "video", "caption",
                       key_from_path=True),
    "YouCook2": _Dataset("Find a video that demonstrates the following action while making a recipe:", "id",
                         "sentence", also_read=("video_path",)),
    "VATEX": _Dataset("Select a video that fits the description provided:", "videoID", "enCap", caption_is_list=True),
}


def _key(dataset: _Dataset, record: dict, spec: TaskSpec, index) -> str:
    value = columns.text(record, dataset.key, spec.name, index)
    key = os.path.splitext(os.path.basename(value))[0] if dataset.key_from_path else value
    if not key:
        raise TaskDataError(f"{where(spec, index, dataset.key)}: empty video key in {value!r}")
    return key


def _caption(dataset: _Dataset, record: dict, spec: TaskSpec, index) -> str:
    if dataset.caption_is_list:
        return columns.text_list(record, dataset.caption, spec.name, index)[0]
    return columns.text(record, dataset.caption, spec.name, index)


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load a video retrieval task: one caption query per row, ranked against every video of the split."""
    if spec.name not in DATASETS:
        raise TaskDataError(f"task {spec.name}: not a video retrieval task (one of {list(DATASETS)})")
    dataset = DATASETS[spec.name]
    root = media_root(spec, source)
    data = new_task(spec)
    for index, record in enumerate(records(spec, source)):
        columns.require(record, (dataset.key, dataset.caption) + dataset.also_read, spec.name, index)
        key = _key(dataset, record, spec, index)
        caption = _caption(dataset, record, spec, index)
        if key not in data.corpus:
            frames = video(root / key, num_frames, where(spec, index), exact=True)
            data.add_candidate(key, video_row(frames, TARGET_INSTRUCTION))
        data.add_query(index, text_row(caption, dataset.instruction), {key: 1.0}, None)
    return data.check()

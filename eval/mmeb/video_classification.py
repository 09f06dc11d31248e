"""Video classification (K700, HMDB51, UCF101, Breakfast, SmthSmthV2): a video query ranks class labels.

As the reference's `video_classification_datasets.py` and `ssv2_dataset.py` read them: the query is the
dataset's instruction (`DATASET_INSTRUCTION`) and `num_frames` frames of `<frame_root>/<video_id>` (all of them
when the folder has fewer); candidates are label strings without media, named by the label.
* K700, HMDB51, UCF101, Breakfast (global): the pool is the labels seen in the rows, in row order, then the
  dataset's fixed label list (700/51/101/10 labels, `video_labels.json`); the gold is `pos_text`.
* SmthSmthV2 (local): the first 1000 rows in stored order; the candidates are the row's `neg_text` list, in
  order and with duplicates; the gold is `pos_text`; `video_id` is read as a string.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from eval.data import TaskData, TaskDataError
from eval.mmeb import columns
from eval.mmeb.source import DataSource
from eval.mmeb.video_common import media_root, new_task, records, text_row, video, video_row, where
from eval.tasks import TaskSpec

LABELS_PATH = Path(__file__).with_name("video_labels.json")
# registry name -> the reference's dataset_name (the key of its label lists and instructions)
DATASET_NAMES = {"K700": "Kinetics-700"}
SSV2 = "SmthSmthV2"
SSV2_ROWS = 1000  # num_sample_per_subset of the reference's video.yaml


@lru_cache(maxsize=1)
def reference_data() -> dict:
    """`{"instructions": {dataset_name: str}, "labels": {dataset_name: [label, ...]}}` from `video_labels.json`."""
    return json.loads(LABELS_PATH.read_text(encoding="utf-8"))


def instruction(spec: TaskSpec) -> str:
    """The reference's query instruction for the task."""
    name = DATASET_NAMES.get(spec.name, spec.name)
    instructions = reference_data()["instructions"]
    if name not in instructions:
        raise TaskDataError(f"task {spec.name}: no reference instruction for dataset {name!r} in {LABELS_PATH}")
    return instructions[name]


def label_list(spec: TaskSpec) -> list[str]:
    """The dataset's fixed label list (the reference's `VIDEOCLS_LABEL_MAPPING`)."""
    name = DATASET_NAMES.get(spec.name, spec.name)
    labels = reference_data()["labels"]
    if name not in labels:
        raise TaskDataError(f"task {spec.name}: no fixed label list for dataset {name!r} in {LABELS_PATH}")
    return labels[name]


def _video_id(record: dict, spec: TaskSpec, index) -> str:
    value = record.get("video_id")
    if spec.name == SSV2 and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # the SSv2 parser casts with str()
    return columns.text(record, "video_id", spec.name, index)


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load a video classification task (see the module docstring)."""
    local = spec.name == SSV2
    root = media_root(spec, source)
    query_instruction = instruction(spec)
    data = new_task(spec)
    for index, record in enumerate(records(spec, source, limit=SSV2_ROWS if local else None)):
        columns.require(record, ("video_id", "pos_text") + (("neg_text",) if local else ()), spec.name, index)
        video_id = _video_id(record, spec, index)
        label = columns.text(record, "pos_text", spec.name, index)
        frames = video(root / video_id, num_frames, where(spec, index))
        query = video_row(frames, query_instruction)
        if local:
            names = columns.text_list(record, "neg_text", spec.name, index)
            for name in names:
                data.add_candidate(name, text_row(name))
            data.add_query(index, query, {label: 1.0}, names)
        else:
            data.add_candidate(label, text_row(label))
            data.add_query(index, query, {label: 1.0}, None)
    if not local:
        for label in label_list(spec):
            data.add_candidate(label, text_row(label))
    return data.check()

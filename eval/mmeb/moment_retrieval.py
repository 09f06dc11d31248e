"""Moment retrieval (QVHighlight, Charades-STA, MomentSeeker): a query ranks the clips of its own row (local).

As the reference's `moment_retrieval_datasets.py` and `momentseeker_dataset.py` read them:
* QVHighlight, Charades-STA: with F = `<frame_root>/<file stem of video_path>`, the query is the instruction, the
  `query` text and `num_frames` frames of `F/query/`; the candidates are every sub-folder of F except `query`
  (files skipped), in `os.listdir` order, each `num_frames` frames with the target instruction, named by the
  folder path; the gold is every folder whose name starts with `positive` (an error when there is none).
* MomentSeeker: `input_frames` ending in `.mp4` gives a video query (all frames of
  `<frame_root>/video_frames/<input_frames before ".mp4", '/' -> '_'>`), ending in `.jpg` an image query
  (`<frame_root>/query_<input_frames>`), anything else a text query, each with its own instruction; the
  candidates are the positive then the negative clips, each ALL frames of
  `<frame_root>/video_frames/<output_path with '/' -> '_', cut at ".mp4">`, named by that folder path; the gold
  is every positive.
"""

from __future__ import annotations

import os
from pathlib import Path

from eval.data import TaskData, TaskDataError, resolve_file
from eval.mmeb import columns
from eval.mmeb.source import DataSource
from eval.mmeb.video_common import media_root, new_task, records, video, video_row, where
from eval.tasks import TaskSpec

QUERY_INSTRUCTION = "Find the clip that corresponds to the described scene in the given video:"
TARGET_INSTRUCTION = "Understand the content of the provided video."
SEEKER_TEXT_INSTRUCTION = "Find the clip that corresponds to the given text:"
SEEKER_IMAGE_INSTRUCTION = "Select the video clip that aligns with the given text and image:"
SEEKER_VIDEO_INSTRUCTION = "Find the clip that corresponds to the given sentence and video segment:"
SEEKER_TARGET_INSTRUCTION = "Understand the content of the provided video clip."
MOMENT_SEEKER = "MomentSeeker"


def _clips(spec: TaskSpec, source_root: Path, record: dict, index, num_frames: int, data: TaskData):
    """QVHighlight / Charades-STA: the query row, the candidate names in os.listdir order and the positives."""
    video_path = columns.text(record, "video_path", spec.name, index)
    folder = source_root / os.path.splitext(os.path.basename(video_path))[0]
    at = where(spec, index)
    if not folder.is_dir():
        raise FileNotFoundError(f"{at}: clip folder of video {video_path!r} not found: {folder}")
    query_frames = video(folder / "query", num_frames, f"{at} (query frames)")
    names, positives = [], []
    for entry in os.listdir(folder):
        clip = folder / entry
        if entry == "query" or not clip.is_dir():
            continue
        name = str(clip)
        if name not in data.corpus:
            data.add_candidate(name, video_row(video(clip, num_frames, f"{at} (clip)"), TARGET_INSTRUCTION))
        names.append(name)
        if entry.startswith("positive"):
            positives.append(name)
    if not positives:
        raise TaskDataError(f"{at}: no clip folder named positive* in {folder} (has {sorted(os.listdir(folder))})")
    query = video_row(query_frames, QUERY_INSTRUCTION, columns.text(record, "query", spec.name, index))
    return query, names, positives


def _seeker_query(spec: TaskSpec, root: Path, record: dict, index) -> dict:
    """MomentSeeker: a video, image or text query by the suffix of `input_frames`."""
    text = columns.text(record, "query", spec.name, index)
    source = columns.text(record, "input_frames", spec.name, index)
    at = where(spec, index, "input_frames")
    if source.endswith(".mp4"):
        folder = root / "video_frames" / source.split(".mp4")[0].replace("/", "_")
        return video_row(video(folder, None, at), SEEKER_VIDEO_INSTRUCTION, text)
    if source.endswith(".jpg"):
        image = resolve_file(root, f"query_{source}", at)
        return {"image": image, "instruction": SEEKER_IMAGE_INSTRUCTION, "text": text}
    return {"text": text, "instruction": SEEKER_TEXT_INSTRUCTION}


def _seeker_clip_paths(record: dict, column: str, spec: TaskSpec, index) -> list[str]:
    entries = record.get(column)
    if not isinstance(entries, (list, tuple)):
        raise TaskDataError(f"{where(spec, index, column)}: expected a list of {{'output_path': ...}}, got "
                            f"{type(entries).__name__} {entries!r:.80}")
    paths = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise TaskDataError(f"{where(spec, index, column)}[{i}]: expected a dict with 'output_path', got "
                                f"{entry!r:.80}")
        paths.append(columns.text(entry, "output_path", spec.name, f"{index} ({column}[{i}])"))
    return paths


def _seeker(spec: TaskSpec, root: Path, record: dict, index, data: TaskData):
    """MomentSeeker: the query row, the candidate names (positives then negatives) and the positives."""
    query = _seeker_query(spec, root, record, index)
    groups = [_seeker_clip_paths(record, column, spec, index) for column in ("positive_frames", "negative_frames")]
    names = []
    for path in groups[0] + groups[1]:
        folder = root / "video_frames" / path.replace("/", "_").split(".mp4")[0]
        name = str(folder)
        if name not in data.corpus:
            frames = video(folder, None, f"{where(spec, index)} (clip {path!r})")
            data.add_candidate(name, video_row(frames, SEEKER_TARGET_INSTRUCTION))
        names.append(name)
    return query, names, names[:len(groups[0])]


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load a moment retrieval task (see the module docstring)."""
    seeker = spec.name == MOMENT_SEEKER
    required = ("query", "input_frames", "positive_frames", "negative_frames") if seeker else ("query", "video_path")
    root = media_root(spec, source)
    data = new_task(spec)
    for index, record in enumerate(records(spec, source)):
        columns.require(record, required, spec.name, index)
        if seeker:
            query, names, positives = _seeker(spec, root, record, index, data)
        else:
            query, names, positives = _clips(spec, root, record, index, num_frames, data)
        data.add_query(index, query, dict.fromkeys(positives, 1.0), names)
    return data.check()

"""Helpers shared by the four video task families: annotation rows, frame folders and processor rows."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from eval.data import TaskData, TaskDataError
from eval.mmeb.frames import sample_frames
from eval.mmeb.source import DataSource
from eval.tasks import TaskSpec


def records(spec: TaskSpec, source: DataSource, config: str | None = None, limit: int | None = None) -> list[dict]:
    """The rows of the task's annotation table (every shard), in stored order; the first `limit` when given.
    `config` overrides the registry's (MVBench reads 20 configs of one repo)."""
    repo, default_config, split = spec.hub
    table = source.table(spec.name, repo, config if config is not None else default_config, split)
    if limit is not None and limit < len(table):
        table = table.select(range(limit))
    return table.to_list()


def media_root(spec: TaskSpec, source: DataSource) -> Path:
    """The task's frame root (`frame_root` of the reference YAML) under the MMEB-V2 data tree."""
    return source.media_dir(spec.name, spec.media)


def video(folder: Path, num_frames: int | None, where: str, exact: bool = False) -> list[Path]:
    """The frames the reference feeds for the video in `folder`: `num_frames` picked by its floor rule, all of
    them when the folder has fewer (or when `num_frames` is `None`). With `exact`, a folder with fewer frames is
    an error (the retrieval parsers assert exactly `num_frames`)."""
    frames = sample_frames(folder, num_frames, where)
    if exact and num_frames is not None and len(frames) != num_frames:
        raise TaskDataError(f"{where}: the reference needs exactly {num_frames} frames per video, but {folder} has "
                            f"{len(frames)} ({', '.join(p.name for p in frames)})")
    sizes = {}
    for frame in frames:
        try:
            with Image.open(frame) as image:
                sizes.setdefault(image.size, frame.name)
        except OSError as error:
            raise TaskDataError(f"{where}: cannot read frame {frame} ({error})") from error
    if len(sizes) > 1:
        found = ", ".join(f"{w}x{h} ({name})" for (w, h), name in sizes.items())
        raise TaskDataError(f"{where}: frames of one video differ in size in {folder}: {found}")
    return frames


def video_row(frames: list[Path], instruction: str, text: str = "") -> dict:
    """A processor row with a video (its frame paths), the reference instruction and text."""
    return {"video": frames, "instruction": instruction, "text": text}


def text_row(text: str, instruction: str = "") -> dict:
    """A text-only processor row."""
    return {"text": text, "instruction": instruction}


def new_task(spec: TaskSpec) -> TaskData:
    """An empty `TaskData` for `spec`."""
    return TaskData(spec)


def where(spec: TaskSpec, index, column: str | None = None) -> str:
    """`task X row i [column c]` for error messages."""
    return f"task {spec.name} row {index}" + (f" column {column!r}" if column else "")

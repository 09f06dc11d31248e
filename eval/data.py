"""What a loaded MMEB task is: queries (with their labels and, for local tasks, their own candidates) and a
deduplicated corpus of candidates, each a `TTEProcessor` row (`image`, `video`, `text`, `instruction`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from eval.tasks import TaskSpec
from processing_tte import IMAGE_SUFFIXES
from train.data import PLACEHOLDERS

IMAGE_TOKENS = ("<image>",)  # besides MMEB's <|image_N|> placeholders (train.data.PLACEHOLDERS)


@dataclass
class EvalQuery:
    """One query row.

    Args:
        row_id (`str`): the row's id in the task (its index, or the BEIR `query-id`); the ECR store key.
        row (`dict`): the processor row of the query.
        relevance (`dict[str, float]`): label (candidate name) -> graded relevance, pairs kept together.
        candidates (`list[str]`, *optional*): this row's candidate names (local tasks); `None` ranks the corpus.
    """

    row_id: str
    row: dict
    relevance: dict[str, float]
    candidates: list[str] | None = None


@dataclass
class TaskData:
    """A loaded task: its queries and its deduplicated candidates (name -> processor row)."""

    spec: TaskSpec
    queries: list[EvalQuery] = field(default_factory=list)
    corpus: dict[str, dict] = field(default_factory=dict)

    def add_candidate(self, name: str, row: dict) -> str:
        """Register a candidate once per name (the first row of a name wins)."""
        self.corpus.setdefault(name, row)
        return name


class TaskDataError(ValueError):
    """Malformed task data; the message names the task and the row."""


def clean_text(text) -> str:
    """Text without MMEB's inline image placeholders."""
    text = PLACEHOLDERS.sub("", "" if text is None else str(text))
    for token in IMAGE_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def candidate_name(text: str, media: str | None) -> str:
    """MMEB candidate naming: the text, the media path, or `path:text` when a candidate has both."""
    if media and text:
        return f"{media}:{text}"
    return media or text


def resolve_media(path, root: Path | None, where: str, video: bool = False) -> Path | object:
    """An existing image file (or, with `video`, frame folder) for `path` relative to `root`; PIL images and
    other non-path values pass through. Raises `FileNotFoundError` naming `where`."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    full = Path(path) if root is None or Path(path).is_absolute() else Path(root) / path
    ok = full.is_dir() if video else full.is_file()
    if not ok:
        kind = "video frame folder" if video else "image file"
        raise FileNotFoundError(f"{where}: {kind} not found: {full}")
    return full


def sample_frames(folder: Path, num_frames: int, where: str) -> list[Path]:
    """`num_frames` frames sampled uniformly (first and last included) from a folder of frames sorted by name;
    all frames when the folder has fewer."""
    frames = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not frames:
        raise FileNotFoundError(f"{where}: video frame folder has no frames: {folder}")
    if len(frames) <= num_frames:
        return frames
    if num_frames == 1:
        return [frames[0]]
    step = (len(frames) - 1) / (num_frames - 1)
    return [frames[round(i * step)] for i in range(num_frames)]


def read_records(path: Path) -> list[dict]:
    """Rows of a `.jsonl`, `.json` (a list) or `.parquet` file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    if suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if suffix == ".parquet":
        from datasets import Dataset

        return list(Dataset.from_parquet(str(path)))
    raise ValueError(f"unsupported data file {path} (use .jsonl, .json or .parquet)")

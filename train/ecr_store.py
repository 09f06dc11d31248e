"""The ECR store: embedding-centric reasoning traces on disk, one record per (dataset, row id, side).

A store is a folder of JSON-lines part files (one per writer, e.g. one per `accelerate` rank), appended as
work finishes, so a killed job loses at most the line it was writing. Opening a part for writing cuts a torn
last line; reading skips it and keeps the first record of each key, so readers always see one record per key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SIDES = ("query", "target")


@dataclass(frozen=True)
class ECRRecord:
    """One reasoning trace. `prompt_hash` identifies the prompt it answered (see `prompt_hash`)."""

    dataset: str
    row_id: str
    side: str
    ecr: str
    answer: str | None
    reasoner: str
    prompt_hash: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.row_id, self.side)


def ecr_key(dataset: str, row_id, side: str) -> tuple[str, str, str]:
    """The store key of a row; `side` is `"query"` or `"target"`."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
    return (str(dataset), str(row_id), side)


def _read_part(path: Path) -> Iterator[dict]:
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                return  # a torn last line from a killed writer
            yield json.loads(line)


def _cut_torn_tail(path: Path) -> None:
    """Drop an unterminated last line so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)


class ECRStore:
    """A folder of ECR records; `part` names this writer's file (e.g. `"rank0"`)."""

    def __init__(self, path: str | os.PathLike, part: str = "part0"):
        self.path = Path(path)
        self.part_path = self.path / f"{part}.jsonl"
        self._records: dict[tuple[str, str, str], ECRRecord] = {}
        self.reload()

    def reload(self) -> None:
        """Re-read every part file (e.g. after other writers finished)."""
        self._records = {}
        for part in sorted(self.path.glob("*.jsonl")) if self.path.is_dir() else []:
            for fields in _read_part(part):
                record = ECRRecord(**fields)
                self._records.setdefault(record.key, record)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key) -> bool:
        return tuple(key) in self._records

    def __iter__(self) -> Iterator[ECRRecord]:
        return iter(self._records.values())

    def get(self, dataset: str, row_id, side: str) -> ECRRecord | None:
        return self._records.get(ecr_key(dataset, row_id, side))

    def missing(self, keys: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """The keys among `keys` that have no record yet, in order, without duplicates."""
        return [key for key in dict.fromkeys(tuple(k) for k in keys) if key not in self._records]

    def add(self, records: Iterable[ECRRecord]) -> int:
        """Append records whose key is new; flushed and fsynced before returning. Returns how many were written."""
        fresh = []
        for record in records:
            if record.side not in SIDES:
                raise ValueError(f"record {record.key}: side must be one of {list(SIDES)}")
            if record.key not in self._records:
                self._records[record.key] = record
                fresh.append(record)
        if fresh:
            self.path.mkdir(parents=True, exist_ok=True)
            _cut_torn_tail(self.part_path)
            with open(self.part_path, "a", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in fresh))
                handle.flush()
                os.fsync(handle.fileno())
        return len(fresh)


def prompt_hash(prompt: str) -> str:
    """A short, stable hash of the reasoner prompt text (media placeholders included)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]

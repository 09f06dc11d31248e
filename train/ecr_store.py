"""The ECR store: embedding-centric reasoning traces on disk, one record per (dataset, row id, side).

A store is a folder of JSON-lines part files (one per writer, e.g. one per `accelerate` rank), appended as
work finishes, so a killed job loses at most the line it was writing. A writer holds `<part>.lock` (`flock`), so a
second process writing the same part fails fast instead of duplicating the work.

Reading goes through an on-disk index of the parts (`train.ecr_index`: `<store>/.index.sqlite`, SQLite in WAL mode,
shared by every process on the machine): a key's records are found in O(log n) and read by offset from their part,
so memory does not grow with the store (a 1M-trace store opens in milliseconds once indexed, in tens of MiB). A store
written without an index (older versions, or copied parts) is indexed on first open; after that only lines appended
since are read. Nothing of the write path depends on the index: parts stay the source of truth.

Provenance: a record carries `content_hash` (the row's text, instruction and media, see `content_hash`) and
`request_hash` (content, side, task type, hint, reasoner prompt and reasoner identity), so a reader can tell a
record written for another row or another request (rows inserted, a different model or task type) from a valid
one. A key may hold several records (a stale one and its regeneration): the newest record (by `created`, ties:
the first read, parts in name order) among those that match what the reader asks for wins. Records written before
these fields existed load as "unknown provenance" (accepted, with a one-time warning).

Reading never fails on a bad line (blank, garbage, NUL bytes, missing fields, a bad side): it is skipped, logged
with its file and line number, and counted in `ECRStore.bad_lines`. A complete last record without a trailing
newline is kept; an unparseable last line (a writer killed mid-line) is skipped and cut by the part's next writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .ecr_index import IndexEntry, StoreIndex

logger = logging.getLogger(__name__)

SIDES = ("query", "target")
REQUIRED_FIELDS = ("dataset", "row_id", "side", "ecr", "answer", "reasoner", "prompt_hash")
_MAX_WARNINGS_PER_PART = 5


class StaleECRError(ValueError):
    """A stored record was written for other content than the row it is looked up for."""


class StoreLockedError(RuntimeError):
    """Another process is writing the same part of the store."""


@dataclass(frozen=True, slots=True)
class ECRRecord:
    """One reasoning trace. `prompt_hash` identifies the prompt text it answered (see `prompt_hash`) and
    `prompt_set` the prompt registry it came from (`name@version`, see `prompts_tte.PromptRegistry`);
    `content_hash`, `request_hash` and `created` (unix time) are its provenance (`None` in old records); `created`
    orders records of a key and takes no part in equality."""

    dataset: str
    row_id: str
    side: str
    ecr: str
    answer: str | None
    reasoner: str
    prompt_hash: str | None
    content_hash: str | None = None
    request_hash: str | None = None
    created: float | None = field(default=None, compare=False)
    prompt_set: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dataset, self.row_id, self.side)


FIELDS = tuple(f.name for f in fields(ECRRecord))


def ecr_key(dataset: str, row_id, side: str) -> tuple[str, str, str]:
    """The store key of a row; `side` is `"query"` or `"target"`."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
    return (str(dataset), str(row_id), side)


def short_hash(value) -> str:
    """A short, stable hash of a JSON-serialisable value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def prompt_hash(prompt: str) -> str:
    """A short, stable hash of the reasoner prompt text (media placeholders included)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _media_identity(media):
    """A cheap, root-independent identity of an image or video: file name and size for paths (so a moved image
    root still matches, an inserted row or a replaced file of another size does not), pixel hash for PIL images."""
    if media is None or media == "":
        return None
    if isinstance(media, (list, tuple)):
        return [_media_identity(item) for item in media]
    if isinstance(media, (str, os.PathLike)):
        path = Path(media)
        try:
            size = path.stat().st_size if path.is_file() else sorted(p.name for p in path.iterdir())
        except OSError:
            size = None
        return [path.name, size]
    if hasattr(media, "tobytes") and hasattr(media, "size"):
        return [getattr(media, "mode", None), list(media.size), hashlib.sha256(media.tobytes()).hexdigest()[:16]]
    return repr(type(media))


def content_hash(row: Mapping) -> str:
    """A short hash of what a `TTEProcessor` row shows the reasoner: its stripped `text` and `instruction`, and the
    identity of its `image` / `video` (file name and size, see the module docstring). Training rows and ECR
    requests built from the same MMEB row hash alike, so a reader can check a record belongs to its row."""
    return short_hash({"text": (row.get("text") or "").strip(), "instruction": (row.get("instruction") or "").strip(),
                        "image": _media_identity(row.get("image")), "video": _media_identity(row.get("video"))})


def _checked_fields(line: bytes) -> dict:
    """One JSON line as a dict of valid record fields; raises `ValueError` saying what is wrong with it."""
    if not line.strip():
        raise ValueError("blank line")
    data = json.loads(line)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise ValueError(f"missing fields {missing}")
    for name in ("dataset", "row_id", "ecr", "reasoner"):
        if not isinstance(data[name], str):
            raise ValueError(f"field {name!r} must be a string, got {type(data[name]).__name__}")
    if data["side"] not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {data['side']!r}")
    for name in ("answer", "prompt_hash", "content_hash", "request_hash", "prompt_set"):
        if not isinstance(data.get(name), str | None):
            raise ValueError(f"field {name!r} must be a string or null, got {type(data[name]).__name__}")
    if not isinstance(data.get("created"), int | float | None) or isinstance(data.get("created"), bool):
        raise ValueError(f"field 'created' must be a number or null, got {type(data['created']).__name__}")
    return data


def _parse_record(line: bytes) -> ECRRecord:
    """One JSON line as a record; raises `ValueError` saying what is wrong with it."""
    data = _checked_fields(line)
    return ECRRecord(**{name: data[name] for name in FIELDS if name in data})


def _index_fields(line: bytes) -> tuple:
    """What the index keeps of a line: `(dataset, row_id, side, created, request_hash, content_hash)`."""
    data = _checked_fields(line)
    return (data["dataset"], data["row_id"], data["side"], data.get("created"), data.get("request_hash"),
            data.get("content_hash"))


def _last_line_start(handle, size: int) -> int:
    """Offset of the first byte after the last newline of a file of `size` bytes (0 when it has none)."""
    position = size
    while position > 0:
        step = min(65536, position)
        handle.seek(position - step)
        chunk = handle.read(step)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return position - step + newline + 1
        position -= step
    return 0


def _end_with_newline(path: Path) -> None:
    """Before appending: end a complete last record with its newline, or cut an unparseable (torn) last line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = _last_line_start(handle, size)
        handle.seek(start)
        tail = handle.read()
        if not tail:
            return
        try:
            _parse_record(tail)
        except ValueError:
            handle.truncate(start)
            logger.warning(f"{path}: cut a torn last line ({len(tail)} bytes) before appending")
            return
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n")


def _newest(records: list[ECRRecord]) -> ECRRecord:
    """The record with the latest `created` time; ties (e.g. old records without one) go to the first read."""
    best = records[0]
    for record in records[1:]:
        if (record.created or 0.0) > (best.created or 0.0):
            best = record
    return best


class ECRStore:
    r"""
    A folder of ECR records; `part` names this writer's file (e.g. `"rank0"`).

    Records are read through the store's on-disk index (`train.ecr_index`, `<store>/.index.sqlite`, shared by every
    process on the machine), so opening a store and looking keys up takes memory that does not grow with the store;
    `reload` indexes what writers appended since (only the new lines). Iteration goes in key-hash order.

    Attributes:
        bad_lines (`int`): lines skipped by the last `reload` (each logged with its file and line number);
            `bad_line_locations` lists them as `(path, line_number, reason)`.
    """

    def __init__(self, path: str | os.PathLike, part: str = "part0"):
        self.path = Path(path)
        self.part = part
        self.part_path = self.path / f"{part}.jsonl"
        self.lock_path = self.path / f"{part}.lock"
        self._index: StoreIndex | None = None
        self._lock_handle = None
        self._warned_unknown = False
        self.reloaded_on_lock = False
        self.reload()

    def __getstate__(self) -> dict:  # e.g. a collator sent to DataLoader workers: no connection, no lock
        return {**self.__dict__, "_index": None, "_lock_handle": None}

    def close(self) -> None:
        """Close the index connection and part files (reopened on the next read)."""
        if self._index is not None:
            self._index.close()
            self._index = None

    # ------------------------------------------------------------------------------------------------ reading
    def _idx(self, refresh: bool = False) -> StoreIndex | None:
        """The index (`None` while the folder does not exist), opened on first use (and then refreshed)."""
        if self._index is None and self.path.is_dir():
            self._index = StoreIndex(self.path, _index_fields)
            refresh = True
        if refresh and self._index is not None:
            self._index.refresh()
        return self._index

    def reload(self) -> None:
        """Index what writers appended to any part since (only new lines are read) and report bad lines."""
        index = self._idx(refresh=True)
        self.bad_line_locations = index.bad_lines() if index is not None else []
        self.bad_lines = len(self.bad_line_locations)
        per_part: dict[str, int] = {}
        for where, number, reason in self.bad_line_locations:
            per_part[where] = per_part.get(where, 0) + 1
            if per_part[where] <= _MAX_WARNINGS_PER_PART:
                logger.warning(f"{where}:{number}: skipped a bad ECR record line: {reason}")
        for where, bad in per_part.items():
            if bad > _MAX_WARNINGS_PER_PART:
                logger.warning(f"{where}: {bad} bad ECR record lines skipped in all (see "
                               "`ECRStore.bad_line_locations`)")
        self._read_size = self._part_size()

    def _part_size(self) -> int | None:
        try:
            return self.part_path.stat().st_size
        except OSError:
            return None

    def _entries(self, key: tuple[str, str, str]) -> list[IndexEntry]:
        index = self._idx()
        return index.entries(key) if index is not None else []

    def _read(self, key: tuple[str, str, str], entry: IndexEntry) -> ECRRecord:
        """The record an index entry points to (read by offset from its part; it was validated when indexed)."""
        try:
            data = json.loads(self._index.read(entry))
            record = ECRRecord(data["dataset"], data["row_id"], data["side"], data["ecr"], data["answer"],
                               data["reasoner"], data["prompt_hash"], data.get("content_hash"),
                               data.get("request_hash"), data.get("created"), data.get("prompt_set"))
        except (ValueError, TypeError, KeyError):
            record = None
        if record is None or record.key != key:  # a part edited in place, not appended to: index it again
            self.reload()
            raise RuntimeError(f"ECR store {self.path}: {entry.part} changed under its index (byte {entry.offset} "
                               f"no longer holds the record of {key}); it was indexed again, retry the lookup")
        return record

    def __len__(self) -> int:
        index = self._idx()
        return index.key_count() if index is not None else 0

    def __contains__(self, key) -> bool:
        key = tuple(key)
        if len(key) != 3 or not all(isinstance(part, str) for part in key) or key[2] not in SIDES:
            return False
        return bool(self._entries(key))

    def __iter__(self) -> Iterator[ECRRecord]:
        """One record per key: the newest (keys in key-hash order, records read from the parts as they come)."""
        index = self._idx()
        if index is None:
            return iter(())
        return (self._read(key, _newest(entries)) for key, entries in index.groups())

    def records(self, dataset: str, row_id, side: str) -> list[ECRRecord]:
        """Every record of a key, in read order (parts in name order, then line order)."""
        key = ecr_key(dataset, row_id, side)
        return [self._read(key, entry) for entry in self._entries(key)]

    def _warn_unknown_provenance(self) -> None:
        if not self._warned_unknown:
            self._warned_unknown = True
            logger.warning(f"ECR store {self.path} has records without provenance hashes (written by an older "
                           "version): they are used unchecked; regenerate them to have them checked")

    def get(self, dataset: str, row_id, side: str, *, request_hash: str | None = None,
            content: Mapping | None = None) -> ECRRecord | None:
        r"""
        The record of a key: the newest one among those that match `request_hash` and `content` when given.

        Args:
            dataset (`str`), row_id (`str` or `int`), side (`str`): the key.
            request_hash (`str`, *optional*): only a record written for this request (see
                `train.reasoner_backends.request_hash`) counts; `None` is returned when the key has only records of
                other requests (stale ones). Records of unknown provenance count, with a one-time warning.
            content (`dict`, *optional*): the `TTEProcessor` row the record is for (`text`, `instruction`, `image`,
                `video`): records of other content are refused (`StaleECRError` when no record matches).

        Raises:
            `StaleECRError`: `content` is given and the key only holds records written for other content.
        """
        key = ecr_key(dataset, row_id, side)
        entries = self._entries(key)
        if not entries:
            return None
        if request_hash is not None:
            entries = self._matching(entries, "request_hash", request_hash)
            if not entries:
                return None
        if content is not None:
            expected = content_hash(content)
            matching = self._matching(entries, "content_hash", expected)
            if not matching:
                raise StaleECRError(
                    f"ECR store {self.path}: the {side} ECR of {dataset}/{row_id} was written for other content "
                    f"(content hash {entries[-1].content_hash}, this row's is {expected}): rows were added, removed, "
                    "reordered or edited since it was generated; regenerate the ECR (python -m train.generate_ecr)")
            entries = matching
        return self._read(key, _newest(entries))

    def _matching(self, entries: list, name: str, value: str) -> list:
        """Entries whose `name` equals `value`, else those of unknown provenance (`None`, with a warning)."""
        matching = [entry for entry in entries if getattr(entry, name) == value]
        if matching:
            return matching
        unknown = [entry for entry in entries if getattr(entry, name) is None]
        if unknown:
            self._warn_unknown_provenance()
        return unknown

    def missing(self, keys: Iterable[tuple[str, str, str]],
                request_hashes: Mapping[tuple[str, str, str], str] | None = None,
                chunk_size: int = 20_000) -> list[tuple[str, str, str]]:
        """The keys among `keys` that have no record yet (or, with `request_hashes`, no record of that request),
        in order, without duplicates. The index is asked `chunk_size` keys at a time; nothing else is loaded."""
        keys = list(dict.fromkeys(tuple(k) for k in keys))
        index, missing = self._idx(), []
        for start in range(0, len(keys), chunk_size):
            chunk = keys[start:start + chunk_size]
            found = index.request_hashes_many(chunk) if index is not None else {}
            for key in chunk:
                stored = found.get(key)
                wanted = request_hashes.get(key) if request_hashes is not None and stored else None
                if wanted is not None and wanted not in stored:
                    if None in stored:  # records of unknown provenance count, with a warning
                        self._warn_unknown_provenance()
                    else:
                        stored = None
                if not stored:
                    missing.append(key)
        return missing

    # ------------------------------------------------------------------------------------------------ writing
    def lock(self) -> bool:
        """Take this part's writer lock (`<part>.lock`, non-blocking `flock`), held until `unlock`. Re-reads the
        store when the part changed since it was read; returns (and sets `reloaded_on_lock` to) whether it did.

        Raises:
            `StoreLockedError`: another process writes this part. `OSError`: the folder is not writable.
        """
        self.reloaded_on_lock = False
        if self._lock_handle is not None:
            return False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.lock_path, "a+", encoding="utf-8")
            if self.part_path.exists() and not os.access(self.part_path, os.W_OK):
                handle.close()
                raise PermissionError(f"[Errno 13] Permission denied: '{self.part_path}'")
        except OSError as error:
            raise type(error)(f"The ECR store {self.path} is not writable (part {self.part!r}): {error}") from error
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreLockedError(
                f"ECR store part {self.part_path} is being written by another process (pid {holder}, lock "
                f"{self.lock_path}); wait for it, or give this writer another part name (ECRStore(path, "
                "part=...), `--part` of train.generate_ecr)") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle
        if self._part_size() != self._read_size:  # written by another process since we read it
            self.reload()
            self.reloaded_on_lock = True
        return self.reloaded_on_lock

    def unlock(self) -> None:
        """Release the writer lock (a no-op when not held)."""
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    @contextlib.contextmanager
    def locked(self):
        """Hold the writer lock inside the block (released at its end unless it was already held)."""
        held = self._lock_handle is not None
        self.lock()
        try:
            yield self
        finally:
            if not held:
                self.unlock()

    def add(self, records: Iterable[ECRRecord]) -> int:
        """Append records unless their key already has a record of the same request (`request_hash`); flushed and
        fsynced, under the part's writer lock, before returning. Returns how many were written."""
        records = list(records)
        for record in records:
            if record.side not in SIDES:
                raise ValueError(f"record {record.key}: side must be one of {list(SIDES)}")
        index = self._idx()
        stored = index.request_hashes_many(list(dict.fromkeys(r.key for r in records))) if index is not None else {}
        fresh, seen, now = [], set(), time.time()
        for record in records:
            done = set(stored.get(record.key, ()))
            if record.request_hash in done or (record.key, record.request_hash) in seen:
                continue
            seen.add((record.key, record.request_hash))
            fresh.append(record if record.created is not None else replace(record, created=now))
        if not fresh:
            return 0
        with self.locked():
            _end_with_newline(self.part_path)
            with open(self.part_path, "a", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in fresh))
                handle.flush()
                os.fsync(handle.fileno())
            self._read_size = self._part_size()
            self._idx().refresh_part(self.part_path)  # what was just written is readable at once
        return len(fresh)


__all__ = ["ECRRecord", "ECRStore", "StaleECRError", "StoreLockedError", "content_hash", "ecr_key", "prompt_hash",
           "short_hash"]

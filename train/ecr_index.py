"""An on-disk index of an ECR store's JSON-lines parts: one SQLite file per store, shared by every process.

The index maps a key `(dataset, row id, side)` to where each of its records lies (part file, byte offset, length)
and to the provenance fields a reader filters on (`created`, `request_hash`, `content_hash`); the ECR text stays in
the parts and is read by `pread` when asked for (without read-ahead: lookups are random). Lookups go through a
B-tree on `(dataset, side, row id)`, so memory does not grow with the store: SQLite's page cache is capped
(`CACHE_KIB`) and no record is held in Python. Parts are written, and jobs ask, in about key order, so indexing and
`missing`-style bulk queries walk the B-tree in order. A reader keeps one read snapshot for `SNAPSHOT_S` seconds
(renewed on the next lookup after that, and at every refresh), which is what makes single lookups cheap.

Indexing is incremental and safe under a kill: per part the index remembers how many bytes it has read (and a hash
of the part's first bytes, to notice a part replaced by another file); a refresh reads only the complete lines
after that offset (a torn tail is left for later), in batches of `BATCH_LINES` lines, each batch one `BEGIN
IMMEDIATE` transaction that commits its rows together with the new offset, so a killed indexer loses and
duplicates nothing. Several processes may refresh at once: the one holding the write lock indexes a batch, the
others wait (busy timeout) and find it done. Bad lines are kept in the index with their line numbers and reasons,
so a reopen reports them without reading the part again.

Where the index cannot be written (a read-only store folder), a complete index already there is opened read-only
(`immutable`); otherwise a private index in the temp folder (and, failing that, in memory) is built, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

INDEX_NAME = ".index.sqlite"
SCHEMA_VERSION = "2"
BATCH_LINES = 20_000  # lines per indexing transaction
BATCH_BYTES = 16 * 2**20  # bytes read per indexing transaction (a longer single line is read whole)
CACHE_KIB = 16 * 1024  # SQLite page cache per connection
BUSY_TIMEOUT_S = 300.0  # how long to wait for another process's indexing transaction
SNAPSHOT_S = 0.5  # a reader sees other processes' commits at most this late (and at once after `refresh`)
HEAD_BYTES = 4096  # a part's first bytes, hashed to notice a replaced part
_CHUNK = 900  # keys per IN (...) query
_MAX_OPEN_PARTS = 64
_SIDES = ("query", "target")
_INHERITED: list = []  # connections opened before a fork: never closed (or used) in the child

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parts (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, indexed_bytes INTEGER NOT NULL,
    lines INTEGER NOT NULL, open_tail INTEGER NOT NULL, head_len INTEGER NOT NULL, head_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (id INTEGER PRIMARY KEY, dataset TEXT NOT NULL, row_id TEXT NOT NULL,
    side INTEGER NOT NULL, part INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, created REAL,
    request_hash TEXT, content_hash TEXT);
CREATE INDEX IF NOT EXISTS records_by_key ON records (dataset, side, row_id);
CREATE TABLE IF NOT EXISTS bad_lines (part INTEGER NOT NULL, line INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (part, line)) WITHOUT ROWID;
"""
_ONE_KEY = ("SELECT part, offset, length, created, request_hash, content_hash FROM records WHERE dataset = ? AND "
            "side = ? AND row_id = ?")
_ENTRY_COLUMNS = "dataset, row_id, side, part, offset, length, created, request_hash, content_hash"

Key = tuple[str, str, str]
ParseFn = Callable[[bytes], tuple]  # line -> (dataset, row_id, side, created, request_hash, content_hash)


class IndexEntry(NamedTuple):
    """Where one record lies and the provenance fields readers filter on (no ECR text)."""

    part: str
    offset: int
    length: int
    created: float | None
    request_hash: str | None
    content_hash: str | None


def _head_hash(fd: int, length: int) -> str:
    return hashlib.sha256(os.pread(fd, length, 0)).hexdigest()[:16]


def _private_location(folder: Path) -> Path:
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tte-ecr-index-{os.getuid()}-{digest}.sqlite"


class StoreIndex:
    r"""
    The SQLite index of one store folder.

    Args:
        folder (`Path`): the store folder (must exist).
        parse (`Callable`): a part line (without its newline) -> `(dataset, row_id, side, created, request_hash,
            content_hash)`; raises `ValueError` saying what is wrong with a bad line.

    Attributes:
        location (`str`): the index file in use (`":memory:"` for the last fallback); `read_only` (`bool`): an
            immutable index that cannot be refreshed.
    """

    def __init__(self, folder: Path, parse: ParseFn):
        self.folder, self.parse = Path(folder), parse
        self._lock = threading.RLock()
        self._connect()

    # ------------------------------------------------------------------------------------------- connecting
    def _connect(self) -> None:
        self._open_some_location()
        self._cursor = self.db.cursor()

    def _open_some_location(self) -> None:
        self._pid, self._fds, self._part_names, self._snapshot_since = os.getpid(), {}, {}, None
        self._writing = False
        self.read_only = False
        primary = self.folder / INDEX_NAME
        private = _private_location(self.folder) if self._disk_parts() else ":memory:"  # nothing to keep
        for location in (primary, None, private, ":memory:"):
            if location is None:
                self.db = self._open_immutable(primary)
                if self.db is not None:
                    self.location, self.read_only = str(primary), True
                    logger.warning(f"ECR store {self.folder} is read-only: using its complete index read-only")
                    return
                continue
            try:
                self.db = self._open_writable(location)
            except sqlite3.Error as error:
                if location == ":memory:":
                    raise
                if location == primary:
                    logger.warning(f"cannot write the ECR store index {primary} ({error}): indexing it privately")
                continue
            self.location = str(location)
            if location != primary:
                logger.warning(f"ECR store {self.folder}: using the private index {location}")
            return

    def _open_writable(self, location) -> sqlite3.Connection:
        db = sqlite3.connect(str(location), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if location != ":memory:":
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            with _transaction(db):
                if db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone():
                    schema = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
                    if schema is None or schema[0] != SCHEMA_VERSION:
                        for table in ("meta", "parts", "records", "bad_lines"):
                            db.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in filter(str.strip, _SCHEMA.split(";")):  # (executescript would commit)
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('version', 0), ('keys', 0)",
                           (SCHEMA_VERSION,))
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _open_immutable(self, primary: Path) -> sqlite3.Connection | None:
        """A complete index in a folder this process cannot write, or `None`."""
        wal = primary.with_name(primary.name + "-wal")
        if not primary.is_file() or (wal.exists() and wal.stat().st_size > 0):
            return None
        try:
            db = sqlite3.connect(f"file:{urllib.parse.quote(str(primary))}?immutable=1", uri=True,
                                 isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            schema = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        except sqlite3.Error:
            return None
        self.db = db
        if schema is None or schema[0] != SCHEMA_VERSION or not self._complete():
            db.close()
            return None
        return db

    def _check_process(self) -> None:
        """After a fork (DataLoader workers), open this process's own connection; the parent's is left alone."""
        if os.getpid() != self._pid:
            _INHERITED.append(self.db)
            self._connect()
            if self.location == ":memory:":
                self.refresh()

    def _reading(self) -> None:
        """Before a read: this process's connection, inside a read snapshot renewed every `SNAPSHOT_S` seconds (one
        read transaction for many lookups: beginning and ending one per query costs WAL locking each time)."""
        self._check_process()
        if self._writing:
            return
        now = time.monotonic()
        if self._snapshot_since is None or now - self._snapshot_since > SNAPSHOT_S:
            self._end_snapshot()
            self.db.execute("BEGIN")
            self._snapshot_since = now

    @contextlib.contextmanager
    def _write(self):
        """One `BEGIN IMMEDIATE` write transaction (the read snapshot ended first; none is begun inside)."""
        self._end_snapshot()
        self._writing = True
        try:
            with _transaction(self.db):
                yield
        finally:
            self._writing = False

    def _end_snapshot(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self._snapshot_since = None

    def close(self) -> None:
        """Close the connection and the part files."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}
            if os.getpid() == self._pid:
                self._end_snapshot()
                self.db.close()

    # ------------------------------------------------------------------------------------------- indexing
    def _disk_parts(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def _complete(self) -> bool:
        """Whether every part on disk is indexed to its end (and is the file that was indexed)."""
        rows = {name: (size, head_len, head) for name, size, head_len, head in
                self.db.execute("SELECT name, indexed_bytes, head_len, head_hash FROM parts")}
        disk = self._disk_parts()
        if set(rows) != {p.name for p in disk}:
            return False
        for path in disk:
            size, head_len, head = rows[path.name]
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size != size or _head_hash(handle.fileno(), head_len) != head:
                    return False
        return True

    def refresh(self) -> None:
        """Index the new complete lines of every part (parts in name order) and forget parts that are gone."""
        with self._lock:
            self._check_process()
            self._end_snapshot()
            if self.read_only:
                return
            disk = self._disk_parts()
            names = {p.name for p in disk}
            gone = [(i, n) for i, n in self.db.execute("SELECT id, name FROM parts") if n not in names]
            for part_id, name in gone:
                with self._write():
                    self._forget(part_id, delete_part=True)
                logger.info(f"ECR store index: part {name} is gone from {self.folder}; forgot its records")
            for path in disk:
                self.refresh_part(path)
            self._part_names = dict(self.db.execute("SELECT id, name FROM parts"))

    def refresh_part(self, path: Path) -> None:
        """Index the new complete lines of one part file, one transaction per batch."""
        with self._lock:
            self._check_process()
            self._end_snapshot()
            if self.read_only:
                return
            try:
                handle = open(path, "rb")
            except FileNotFoundError:
                return
            with handle:
                while self._index_batch(path.name, handle.fileno()):
                    pass

    def _part_row(self, name: str):
        return self.db.execute("SELECT id, indexed_bytes, lines, open_tail, head_len, head_hash FROM parts "
                               "WHERE name = ?", (name,)).fetchone()

    def _index_batch(self, name: str, fd: int) -> bool:
        """Index one batch of a part's new lines; returns whether there may be more to index."""
        row = self._part_row(name)
        size = os.fstat(fd).st_size
        if row is not None and row[1] == size and (row[4] == 0 or _head_hash(fd, row[4]) == row[5]):
            return False  # up to date (checked without the write lock)
        with self._write():
            row = self._part_row(name)  # again, under the write lock: another process may have indexed it
            size = os.fstat(fd).st_size
            if row is None:
                self.db.execute("INSERT INTO parts (name, indexed_bytes, lines, open_tail, head_len, head_hash) "
                                "VALUES (?, 0, 0, 0, 0, ?)", (name, _head_hash(fd, 0)))
                row = self._part_row(name)
            part_id, start, lines, open_tail, head_len, head = row
            if size < start or _head_hash(fd, head_len) != head:
                logger.warning(f"ECR store index: part {name} was replaced or shortened; indexing it again")
                self._forget(part_id)
                return True
            if open_tail and start < size and os.pread(fd, 1, start) != b"\n":
                logger.warning(f"ECR store index: part {name} changed after its last line; indexing it again")
                self._forget(part_id)
                return True
            if open_tail and start < size:
                start, open_tail = start + 1, 0  # the newline a writer put after a complete last record
            end, lines, open_tail = self._index_lines(part_id, name, fd, start, size, lines, open_tail)
            if end == row[1] and open_tail == row[3]:
                return False  # nothing complete after the offset (a torn tail, maybe being written)
            head_len = min(HEAD_BYTES, end)
            self.db.execute("UPDATE parts SET indexed_bytes = ?, lines = ?, open_tail = ?, head_len = ?, "
                            "head_hash = ? WHERE id = ?", (end, lines, open_tail, head_len,
                                                           _head_hash(fd, head_len), part_id))
            self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")
            return end < size

    def _read_lines(self, fd: int, start: int, size: int) -> tuple[bytes, bool]:
        """Up to `BATCH_BYTES` from `start` (more when a single line is longer), and whether it reaches `size`."""
        want = min(BATCH_BYTES, size - start)
        data = os.pread(fd, want, start)
        while b"\n" not in data and start + len(data) < size:
            more = os.pread(fd, min(BATCH_BYTES, size - start - len(data)), start + len(data))
            if not more:
                break
            data += more
        return data, start + len(data) >= size

    def _index_lines(self, part_id: int, name: str, fd: int, start: int, size: int, lines: int,
                     open_tail: int) -> tuple[int, int, int]:
        """Parse and insert a batch of lines from `start`; returns the new offset, line count and open-tail flag."""
        data, at_end = self._read_lines(fd, start, size)
        rows, bad, position, count = [], [], 0, 0
        while count < BATCH_LINES:
            newline = data.find(b"\n", position)
            if newline < 0:
                break
            lines, count = lines + 1, count + 1
            self._add_line(data[position:newline], part_id, start + position, lines, rows, bad)
            position = newline + 1
        offset, tail = start + position, data[position:] if count < BATCH_LINES else b""
        # `tail`: after the last newline: empty, a torn line, or a complete record without its newline
        if tail and at_end and offset + len(tail) == size:
            try:
                self.parse(tail)
            except ValueError:
                logger.info(f"{self.folder / name}:{lines + 1}: skipped a torn last line (a writer killed or still "
                            "writing mid-line)")
            else:
                lines += 1
                self._add_line(tail, part_id, offset, lines, rows, bad)
                offset, open_tail = offset + len(tail), 1
        self._insert(rows)
        self.db.executemany("INSERT OR REPLACE INTO bad_lines VALUES (?, ?, ?)", bad)
        return offset, lines, open_tail

    def _add_line(self, line: bytes, part_id: int, offset: int, number: int, rows: list, bad: list) -> None:
        try:
            dataset, row_id, side, created, request, content = self.parse(line)
        except ValueError as error:
            bad.append((part_id, number, str(error)))
            return
        rows.append((dataset, row_id, _SIDES.index(side), part_id, offset, len(line), created, request, content))

    def _insert(self, rows: list[tuple]) -> None:
        """Insert records and count the keys not seen before (`meta.keys`), in the open transaction."""
        keys = {(r[0], r[1], _SIDES[r[2]]) for r in rows}
        new = len(keys) - len(self._request_hashes(list(keys)))
        self.db.executemany(f"INSERT INTO records ({_ENTRY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.execute("UPDATE meta SET value = value + ? WHERE name = 'keys'", (new,))

    def _forget(self, part_id: int, delete_part: bool = False) -> None:
        """Drop a part's records and bad lines (in the open transaction) and recount the keys."""
        self.db.execute("DELETE FROM records WHERE part = ?", (part_id,))
        self.db.execute("DELETE FROM bad_lines WHERE part = ?", (part_id,))
        if delete_part:
            self.db.execute("DELETE FROM parts WHERE id = ?", (part_id,))
        else:
            self.db.execute("UPDATE parts SET indexed_bytes = 0, lines = 0, open_tail = 0, head_len = 0, "
                            "head_hash = ? WHERE id = ?", (hashlib.sha256(b"").hexdigest()[:16], part_id))
        keys = self.db.execute("SELECT COUNT(*) FROM (SELECT DISTINCT dataset, side, row_id FROM records)")
        self.db.execute("UPDATE meta SET value = ? WHERE name = 'keys'", (keys.fetchone()[0],))
        self.db.execute("UPDATE meta SET value = value + 1 WHERE name = 'version'")

    # ------------------------------------------------------------------------------------------- reading
    def _name(self, part_id: int) -> str:
        if part_id not in self._part_names:
            self._part_names = dict(self.db.execute("SELECT id, name FROM parts"))
        return self._part_names[part_id]

    def _group(self, rows: Iterable[tuple]) -> dict[Key, list[IndexEntry]]:
        """Rows by key, each key's entries in read order (parts in name order, then offset)."""
        groups: dict[Key, list[IndexEntry]] = {}
        for dataset, row_id, side, part, offset, length, created, request, content in rows:
            entry = IndexEntry(self._name(part), offset, length, created, request, content)
            groups.setdefault((dataset, row_id, _SIDES[side]), []).append(entry)
        for entries in groups.values():
            if len(entries) > 1:
                entries.sort(key=lambda e: (e.part, e.offset))
        return groups

    def _request_hashes(self, keys: list[Key]) -> dict[Key, list[str | None]]:
        """`request_hashes_many` inside whatever transaction is open (indexing uses it mid-transaction): keys
        grouped by dataset and side, `_CHUNK` row ids per `IN (...)` query (an index range walk, in key order)."""
        by_group: dict[tuple[str, int], list[str]] = {}
        for dataset, row_id, side in keys:
            by_group.setdefault((dataset, _SIDES.index(side)), []).append(row_id)
        found: dict[Key, list[str | None]] = {}
        for (dataset, side), row_ids in by_group.items():
            for start in range(0, len(row_ids), _CHUNK):
                chunk = row_ids[start:start + _CHUNK]
                query = (f"SELECT row_id, request_hash FROM records WHERE dataset = ? AND side = ? AND row_id IN "
                         f"({', '.join('?' * len(chunk))})")
                for row_id, request in self.db.execute(query, (dataset, side, *chunk)):
                    found.setdefault((dataset, row_id, _SIDES[side]), []).append(request)
        return found

    def entries(self, key: Key) -> list[IndexEntry]:
        """The entries of one key, in read order (empty when it has none)."""
        with self._lock:
            self._reading()
            dataset, row_id, side = key
            rows = self._cursor.execute(_ONE_KEY, (dataset, _SIDES.index(side), row_id)).fetchall()
            entries = [IndexEntry(self._name(r[0]), *r[1:]) for r in rows]
            if len(entries) > 1:
                entries.sort(key=lambda e: (e.part, e.offset))
            return entries

    def request_hashes_many(self, keys: list[Key]) -> dict[Key, list[str | None]]:
        """The `request_hash` of every record of each of `keys` that has any."""
        with self._lock:
            self._reading()
            return self._request_hashes(keys)

    def groups(self, page: int = 2000) -> Iterator[tuple[Key, list[IndexEntry]]]:
        """Every key with its entries, in key order (dataset, side, row id), `page` rows per query (no cursor stays
        open between them)."""
        last = None
        while True:
            with self._lock:
                self._reading()
                where = "WHERE (dataset, side, row_id) > (?, ?, ?)" if last is not None else ""
                rows = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM records {where} ORDER BY dataset, side, row_id "
                                       "LIMIT ?", (*(last or ()), page)).fetchall()
                if not rows:
                    return
                grouped = self._group(rows)
                if len(rows) == page:  # the last key may go on past this page: read all of its entries
                    dataset, row_id, side = rows[-1][:3]
                    grouped[(dataset, row_id, _SIDES[side])] = self.entries((dataset, row_id, _SIDES[side]))
                last = (rows[-1][0], rows[-1][2], rows[-1][1])
            yield from grouped.items()

    def key_count(self) -> int:
        with self._lock:
            self._reading()
            return self.db.execute("SELECT value FROM meta WHERE name = 'keys'").fetchone()[0]

    def bad_lines(self) -> list[tuple[str, int, str]]:
        """`(part path, line number, reason)` of every bad line, parts in name order, then line order."""
        with self._lock:
            self._reading()
            rows = self.db.execute("SELECT parts.name, line, reason FROM bad_lines JOIN parts ON parts.id = "
                                   "bad_lines.part ORDER BY parts.name, line").fetchall()
            return [(str(self.folder / name), line, reason) for name, line, reason in rows]

    def read(self, entry: IndexEntry) -> bytes:
        """The bytes of an entry's line (without its newline)."""
        with self._lock:
            self._check_process()
            fd = self._fds.get(entry.part)
            if fd is None:
                if len(self._fds) >= _MAX_OPEN_PARTS:
                    for old in self._fds.values():
                        os.close(old)
                    self._fds = {}
                fd = self._fds[entry.part] = os.open(self.folder / entry.part, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):  # lookups are random: no read-ahead on a page cache miss
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            return os.pread(fd, entry.length, entry.offset)


class _transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT` (or `ROLLBACK` on an error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


__all__ = ["INDEX_NAME", "IndexEntry", "StoreIndex"]

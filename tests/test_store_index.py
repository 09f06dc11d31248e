"""The ECR store's on-disk index (`train.ecr_index`): a store written without one is indexed on first open, reopens
read nothing again, new lines are indexed incrementally (torn tails later), a SIGKILL mid-indexing loses and
duplicates nothing, two writer processes and a reader work at once, read-only folders still read, forked and
pickled stores work, and opening a store costs far less memory than the dict reader did (real processes)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from eval.bench_scale import key_of, run_readers, write_store
from train.ecr_index import INDEX_NAME, _private_location
from train.ecr_store import ECRRecord, ECRStore, prompt_hash

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def record(row_id, side="query", ecr=None, **provenance) -> ECRRecord:
    return ECRRecord("ds", str(row_id), side, ecr or f"<think>{row_id}</think> Answer: b", "b", "teacher",
                     prompt_hash(f"prompt {row_id}"), **provenance)


def line(rec: ECRRecord) -> str:
    return json.dumps(asdict(rec)) + "\n"


def index_state(folder: Path) -> dict:
    """What the index file holds, read directly: version, records, parts' indexed bytes."""
    db = sqlite3.connect(folder / INDEX_NAME)
    try:
        return {"version": db.execute("SELECT value FROM meta WHERE name = 'version'").fetchone()[0],
                "rows": db.execute("SELECT COUNT(*) FROM records").fetchone()[0],
                "parts": dict(db.execute("SELECT name, indexed_bytes FROM parts"))}
    finally:
        db.close()


def test_a_store_written_without_index_is_indexed_once_and_reopened_without_reading_it(tmp_path, caplog):
    part = tmp_path / "rank0.jsonl"
    part.write_text(line(record(0)) + "garbage\n" + line(record(1)) + line(record(0, ecr="again", created=5.0)))
    (tmp_path / "rank1.jsonl").write_text(line(record(2, side="target")))
    assert not (tmp_path / INDEX_NAME).exists()  # today's format: parts only
    first = ECRStore(tmp_path)
    assert (tmp_path / INDEX_NAME).exists() and len(first) == 3
    assert [r.ecr for r in first.records("ds", 0, "query")] == ["<think>0</think> Answer: b", "again"]
    assert first.get("ds", 0, "query").ecr == "again" and first.bad_line_locations == [(str(part), 2, first.
                                                                                        bad_line_locations[0][2])]
    state = index_state(tmp_path)
    assert state["rows"] == 4 and state["parts"] == {"rank0.jsonl": part.stat().st_size,
                                                     "rank1.jsonl": (tmp_path / "rank1.jsonl").stat().st_size}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="train.ecr_store"):
        again = ECRStore(tmp_path)
    assert index_state(tmp_path) == state  # nothing indexed again
    assert again.bad_lines == 1 and again.bad_line_locations == first.bad_line_locations  # still reported
    assert f"{part}:2: skipped a bad ECR record line" in caplog.text
    assert {r.key: r.ecr for r in again} == {("ds", "0", "query"): "again", ("ds", "1", "query"): record(1).ecr,
                                             ("ds", "2", "target"): record(2).ecr}


def test_new_lines_are_indexed_incrementally_and_a_torn_tail_once_it_is_complete(tmp_path):
    store = ECRStore(tmp_path, part="rank0")
    store.add([record(i) for i in range(3)])
    part = store.part_path
    before = index_state(tmp_path)
    text = line(record(3))
    with open(part, "a") as handle:  # another writer, mid-line
        handle.write("\n" + text[:20])  # a blank line (bad, line 4), then half a record
    store.reload()
    assert ("ds", "3", "query") not in store and store.bad_line_locations == [(str(part), 4, "blank line")]
    with open(part, "a") as handle:
        handle.write(text[20:])  # the writer finishes the line
    store.reload()
    assert store.get("ds", 3, "query").ecr == record(3).ecr and store.bad_lines == 1
    after = index_state(tmp_path)
    assert after["rows"] == before["rows"] + 1 and after["parts"]["rank0.jsonl"] == part.stat().st_size
    assert after["version"] - before["version"] == 2  # two refreshes, each one small batch: nothing re-read
    assert ECRStore(tmp_path).missing([("ds", str(i), "query") for i in range(5)]) == [("ds", "4", "query")]


def test_a_replaced_part_is_indexed_again_and_a_removed_one_forgotten(tmp_path):
    (tmp_path / "rank0.jsonl").write_text(line(record(0)) + line(record(1)))
    (tmp_path / "rank1.jsonl").write_text(line(record(2)))
    assert len(ECRStore(tmp_path)) == 3
    (tmp_path / "rank0.jsonl").write_text(line(record(7, ecr="x" * 200)))  # compacted / replaced: other content
    (tmp_path / "rank1.jsonl").unlink()
    store = ECRStore(tmp_path)
    assert len(store) == 1 and store.get("ds", 7, "query").ecr == "x" * 200 and ("ds", "0", "query") not in store
    assert index_state(tmp_path)["rows"] == 1


def test_missing_in_chunks_equals_the_per_key_answer(tmp_path):
    store = ECRStore(tmp_path)
    store.add([record(i, request_hash=f"h{i}") for i in range(0, 40, 2)] + [record(99)])  # 99: unknown provenance
    keys = [("ds", str(i), "query") for i in list(range(45)) + [99, 3, 99]]
    hashes = {key: f"h{key[1]}" for key in keys} | {("ds", "4", "query"): "other"}
    expected = list(dict.fromkeys(k for k in keys if store.get(*k, request_hash=hashes[k]) is None))
    assert store.missing(keys, hashes, chunk_size=7) == expected
    assert ("ds", "4", "query") in expected and ("ds", "99", "query") not in expected
    assert store.missing(keys, chunk_size=5) == list(dict.fromkeys(k for k in keys if k not in store))


KILL_CHILD = """
import sys
import train.ecr_index as index
index.BATCH_LINES = 500  # many small transactions, so the kill lands between and inside them
from train.ecr_store import ECRStore
print("indexing", flush=True)
ECRStore(sys.argv[1])
print("finished", flush=True)
"""


def test_sigkill_mid_indexing_then_reopen_loses_and_duplicates_nothing(tmp_path):
    records = 60_000
    write_store(tmp_path, records, parts=1, ecr_bytes=200, seed=0)
    size = (tmp_path / "rank0.jsonl").stat().st_size
    child = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(tmp_path)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "indexing"
        indexed, deadline = 0, time.monotonic() + 120
        while not 0 < indexed < size // 2 and time.monotonic() < deadline and child.poll() is None:
            try:
                if (tmp_path / INDEX_NAME).exists():
                    indexed = index_state(tmp_path)["parts"].get("rank0.jsonl", 0)
            except sqlite3.Error:  # the index file is being created
                pass
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL and 0 < indexed < size // 2, (child.returncode, indexed, size)
    assert index_state(tmp_path)["parts"]["rank0.jsonl"] < size  # the kill left the index part-way
    store = ECRStore(tmp_path)
    assert index_state(tmp_path)["rows"] == records and len(store) == records  # nothing lost, nothing twice
    assert store.missing([key_of(i) for i in range(records + 3)]) == [key_of(i) for i in range(records, records + 3)]
    for i in (0, records // 3, records - 1):
        assert [r.ecr.split(":")[0] for r in store.records(*key_of(i))] == [f"<think> trace {i}"]
    assert store.bad_lines == 0


OPENER = """
import sys
import train.ecr_index as index
index.BATCH_LINES = 500
from train.ecr_store import ECRStore
print(len(ECRStore(sys.argv[1])), flush=True)
"""


def test_processes_indexing_the_same_store_at_once_share_the_work_without_duplicates(tmp_path):
    records = 40_000
    write_store(tmp_path, records, parts=2, ecr_bytes=200, seed=0)
    openers = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path)], cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=300) for process in openers]
    for process, (out, err) in zip(openers, outputs, strict=True):
        assert process.returncode == 0 and out.split() == [str(records)], err[-3000:]
    assert index_state(tmp_path)["rows"] == records and len(ECRStore(tmp_path)) == records


WRITER = """
import sys, time
from pathlib import Path
from train.ecr_store import ECRRecord, ECRStore
folder, part, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
while not (Path(folder).parent / "go").exists():  # start once the reader reads
    time.sleep(0.01)
store = ECRStore(folder, part=part)
for start in range(first, first + count, 25):
    store.add([ECRRecord("ds", str(i), "query", f"{part} wrote {i} " + "x" * 300, "a", part, None,
                         request_hash=part) for i in range(start, min(start + 25, first + count))])
    time.sleep(0.01)
"""

READER = """
import sys, time
from pathlib import Path
from train.ecr_store import ECRStore
store, sizes, checked = ECRStore(sys.argv[1]), [], 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    store.reload()
    (Path(sys.argv[1]).parent / "go").touch()
    sizes.append(len(store))
    assert sizes == sorted(sizes), sizes  # a reader never sees records disappear
    for record in store:
        got = store.get(*record.key)  # the same record, or a newer one of its key written since
        assert got.key == record.key and (got == record or got.created >= record.created), (got, record)
        assert " wrote " + record.row_id + " " in record.ecr
        checked += 1
    assert store.bad_lines == 0, store.bad_line_locations  # a line being written is not a bad line
    if len(store) == 1500:
        break
print(len(set(sizes)), checked, sizes[-1], flush=True)
"""


def test_two_writer_processes_and_a_reader_at_once(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), part, str(first), "1000"], cwd=REPO,
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for part, first in (("rank0", 0), ("rank1", 500))]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(folder), "240"], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [process.communicate(timeout=300) for process in writers + [reader]]
    for process, (_, err) in zip(writers + [reader], outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    sizes_seen, checked, last = map(int, outputs[2][0].split())
    assert sizes_seen > 2 and checked > 0 and last == 1500  # it read while they wrote
    store = ECRStore(folder)
    assert len(store) == 1500 and index_state(folder)["rows"] == 2000 and store.bad_lines == 0
    assert [r.reasoner for r in store.records("ds", 700, "query")] == ["rank0", "rank1"]  # both writers' records
    assert store.get("ds", 700, "query", request_hash="rank0").ecr.startswith("rank0 wrote 700 ")
    assert store.missing([("ds", str(i), "query") for i in range(1502)]) == [("ds", "1500", "query"),
                                                                             ("ds", "1501", "query")]


def _immutable(folder: Path) -> bool:
    subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / "probe").touch()
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


def test_a_read_only_store_is_read_with_its_index_or_a_private_one(tmp_path, caplog):
    indexed, bare = tmp_path / "indexed", tmp_path / "bare"
    for folder in (indexed, bare):
        folder.mkdir()
        (folder / "rank0.jsonl").write_text(line(record(0)) + line(record(1)))
    ECRStore(indexed).close()  # a complete index, closed cleanly (no WAL left)
    private_index = _private_location(bare)
    try:
        if not (_immutable(indexed) and _immutable(bare)):
            pytest.skip("cannot make a folder read-only here")
        with caplog.at_level(logging.WARNING, logger="train.ecr_index"):
            shared, private = ECRStore(indexed), ECRStore(bare)
        assert shared.get("ds", 1, "query").ecr == record(1).ecr and len(shared) == 2
        assert private.get("ds", 1, "query").ecr == record(1).ecr and len(private) == 2
        assert shared._index.read_only and shared._index.location == str(indexed / INDEX_NAME)
        assert not (bare / INDEX_NAME).exists() and private._index.location == str(private_index)
        assert "using its complete index read-only" in caplog.text and "using the private index" in caplog.text
    finally:
        for folder in (indexed, bare):
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{private_index}{suffix}").unlink(missing_ok=True)


def _lookup_in_child(store: ECRStore, queue) -> None:
    queue.put([store.get("ds", i, "query").ecr for i in range(3)] + [len(store)])


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_store_opened_before_forking_or_pickled_reads_in_the_child(tmp_path, method):
    """DataLoader workers: a forked child opens its own connection, a spawned one gets the store pickled."""
    store = ECRStore(tmp_path)
    store.add([record(i) for i in range(3)])
    assert store.get("ds", 0, "query") is not None  # the parent holds an open connection and snapshot
    assert len(pickle.dumps(store)) < 2000  # no records travel with it
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_lookup_in_child, args=(store, queue))
    child.start()
    result = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and result == [record(i).ecr for i in range(3)] + [3]
    store.add([record(3)])  # the parent's connection still works after the child used its own
    assert len(ECRStore(tmp_path)) == 4 and store.get("ds", 3, "query").ecr == record(3).ecr


def test_opening_a_100k_store_takes_far_less_memory_than_the_dict_reader(tmp_path):
    """Each reader is a fresh process; growth = peak RSS (VmHWM) minus RSS before opening."""

    class Args:
        records, seed = 100_000, 0

    write_store(tmp_path / "store", Args.records, parts=4, ecr_bytes=1900, seed=0)
    baseline = run_readers("dict", tmp_path / "store", Args, lookups=2000)[0]
    first = run_readers("index", tmp_path / "store", Args)[0]  # builds the index
    second = run_readers("index", tmp_path / "store", Args, lookups=2000)[0]
    growth = {name: report["peak_mib"] - report["rss_before_mib"]
              for name, report in (("dict", baseline), ("first", first), ("second", second))}
    assert growth["dict"] > 150, growth  # ~2.2 KB per record in Python objects
    assert growth["first"] < growth["dict"] / 3, growth
    assert growth["second"] < growth["dict"] / 10, growth

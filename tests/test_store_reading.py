"""The ECR store's reader and writer on damaged part files, several records per key, and the per-part writer lock
(two real processes)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.test_backend_openai_errors import openai_like_server
from train.ecr_store import ECRRecord, ECRStore, StaleECRError, StoreLockedError, content_hash, prompt_hash

REPO = Path(__file__).resolve().parent.parent


def record(row_id, side="query", ecr="<think>a</think> Answer: b", **provenance) -> ECRRecord:
    return ECRRecord("ds", str(row_id), side, ecr, "b", "teacher", prompt_hash(f"prompt {row_id}"), **provenance)


def line(rec: ECRRecord) -> str:
    return json.dumps(asdict(rec)) + "\n"


@pytest.mark.parametrize("bad", ["\n", "not json at all\n", "\x00\x00\x00\n", "[1, 2]\n",
                                 json.dumps({"dataset": "ds", "row_id": "9", "side": "query", "ecr": "x"}) + "\n",
                                 json.dumps({**asdict(record(9)), "ecr": None}) + "\n",
                                 json.dumps({**asdict(record(9)), "created": "yesterday"}) + "\n"],
                         ids=["blank", "garbage", "nul", "not-an-object", "missing-fields", "ecr-null", "bad-created"])
def test_a_bad_line_mid_file_is_skipped_and_reported_with_file_and_line(tmp_path, caplog, bad):
    part = tmp_path / "rank0.jsonl"
    part.write_text(line(record(0)) + bad + line(record(1)))
    with caplog.at_level(logging.WARNING, logger="train.ecr_store"):
        store = ECRStore(tmp_path)
    assert len(store) == 2 and store.get("ds", 1, "query") is not None
    assert store.bad_lines == 1 and store.bad_line_locations[0][:2] == (str(part), 2)
    assert f"{part}:2: skipped a bad ECR record line" in caplog.text


def test_a_query_side_named_qry_is_a_bad_line(tmp_path, caplog):
    part = tmp_path / "rank0.jsonl"
    part.write_text(line(record(0)) + json.dumps({**asdict(record(1)), "side": "qry"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="train.ecr_store"):
        store = ECRStore(tmp_path)
    assert len(store) == 1 and ("ds", "1", "qry") not in store and store.get("ds", 1, "query") is None
    assert store.bad_lines == 1 and f"{part}:2" in caplog.text and "'qry'" in caplog.text


def test_a_complete_last_record_without_newline_is_kept_and_appended_after(tmp_path):
    part = tmp_path / "part0.jsonl"
    part.write_text(line(record(0)) + line(record(1)).rstrip("\n"))
    store = ECRStore(tmp_path)
    assert len(store) == 2 and store.bad_lines == 0
    assert store.missing([("ds", "1", "query")]) == []  # not regenerated as if torn
    assert store.add([record(2)]) == 1
    assert [json.loads(text)["row_id"] for text in part.read_text().splitlines()] == ["0", "1", "2"]
    assert len(ECRStore(tmp_path)) == 3


def test_torn_last_line_is_skipped_not_counted_and_cut_on_append(tmp_path):
    part = tmp_path / "part0.jsonl"
    part.write_text(line(record(0)) + '{"dataset": "ds", "row_id": "1", "si')
    store = ECRStore(tmp_path)
    assert len(store) == 1 and store.bad_lines == 0
    store.add([record(1)])
    assert [json.loads(text)["row_id"] for text in part.read_text().splitlines()] == ["0", "1"]


def test_first_part_wins_a_tie_and_the_newest_record_wins_across_parts(tmp_path):
    # old records (no `created`): the first part in name order wins, as before
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "rank0.jsonl").write_text(line(record(0, ecr="from rank0")))
    (tmp_path / "a" / "rank1.jsonl").write_text(line(record(0, ecr="from rank1")))
    assert ECRStore(tmp_path / "a").get("ds", 0, "query").ecr == "from rank0"
    assert [r.ecr for r in ECRStore(tmp_path / "a")] == ["from rank0"]
    # with creation times the newest wins wherever it is: first part newer, then second part newer
    for newer, older, winner in (("rank0", "rank1", "new"), ("rank1", "rank0", "new")):
        folder = tmp_path / f"b-{newer}"
        folder.mkdir()
        (folder / f"{newer}.jsonl").write_text(line(record(0, ecr="new", request_hash="h2", created=200.0)))
        (folder / f"{older}.jsonl").write_text(line(record(0, ecr="old", request_hash="h1", created=100.0)))
        store = ECRStore(folder)
        assert store.get("ds", 0, "query").ecr == winner, newer
        assert store.get("ds", 0, "query", request_hash="h1").ecr == "old"  # a reader asking for h1 gets h1's
        assert store.get("ds", 0, "query", request_hash="h3") is None  # stale: only other requests' records
        assert len(store.records("ds", 0, "query")) == 2


def test_newest_matching_record_wins_within_a_part(tmp_path):
    store = ECRStore(tmp_path)
    assert store.add([record(0, ecr="first", request_hash="h")]) == 1
    assert store.add([record(0, ecr="again", request_hash="h")]) == 0  # same request: not written twice
    assert store.add([record(0, ecr="regenerated", request_hash="h-new")]) == 1
    assert store.add([record(0, ecr="same request later", request_hash="h", created=time.time() + 10)]) == 0
    reopened = ECRStore(tmp_path)
    assert reopened.get("ds", 0, "query").ecr == "regenerated"
    assert reopened.get("ds", 0, "query", request_hash="h").ecr == "first"
    assert reopened.missing([("ds", "0", "query")], {("ds", "0", "query"): "other"}) == [("ds", "0", "query")]


def test_content_check_refuses_another_rows_record_and_accepts_unknown_provenance(tmp_path, caplog):
    red, blue = {"text": "What colour?", "image": None}, {"text": "Which shape?"}
    store = ECRStore(tmp_path)
    store.add([record(0, content_hash=content_hash(red)), record(1)])  # row 1: an old record without hashes
    assert store.get("ds", 0, "query", content=red).content_hash == content_hash(red)
    with pytest.raises(StaleECRError, match=r"query ECR of ds/0 was written for other content"):
        store.get("ds", 0, "query", content=blue)
    with caplog.at_level(logging.WARNING, logger="train.ecr_store"):
        assert store.get("ds", 1, "query", content=blue) is not None
        assert store.get("ds", 1, "query", content=red) is not None
    assert caplog.text.count("without provenance hashes") == 1  # warned once


def test_content_hash_sees_text_instruction_and_media_but_not_the_image_root(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "a.png").write_bytes(b"x" * 10)
    (tmp_path / "two" / "a.png").write_bytes(b"x" * 10)
    (tmp_path / "one" / "b.png").write_bytes(b"x" * 10)
    base = {"text": "q", "image": str(tmp_path / "one" / "a.png")}
    assert content_hash(base) == content_hash({**base, "image": str(tmp_path / "two" / "a.png")})
    assert content_hash(base) == content_hash({**base, "text": " q ", "instruction": ""})
    for changed in ({"text": "r"}, {"instruction": "Find it."}, {"image": str(tmp_path / "one" / "b.png")}):
        assert content_hash({**base, **changed}) != content_hash(base), changed
    (tmp_path / "one" / "a.png").write_bytes(b"y" * 11)  # overwritten with another image
    assert content_hash(base) != content_hash({**base, "image": str(tmp_path / "two" / "a.png")})


def test_lock_is_per_part_and_released(tmp_path):
    first, same, other = ECRStore(tmp_path, "rank0"), ECRStore(tmp_path, "rank0"), ECRStore(tmp_path, "rank1")
    with first.locked():
        with pytest.raises(StoreLockedError, match=r"rank0.jsonl is being written by another process"):
            same.add([record(0)])
        assert other.add([record(1)]) == 1
    assert same.add([record(0)]) == 1


def test_a_second_process_on_the_same_part_fails_fast(tmp_path):
    """A real process holds rank0 (as a running `generate_ecr` does); a real `generate_ecr` on the same part fails
    before loading anything, naming the part; on another part it goes past the lock."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from train.ecr_store import ECRStore; s = ECRStore(sys.argv[1], 'rank0');"
         " s.lock(); print('locked', flush=True); sys.stdin.read()", str(tmp_path / "store")],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        data = tmp_path / "demo.jsonl"
        data.write_text(json.dumps({"qry": "q", "qry_image_path": "", "pos_text": "p", "pos_image_path": ""}) + "\n")
        args = [sys.executable, "-m", "train.generate_ecr", "--store", str(tmp_path / "store"), "--model",
                str(tmp_path / "no-such-model"), "--datasets", json.dumps({"name": "demo", "path": str(data)})]
        started = time.monotonic()
        second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "StoreLockedError" in second.stderr and "rank0.jsonl is being written by another process" in \
            second.stderr and f"pid {holder.pid}" in second.stderr and "another part name" in second.stderr
        assert "no-such-model" not in second.stderr  # it stopped before the model
        assert time.monotonic() - started < 60
        elsewhere = subprocess.run(args + ["--part", "job2-rank"], cwd=REPO, env=env, capture_output=True,
                                   text=True, timeout=120)
        assert "StoreLockedError" not in elsewhere.stderr and "no-such-model" in elsewhere.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / "store" / "rank0.jsonl").exists()


def test_two_generate_ecr_jobs_on_one_part_the_second_fails_fast(tiny_qwen2_vl, tmp_path):
    """Two real `generate_ecr` processes on one store and part: the second stops at once (no request sent) while
    the first, held mid-generation by a gated local server, goes on to write each record once."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    data = tmp_path / "demo.jsonl"
    data.write_text("".join(json.dumps({"qry": f"question {i}", "qry_image_path": "", "pos_text": f"answer {i}",
                                        "pos_image_path": ""}) + "\n" for i in range(3)))
    gate = threading.Event()
    with openai_like_server(gate) as (url, state):
        args = [sys.executable, "-m", "train.generate_ecr", "--backend", "openai", "--base_url", url, "--model", "m",
                "--processor", tiny_qwen2_vl, "--store", str(tmp_path / "store"), "--max_retries", "0",
                "--show_progress", "false", "--datasets", json.dumps({"name": "demo", "path": str(data)})]
        first = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while sum(state["hits"].values()) == 0 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.poll() is None and sum(state["hits"].values()) > 0, "the first job never reached the server"
            second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
            assert second.returncode != 0 and "StoreLockedError" in second.stderr, second.stderr[-2000:]
            assert f"rank0.jsonl is being written by another process (pid {first.pid}" in second.stderr
            hits = sum(state["hits"].values())
            gate.set()
            output, _ = first.communicate(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(timeout=30)
        assert first.returncode == 0, output[-2000:]
        assert hits == sum(state["hits"].values()) == 6  # the second job sent nothing
    keys = [tuple(json.loads(text)[k] for k in ("dataset", "row_id", "side"))
            for text in (tmp_path / "store" / "rank0.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6

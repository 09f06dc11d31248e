import json

import pytest

from train.ecr_store import ECRRecord, ECRStore, ecr_key, prompt_hash


def record(row_id, side="query", ecr="<think>a</think> Answer: b"):
    return ECRRecord("ds", str(row_id), side, ecr, "b", "teacher", prompt_hash(f"prompt {row_id}"))


def test_one_record_per_key_across_writers_and_reopen(tmp_path):
    first = ECRStore(tmp_path, part="rank0")
    assert first.add([record(0), record(1), record(0, ecr="dup")]) == 2
    second = ECRStore(tmp_path, part="rank1")
    assert second.add([record(1), record(2), record(2, side="target")]) == 2
    reopened = ECRStore(tmp_path)
    assert len(reopened) == 4
    assert reopened.get("ds", 0, "query").ecr == "<think>a</think> Answer: b"
    assert reopened.missing([ecr_key("ds", i, "query") for i in (0, 3, 3, 4)]) == [("ds", "3", "query"),
                                                                                  ("ds", "4", "query")]


def test_torn_last_line_is_ignored_then_cut_on_append(tmp_path):
    store = ECRStore(tmp_path)
    store.add([record(0), record(1)])
    with open(store.part_path, "a") as handle:
        handle.write('{"dataset": "ds", "row_id": "2", "si')  # a writer killed mid-line
    reopened = ECRStore(tmp_path)
    assert len(reopened) == 2 and ("ds", "2", "query") not in reopened
    reopened.add([record(2)])
    lines = store.part_path.read_text().splitlines()
    assert [json.loads(line)["row_id"] for line in lines] == ["0", "1", "2"]


def test_bad_side_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="side must be one of"):
        ecr_key("ds", 1, "candidate")
    with pytest.raises(ValueError, match="side must be one of"):
        ECRStore(tmp_path).add([record(0, side="candidate")])

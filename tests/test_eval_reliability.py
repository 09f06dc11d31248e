"""Evaluation never gives a result from other inputs than asked without a word: stale ECR after rows moved, bad
annotation lines named with file and line, bad flags refused up front."""

from __future__ import annotations

import json

import pytest

from eval.ecr import MissingECRError, attach_ecr, ecr_keys
from eval.mmeb import DataSource, DataSourceError, load_task
from eval.run_mmeb import main
from eval.tasks import get_task
from tests import fixtures_image
from train.ecr_store import ECRRecord, ECRStore, content_hash


def _store_for(data, folder) -> ECRStore:
    store = ECRStore(folder)
    rows = {**{("query", q.row_id): q.row for q in data.queries}, **{("target", c): r for c, r in data.corpus.items()}}
    store.add(ECRRecord(d, r, s, f"Answer: {r}", r, "test", "0", content_hash(rows[(s, r)]))
              for d, r, s in ecr_keys(data))
    return store


def test_annotations_edited_in_place_are_read_again(tmp_path):
    task = "MSCOCO_i2t"
    rows = fixtures_image.default_rows(task, "mmeb_v2")
    first = load_task(get_task(task), DataSource(**fixtures_image.write_rows(task, "snapshot", tmp_path, rows)))
    again = load_task(get_task(task), DataSource(**fixtures_image.write_rows(task, "snapshot", tmp_path, rows[::-1])))
    assert [q.row["image"] for q in again.queries] == [q.row["image"] for q in first.queries][::-1]


def test_ecr_of_moved_rows_is_stale_not_attached(tmp_path):
    task = "MSCOCO_i2t"
    rows = fixtures_image.default_rows(task, "mmeb_v2")
    source = DataSource(**fixtures_image.write_rows(task, "snapshot", tmp_path / "a", rows))
    store = _store_for(load_task(get_task(task), source), tmp_path / "ecr")
    shifted = DataSource(**fixtures_image.write_rows(task, "snapshot", tmp_path / "b", [rows[2], rows[0], rows[1]]))
    data = load_task(get_task(task), shifted)
    with pytest.raises(MissingECRError, match=r"task MSCOCO_i2t: 3 of \d+ ECR records .* other rows or content"):
        attach_ecr(data, store)
    attach_ecr(load_task(get_task(task), source), store)  # the rows they were written for still get them


def test_a_bad_jsonl_line_is_named_with_file_and_line(tmp_path):
    good = {"qry_inst": "", "qry_text": "x", "qry_img_path": "", "tgt_inst": "", "tgt_text": ["a"],
            "tgt_img_path": [""]}
    (tmp_path / "Syn-Links.jsonl").write_text(json.dumps(good) + "\n" + "{not json\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"Syn-Links.jsonl line 2 is not valid JSON"):
        load_task(get_task("Syn-Links", "synthetic"), DataSource(data_root=tmp_path, mmeb_root=tmp_path))


@pytest.mark.parametrize("flag", ["--batch-size", "--num-frames", "--reasoner-max-new-tokens"])
def test_non_positive_sizes_are_refused_before_any_work(flag):
    with pytest.raises(ValueError, match=r"must be a positive integer, got 0"):
        main(["--model", "m", "--tasks", "MSR-VTT", "--out", "o", flag, "0"])


def test_both_flag_spellings_are_accepted(tmp_path):
    kwargs = fixtures_image.write("MSCOCO_i2t", "snapshot", tmp_path)
    reports = main(["--check_data", "--tasks", "MSCOCO_i2t", "--data_root", str(kwargs["data_root"]),
                    "--mmeb_root", str(kwargs["mmeb_root"]), "--mmeb_cache", str(kwargs["cache_dir"])])
    assert reports["MSCOCO_i2t"]["ok"]

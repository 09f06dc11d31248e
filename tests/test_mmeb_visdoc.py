"""MMEB-V2 visual-document tasks (BEIR) from fixtures in the published layouts, and the reference's qrels and pool
conventions (MMEB-LAYOUTS.md 2.3 and 5), each pinned so the plausible wrong way fails."""

import pytest
from datasets import Features, Value
from PIL import Image

from eval.data import TaskDataError
from eval.mmeb import DataSource, check_task, load_task
from eval.tasks import all_tasks, get_task
from tests import fixtures_visdoc
from tests.fixtures_visdoc import page
from tests.published import LAYOUTS, hub_snapshot_dir

VISDOC = [t.name for t in all_tasks("mmeb_v2").values() if t.modality == "visdoc"]
TASK = "ViDoRe_arxivqa"
INSTRUCTION = "Find a document image that matches the given query:"
TARGET_INSTRUCTION = "Understand the content of the provided document image."
PAGES = [("d0", page("red")), ("d1", page("green")), ("d2", page("blue")), ("d3", page("white"))]


def queries(*ids):
    return [{"query-id": qid, "query": f"question {qid}"} for qid in ids]


def load(tmp_path, qrels, query_rows=None, corpus=PAGES, task=TASK, layout="save_to_disk", **kwargs):
    source = fixtures_visdoc.write_tables(task, layout, tmp_path, query_rows or queries("q0", "q1"), corpus, qrels,
                                          **kwargs)
    return load_task(get_task(task), DataSource(**source))


def test_registry_has_the_24_visdoc_tasks_with_the_reference_instructions():
    assert len(VISDOC) == 24 and {"ViDoSeek-page-fixed", "MMLongBench-page-fixed"} <= set(VISDOC)
    for name in VISDOC:
        spec = get_task(name)
        assert (spec.instruction, spec.target_instruction, spec.eval_type) == (INSTRUCTION, TARGET_INSTRUCTION,
                                                                               "global")


@pytest.mark.parametrize("task", VISDOC)
def test_every_visdoc_task_resolves(task, tmp_path):
    result = check_task(get_task(task), DataSource(**fixtures_visdoc.write(task, "save_to_disk", tmp_path)))
    assert result["ok"], result
    assert (result["rows"], result["candidates"]) == (3, 4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_every_shard_of_the_same_task(layout, tmp_path):
    task = "ViDoRe_esg_reports_v2_multilingual"
    data = load_task(get_task(task), DataSource(**fixtures_visdoc.write(task, layout, tmp_path)))
    ids = fixtures_visdoc.corpus_ids(task)
    assert [q.row_id for q in data.queries] == ["q0", "q1", "q2"]  # 2 shards in hub/snapshot; all languages kept
    assert [q.relevance for q in data.queries] == [{ids[1]: 1}, {ids[2]: 2, ids[0]: 1}, {ids[3]: 1}]
    assert list(data.corpus) == [ids[1], ids[2], ids[0], ids[3]]
    assert data.queries[0].row == {"text": f"{task} question 0", "instruction": INSTRUCTION}
    if layout != "save_to_disk":
        repo = get_task(task).hub[0]
        base = tmp_path / "data" / repo if layout == "snapshot" else hub_snapshot_dir(tmp_path, repo)
        assert len(list((base / "corpus").glob("*.parquet"))) == 2


def test_score_zero_qrels_are_not_relevant(tmp_path):
    data = load(tmp_path, [("q0", "d1", 1), ("q0", "d2", 0), ("q1", "d3", 1)])
    assert data.queries[0].relevance == {"d1": 1}


def test_duplicate_qrels_keep_the_maximum_grade(tmp_path):
    data = load(tmp_path, [("q0", "d1", 2), ("q0", "d1", 1), ("q1", "d2", 1), ("q1", "d2", 2), ("q1", "d3", 1)])
    assert data.queries[0].relevance == {"d1": 2}  # not last-wins (1)
    assert data.queries[1].relevance == {"d2": 2, "d3": 1}  # not sum (3); qrels order kept
    assert [q.candidates for q in data.queries] == [None, None]  # ranked over the whole pool


def test_pool_is_positives_in_query_order_then_the_rest_of_the_corpus(tmp_path):
    data = load(tmp_path, [("q0", "d3", 1), ("q1", "d1", 1), ("q1", "d3", 1)])
    assert list(data.corpus) == ["d3", "d1", "d0", "d2"]
    assert data.corpus["d0"]["instruction"] == TARGET_INSTRUCTION and "text" not in data.corpus["d0"]


def test_a_query_without_a_positive_is_an_error(tmp_path):
    with pytest.raises(TaskDataError, match="query-id 'q1' .*no qrels entry with score > 0"):
        load(tmp_path, [("q0", "d1", 1), ("q1", "d2", 0)])


def test_a_nan_score_is_an_error_naming_the_qrels_row(tmp_path):
    features = Features({"query-id": Value("string"), "corpus-id": Value("string"), "score": Value("float64")})
    with pytest.raises(TaskDataError, match=r"qrels row 1 \(query-id 'q1', corpus-id 'd2'\): score nan"):
        load(tmp_path, [("q0", "d1", 1.0), ("q1", "d2", float("nan"))], qrels_features=features)


def test_a_positive_outside_the_corpus_is_an_error(tmp_path):
    with pytest.raises(TaskDataError, match="query-id 'q1': positive corpus-id.*'d9'"):
        load(tmp_path, [("q0", "d1", 1), ("q1", "d9", 1)])


def test_pages_are_content_addressed_files(tmp_path):
    data = load(tmp_path / "a", [("q0", "d1", 1), ("q1", "d2", 1)])
    files = {cid: row["image"] for cid, row in data.corpus.items()}
    assert all(path.parent == tmp_path / "a" / "cache" / "visdoc-pages" for path in files.values())
    assert files["d1"].read_bytes() == PAGES[1][1] and files["d1"].suffix == ".png"
    with Image.open(files["d2"]) as opened:
        assert opened.getpixel((0, 0)) == (0, 0, 255)
    # the same ids with changed pages (the -page-fixed repos) under the same cache: new files, never the stale ones
    changed = [(cid, page(colour, fmt="JPEG")) for (cid, _), colour in zip(PAGES, ("black", "cyan", "yellow", "red"),
                                                                             strict=True)]
    fixed = fixtures_visdoc.write_tables(TASK, "save_to_disk", tmp_path / "b", queries("q0", "q1"), changed,
                                         [("q0", "d1", 1), ("q1", "d2", 1)])
    again = load_task(get_task(TASK), DataSource(**dict(fixed, cache_dir=tmp_path / "a" / "cache")))
    assert again.corpus["d1"]["image"] != files["d1"] and again.corpus["d1"]["image"].suffix == ".jpg"
    assert again.corpus["d1"]["image"].read_bytes() == changed[1][1]
    assert files["d1"].read_bytes() == PAGES[1][1]  # the old page is untouched


def test_first_corpus_row_of_an_id_wins(tmp_path):
    corpus = PAGES + [("d1", page("black"))]
    data = load(tmp_path, [("q0", "d1", 1), ("q1", "d2", 1)], corpus=corpus)
    assert len(data.corpus) == 4 and data.corpus["d1"]["image"].read_bytes() == PAGES[1][1]

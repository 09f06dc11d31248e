"""MMEB loaders on small on-disk tasks in the four formats, and clear errors on bad input."""

import json
from pathlib import Path

import pytest

from eval.data import TaskDataError
from eval.loaders import load_task
from eval.tasks import get_task
from tests.mmeb_fixtures import VIDOC, write_all


@pytest.fixture
def root(tmp_path) -> Path:
    return write_all(tmp_path / "mmeb")


def test_v1_gold_first_local(root):
    data = load_task(get_task("ImageNet-1K", "mmeb_v1"), root)
    assert len(data.queries) == 3
    q = data.queries[1]
    assert q.relevance == {"green": 1.0} and q.candidates[0] == "green" and len(q.candidates) == 3
    assert q.row["text"] == "Represent the given image for classification"  # image token stripped
    assert Path(q.row["image"]).is_file()
    assert set(data.corpus) == {"red", "green", "blue"}  # 9 candidates deduplicated across rows


def test_v2_image_candidate_names(root):
    data = load_task(get_task("MSCOCO_t2i"), root)
    q0, q2 = data.queries[0], data.queries[2]
    assert q0.candidates[0] == "images/coco_red.png" and q0.relevance == {"images/coco_red.png": 1.0}
    assert q2.candidates[2].endswith(".png:a caption")  # image+text candidate named path:caption
    assert q0.row["instruction"].startswith("Find me an everyday image")
    assert data.corpus["images/coco_red.png"]["instruction"] == "Represent the given image."
    assert len(data.corpus) == 4 and "images/coco_green.png:a caption" in data.corpus


def test_video_global_and_local_with_uniform_frames(root):
    ret = load_task(get_task("MSR-VTT"), root)
    assert all(q.candidates is None for q in ret.queries)  # global: ranked over the deduplicated corpus
    assert list(ret.corpus) == ["frames/vid0", "frames/vid1", "frames/vid2"]
    frames = ret.corpus["frames/vid1"]["video"]
    assert [f.stem for f in frames] == ["0000", "0001", "0003", "0004", "0005", "0006", "0008", "0009"]
    qa = load_task(get_task("NExTQA"), root, num_frames=4)
    assert qa.queries[0].candidates == ["red", "green", "blue", "yellow"]
    assert [f.stem for f in qa.queries[0].row["video"]] == ["0000", "0003", "0006", "0009"]


def test_visdoc_graded_qrels(root):
    data = load_task(get_task(VIDOC), root)
    assert data.queries[0].relevance == {"p0": 2.0, "p1": 1.0}
    assert data.queries[0].candidates is None and len(data.corpus) == 4
    assert data.queries[0].row["instruction"].startswith("Find a document image")
    assert data.corpus["p3"]["instruction"].startswith("Understand the content")


def test_missing_image_names_task_and_row(root):
    (root / "images" / "imnet_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"task ImageNet-1K row 1 query: image file not found"):
        load_task(get_task("ImageNet-1K", "mmeb_v1"), root)


def test_missing_frame_folder_names_task_and_row(root):
    for frame in (root / "frames" / "vid2").iterdir():
        frame.unlink()
    with pytest.raises(FileNotFoundError, match=r"task MSR-VTT row 2 candidate 0: video frame folder has no frames"):
        load_task(get_task("MSR-VTT"), root)


def test_qrels_id_absent_from_corpus(root):
    qrels = root / VIDOC / "qrels.jsonl"
    qrels.write_text(qrels.read_text() + json.dumps({"query-id": "q1", "corpus-id": "p9", "score": 1}) + "\n")
    with pytest.raises(TaskDataError, match=rf"task {VIDOC} qrels row 3 \(query-id 'q1'\): corpus-id 'p9' is not in"):
        load_task(get_task(VIDOC), root)


def test_query_without_qrels(root):
    queries = root / VIDOC / "queries.jsonl"
    queries.write_text(queries.read_text() + json.dumps({"query-id": "q7", "query": "x"}) + "\n")
    with pytest.raises(TaskDataError, match=rf"task {VIDOC} query-id 'q7': the row has no candidates"):
        load_task(get_task(VIDOC), root)


def test_row_with_no_candidates(root):
    path = root / "ImageNet-1K.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["tgt_text"], rows[2]["tgt_img_path"] = [], []
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskDataError, match=r"task ImageNet-1K row 2: the row has no candidates"):
        load_task(get_task("ImageNet-1K", "mmeb_v1"), root)


def test_missing_task_data(root):
    with pytest.raises(FileNotFoundError, match=r"task OK-VQA: no data file"):
        load_task(get_task("OK-VQA"), root)

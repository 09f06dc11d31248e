"""Scoring pieces of the harness with known embeddings and known answers: local ranking by candidate name,
global ranking over the pool, the reference leaderboard JSON, safe output names, content-keyed embedding cache."""

import json

import pytest
import torch
from PIL import Image

from eval.cache import EmbeddingCache, item_key
from eval.data import TaskData
from eval.harness import rank_task
from eval.report import safe_file_name, write_summary, write_task_outputs
from eval.tasks import all_tasks, get_task

REFERENCE_NAMES = {  # the reference report's lists (report_score_v2.py at VLM2Vec HEAD)
    "image": ["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
              "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
              "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
              "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO",
              "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"],
    "visdoc": ["ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
               "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence",
               "ViDoRe_syntheticDocQA_energy", "ViDoRe_syntheticDocQA_government_reports",
               "ViDoRe_syntheticDocQA_healthcare_industry", "ViDoRe_esg_reports_human_labeled_v2",
               "ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe_economics_reports_v2_multilingual",
               "ViDoRe_esg_reports_v2_multilingual", "VisRAG_ArxivQA", "VisRAG_ChartQA", "VisRAG_MP-DocVQA",
               "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA", "ViDoSeek-page-fixed", "ViDoSeek-doc",
               "MMLongBench-page-fixed", "MMLongBench-doc"],
    "video": ["DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2", "QVHighlight", "Charades-STA", "MomentSeeker", "K700",
              "SmthSmthV2", "HMDB51", "UCF101", "Breakfast", "MVBench", "Video-MME", "NExTQA", "EgoSchema",
              "ActivityNetQA"],
}


def _task(eval_type: str) -> TaskData:
    spec = get_task("MSR-VTT" if eval_type == "global" else "NExTQA")
    data = TaskData(spec)
    for name in ("a", "b", "c"):
        data.add_candidate(name, {"text": name})
    return data


def test_local_ranking_looks_candidates_up_by_name_and_keeps_duplicate_slots():
    data = _task("local")
    data.add_query("0", {"text": "q"}, {"c": 1.0}, ["c", "a", "c"])  # c is the pool's third entry
    data.add_query("1", {"text": "q"}, {"a": 1.0}, ["b", "a"])
    corpus = torch.eye(3)  # a, b, c
    queries = torch.tensor([[0.1, 0.0, 1.0], [0.0, 1.0, 0.5]])  # q0 closest to c, q1 closest to b
    per_query, predictions = rank_task(data, queries, corpus)
    assert predictions[0]["prediction"] == ["c", "c", "a"] and predictions[1]["prediction"] == ["b", "a"]
    assert per_query[0]["hit@1"] == 1.0 and per_query[1]["hit@1"] == 0.0 and per_query[1]["mrr@5"] == 0.5
    assert per_query[0]["map@5"] == pytest.approx(2.0)  # two slots of the gold, as the reference counts them


def test_global_ranking_over_the_pool():
    data = _task("global")
    data.add_query("0", {"text": "q"}, {"b": 1.0}, None)
    per_query, predictions = rank_task(data, torch.tensor([[0.2, 0.9, 0.1]]), torch.eye(3))
    assert predictions[0]["prediction"] == ["b", "a", "c"] and per_query[0]["hit@1"] == 1.0


def test_task_data_check_names_rows_and_empty_tasks():
    data = _task("local")
    with pytest.raises(ValueError, match="task NExTQA: no query rows"):
        data.check()
    data.add_query("7", {"text": "q"}, {"z": 1.0}, ["a", "z"])
    with pytest.raises(ValueError, match=r"task NExTQA row 7: candidate\(s\) \['z'"):
        data.check()


def test_output_names_match_the_reference_leaderboard():
    names = {m: [t.name for t in all_tasks("mmeb_v2").values() if t.modality == m] for m in REFERENCE_NAMES}
    assert {m: sorted(v) for m, v in names.items()} == {m: sorted(v) for m, v in REFERENCE_NAMES.items()}


def test_leaderboard_json_lists_every_task_with_reference_placeholders(tmp_path):
    spec = get_task("MSR-VTT")
    scores = {"hit@1": 0.5}
    write_task_outputs(tmp_path, spec, scores, [])
    paths = write_summary(tmp_path, "mmeb_v2", "me/tte-2b", {"note": 1})
    assert paths["json"] == tmp_path / "mmeb_v2" / "me__tte-2b.json"
    board = json.loads(paths["json"].read_text())
    assert list(board["metrics"]) == ["image", "visdoc", "video"]
    assert board["metadata"]["model_name"] == "me/tte-2b"
    assert board["metrics"]["video"]["MSR-VTT"] == scores and board["metrics"]["video"]["K700"] == "FILE_N/A"
    assert set(board["metrics"]["image"].values()) == {"DIR_N/A"}
    assert {m: list(v) for m, v in board["metrics"].items()} == {m: [t.name for t in all_tasks().values()
                                                                     if t.modality == m] for m in board["metrics"]}


def test_model_names_never_leave_the_output_folder():
    assert safe_file_name("../../../x") == "x" and "/" not in safe_file_name("a/../../b")
    assert safe_file_name("me/tte-2b") == "me__tte-2b" and safe_file_name("..") == "model"


def test_cache_keys_follow_media_bytes_and_ecr(tmp_path):
    path = tmp_path / "page.png"
    Image.new("RGB", (8, 8), "red").save(path)
    before = item_key("p", {"image": path, "text": "t"})
    Image.new("RGB", (8, 8), "blue").save(path)  # overwritten at the same path
    assert item_key("p", {"image": path, "text": "t"}) != before
    assert item_key("p", {"image": path, "ecr": "A"}) != item_key("p", {"image": path, "ecr": "B"})
    frames = {"video": [path, path]}
    assert item_key("v", frames) == item_key("v", dict(frames))
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    assert item_key("m", {"image": red}) != item_key("m", {"image": blue})


def test_unreadable_cache_shards_are_skipped_with_their_name(tmp_path, caplog):
    cache = EmbeddingCache(tmp_path)
    cache.put(["k1"], torch.ones(1, 4))
    (tmp_path / "empty.pt").write_bytes(b"")
    good = next(p for p in tmp_path.glob("*.pt") if p.name != "empty.pt")
    (tmp_path / "torn.pt").write_bytes(good.read_bytes()[:40])
    reopened = EmbeddingCache(tmp_path)
    assert "k1" in reopened and len(reopened) == 1
    assert "empty.pt" in caplog.text and "torn.pt" in caplog.text

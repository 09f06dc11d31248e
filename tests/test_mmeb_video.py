"""The 18 MMEB-V2 video tasks from fixtures in the published layouts (hub cache + MMEB-V2 archives, local snapshot +
MMEB-V2 tree, save_to_disk), and the reference conventions that change scores, each pinned by a case that fails
when it is done the plausible wrong way."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import datasets
import pytest

from eval.data import TaskDataError
from eval.mmeb import DataSource, check_task, load_task
from eval.mmeb import moment_retrieval as mret
from eval.mmeb.video_classification import SSV2_ROWS, instruction, label_list
from eval.mmeb.video_qa import SUBSETS, TASK_PROMPT, option_text
from eval.mmeb.video_retrieval import DATASETS as RETRIEVAL
from eval.mmeb.video_retrieval import TARGET_INSTRUCTION
from eval.tasks import all_tasks, get_task
from tests import fixtures_video
from tests.published import frames, image, write_annotations

VIDEO_TASKS = [name for name, spec in all_tasks().items() if spec.modality == "video"]
ONE_PER_FAMILY = ["MSR-VTT", "HMDB51", "MVBench", "QVHighlight"]
ROW_KEYS = {"image", "video", "text", "instruction"}
# src/constant/dataset_hf_path.py of the reference, by output name (K700 reads dataset_name Kinetics-700)
REFERENCE_HUB = {
    "MSR-VTT": ("VLM2Vec/MSR-VTT", "test_1k", "test"), "MSVD": ("VLM2Vec/MSVD", None, "test"),
    "DiDeMo": ("VLM2Vec/DiDeMo", None, "test"), "YouCook2": ("lmms-lab/YouCook2", None, "val"),
    "VATEX": ("VLM2Vec/VATEX", None, "test"), "HMDB51": ("VLM2Vec/HMDB51", None, "test"),
    "UCF101": ("VLM2Vec/UCF101", None, "test"), "Breakfast": ("VLM2Vec/Breakfast", None, "test"),
    "K700": ("VLM2Vec/Kinetics-700", None, "test"), "SmthSmthV2": ("VLM2Vec/SmthSmthV2", None, "test"),
    "QVHighlight": ("VLM2Vec/QVHighlight", None, "test"), "Charades-STA": ("VLM2Vec/Charades-STA", None, "test"),
    "MomentSeeker": ("VLM2Vec/MomentSeeker", None, "test"), "NExTQA": ("VLM2Vec/NExTQA", "MC", "test"),
    "EgoSchema": ("VLM2Vec/EgoSchema", "Subset", "test"), "MVBench": ("VLM2Vec/MVBench", None, "train"),
    "Video-MME": ("VLM2Vec/Video-MME", None, "test"), "ActivityNetQA": ("VLM2Vec/ActivityNetQA", None, "test"),
}
LOCAL = {"SmthSmthV2", "QVHighlight", "Charades-STA", "MomentSeeker", "Video-MME", "NExTQA", "EgoSchema", "MVBench",
         "ActivityNetQA"}


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' arrow cache of the local snapshots inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def _load(task: str, layout: str, root: Path, rows=None):
    kwargs = fixtures_video.write(task, layout, root) if rows is None else \
        fixtures_video.write_rows(task, layout, root, rows)
    return load_task(get_task(task), DataSource(**kwargs)), kwargs


def _names(paths) -> list[str]:
    return [Path(p).name for p in paths]


# ---------------------------------------------------------------- every task, every layout
@pytest.mark.parametrize("task", VIDEO_TASKS)
def test_every_video_task_loads_from_a_snapshot_and_the_mmeb_tree(task, tmp_path):
    assert len(VIDEO_TASKS) == 18
    kwargs = fixtures_video.write(task, "snapshot", tmp_path)
    spec, source = get_task(task), DataSource(**kwargs)
    report = check_task(spec, source)
    assert report["ok"], report
    data = load_task(spec, source)
    assert report["rows"] == len(data.queries) >= 2 and spec.task_type == spec.format
    assert all(set(q.row) <= ROW_KEYS for q in data.queries) and all(set(r) <= ROW_KEYS for r in data.corpus.values())
    assert all((q.candidates is not None) == (task in LOCAL) for q in data.queries)
    assert spec.eval_type == ("local" if task in LOCAL else "global")


@pytest.mark.parametrize("layout", ["hub", "save_to_disk"])
@pytest.mark.parametrize("task", ONE_PER_FAMILY)
def test_one_task_per_family_from_the_hub_archives_and_save_to_disk(task, layout, tmp_path):
    data, kwargs = _load(task, layout, tmp_path)
    assert check_task(get_task(task), DataSource(**kwargs))["ok"]
    rows = [q.row for q in data.queries] + list(data.corpus.values())
    media = [Path(p) for row in rows for p in row.get("video") or []]
    assert media
    if layout == "hub":  # no MMEB-V2 clone: the frames come from the archives unpacked into the cache
        assert kwargs["mmeb_root"] is None and kwargs["data_root"] is None
        assert all(p.is_relative_to(tmp_path / "cache" / "MMEB-V2" / get_task(task).media) for p in media)
    else:
        assert all(p.is_relative_to(tmp_path / "mmeb") for p in media)


def test_registry_hub_paths_are_the_reference_ones():
    assert {t: all_tasks()[t].hub for t in VIDEO_TASKS} == REFERENCE_HUB


def test_youcook2_reads_lmms_lab_split_val(tmp_path):
    data, _ = _load("YouCook2", "snapshot", tmp_path)
    assert (tmp_path / "data" / "lmms-lab" / "YouCook2" / "data" / "val-00000-of-00002.parquet").is_file()
    assert len(data.queries) == 3
    shutil.rmtree(tmp_path / "data" / "lmms-lab")  # a VLM2Vec/YouCook2 test split is not what the reference reads
    write_annotations("snapshot", tmp_path / "data", "VLM2Vec/YouCook2", {None: {"test": [{}]}})
    report = check_task(get_task("YouCook2"), DataSource(**fixtures_video.source_kwargs("snapshot", tmp_path)))
    assert not report["ok"] and "lmms-lab/YouCook2" in report["error"]


# ---------------------------------------------------------------- frames
def test_thirty_frames_select_the_floor_indices_in_natural_order(tmp_path):
    data, _ = _load("MSR-VTT", "snapshot", tmp_path)
    video = data.corpus["msr-vtt_video1"]["video"]  # 30 frames named frame_0 .. frame_29 (not zero-padded)
    assert _names(video) == [f"frame_{i}.jpg" for i in (0, 4, 8, 12, 16, 20, 24, 29)]  # rounding gives 17, 21, 25


def test_natural_order_puts_frame_2_before_frame_10(tmp_path):
    data, _ = _load("Video-MME", "snapshot", tmp_path)
    folder = tmp_path / "mmeb" / get_task("Video-MME").media / "mme1"  # 30 frames
    lexicographic = sorted(p.name for p in folder.iterdir())
    assert lexicographic.index("frame_10.jpg") < lexicographic.index("frame_2.jpg")
    video = _names(data.queries[1].row["video"])
    assert video.index("frame_4.jpg") < video.index("frame_12.jpg") and "frame_1.jpg" not in video


def test_qa_with_fewer_than_8_frames_uses_all_without_padding(tmp_path):
    data, _ = _load("Video-MME", "snapshot", tmp_path)
    assert _names(data.queries[2].row["video"]) == [f"frame_{i}.jpg" for i in range(5)]


def test_retrieval_with_fewer_than_8_frames_is_an_error_naming_the_folder(tmp_path):
    kwargs = fixtures_video.write("MSR-VTT", "snapshot", tmp_path)
    folder = tmp_path / "mmeb" / get_task("MSR-VTT").media / "msr-vtt_video0"
    (folder / "frame_7.jpg").unlink()
    with pytest.raises(TaskDataError, match="exactly 8 frames") as error:
        load_task(get_task("MSR-VTT"), DataSource(**kwargs))
    assert str(folder) in str(error.value) and "row 0" in str(error.value)
    assert not check_task(get_task("MSR-VTT"), DataSource(**kwargs))["ok"]


def test_mixed_frame_sizes_and_missing_folders_are_reported(tmp_path):
    kwargs = fixtures_video.write("HMDB51", "snapshot", tmp_path)
    root = tmp_path / "mmeb" / get_task("HMDB51").media
    image(root / "HMDB51_clip1" / "frame_4.jpg", size=(48, 32))
    with pytest.raises(TaskDataError, match="differ in size") as error:
        load_task(get_task("HMDB51"), DataSource(**kwargs))
    assert str(root / "HMDB51_clip1") in str(error.value)
    shutil.rmtree(root / "HMDB51_clip1")
    report = check_task(get_task("HMDB51"), DataSource(**kwargs))
    assert not report["ok"] and "task HMDB51 row 1" in report["error"] and "HMDB51_clip1" in report["error"]


# ---------------------------------------------------------------- retrieval
@pytest.mark.parametrize("task", list(RETRIEVAL))
def test_retrieval_queries_rank_every_video_of_the_split(task, tmp_path):
    data, _ = _load(task, "snapshot", tmp_path)
    keys = [f"{task.lower()}_video{i}" for i in range(3)]
    assert list(data.corpus) == keys  # DiDeMo: the file stem of its video path
    assert all(q.candidates is None for q in data.queries)
    assert [q.relevance for q in data.queries] == [{k: 1.0} for k in keys]
    assert [q.row for q in data.queries] == [{"text": f"{task} caption {i}", "instruction": RETRIEVAL[task].instruction}
                                             for i in range(3)]  # MSVD/VATEX: the first caption of the list
    assert all(r["instruction"] == TARGET_INSTRUCTION and len(r["video"]) == 8 and not r["text"]
               for r in data.corpus.values())


# ---------------------------------------------------------------- classification
def test_classification_pool_is_the_fixed_label_set(tmp_path):
    data, _ = _load("HMDB51", "snapshot", tmp_path)
    labels = label_list(get_task("HMDB51"))
    assert len(data.queries) == 3 and len(data.corpus) == 51  # not the 2 labels the rows use
    assert list(data.corpus)[:2] == [labels[5], labels[2]]  # labels seen in the rows first, then the list
    assert list(data.corpus)[2:] == [label for label in labels if label not in (labels[5], labels[2])]
    assert data.corpus[labels[5]] == {"text": labels[5], "instruction": ""}
    hmdb = "What actions or objects interactions are the person in the video doing?"
    assert data.queries[0].row["instruction"] == hmdb
    counts = {t: len(label_list(get_task(t))) for t in ("K700", "HMDB51", "UCF101", "Breakfast")}
    assert counts == {"K700": 700, "HMDB51": 51, "UCF101": 101, "Breakfast": 10}
    assert instruction(get_task("K700")) == "Recognize the category of the video content."
    assert instruction(get_task("Breakfast")).endswith("in the video. ")


def test_a_row_label_outside_the_fixed_list_comes_first_in_the_pool(tmp_path):
    frames(tmp_path / "mmeb" / get_task("Breakfast").media / "b0", 8)
    data, _ = _load("Breakfast", "snapshot", tmp_path, rows=[{"video_id": "b0", "pos_text": "toast"}])
    assert list(data.corpus) == ["toast", *label_list(get_task("Breakfast"))]


def test_ssv2_takes_the_first_1000_rows_with_their_own_neg_text_candidates(tmp_path):
    frames(tmp_path / "mmeb" / get_task("SmthSmthV2").media / "7", 8)
    rows = [{"video_id": 7, "pos_text": f"label {i}", "neg_text": [f"label {i + 1}", f"label {i}", f"label {i + 1}"]}
            for i in range(SSV2_ROWS + 2)]
    data, _ = _load("SmthSmthV2", "snapshot", tmp_path, rows=rows)
    assert len(data.queries) == 1000
    assert [q.relevance for q in data.queries] == [{f"label {i}": 1.0} for i in range(1000)]  # stored order
    assert data.queries[3].candidates == ["label 4", "label 3", "label 4"]  # duplicates keep their slot
    assert "label 1001" not in data.corpus
    assert _names(data.queries[0].row["video"]) == [f"frame_{i}.jpg" for i in range(8)]  # integer id -> "7"


# ---------------------------------------------------------------- QA
def test_videomme_and_egoschema_name_candidates_by_the_raw_option(tmp_path):
    data, _ = _load("Video-MME", "snapshot", tmp_path)
    options = ["A. Apples.", "B. Two pears", "C. Nothing.", "D. A cat."]
    query = data.queries[0]
    assert query.candidates == options and query.relevance == {"B. Two pears": 1.0}
    assert [data.corpus[o]["text"] for o in options] == ["Apples", "Two pears", "Nothing", "A cat"]
    assert query.row["instruction"] == TASK_PROMPT and query.row["text"] == "What happens in clip 0?\n" + "\n".join(
        options)
    ego, _ = _load("EgoSchema", "snapshot", tmp_path / "ego")
    options = [f"{letter}. c does {letter}." for letter in "ABCDE"]
    assert ego.queries[1].candidates == options and ego.queries[1].relevance == {options[1]: 1.0}  # int("1")
    assert ego.corpus[options[0]]["text"] == "c does A"
    assert ego.queries[1].row["text"] == "What happens in clip 1?" + " ".join(options)  # glued, no separator
    assert option_text("yes") == "s"  # no ". " in the option: the reference's slice keeps the last character


def test_nextqa_and_activitynetqa_query_text_and_candidates(tmp_path):
    data, _ = _load("NExTQA", "snapshot", tmp_path)
    answers = [f"answer {k} of 2" for k in range(5)]
    query = data.queries[2]
    assert query.candidates == answers and query.relevance == {answers[2]: 1.0}
    assert query.row["text"] == "What happens in clip 2?\nOptions:\n" + "\n".join(
        f"({'ABCDE'[k]}) {a}" for k, a in enumerate(answers))
    assert Path(query.row["video"][0]).parent.name == "4002"  # an integer video id
    anet, _ = _load("ActivityNetQA", "snapshot", tmp_path / "anet")
    assert anet.queries[1].row["text"] == "is the person outdoors in 1? (A) yes; (B) no."
    assert anet.queries[1].candidates == ["yes", "no"] and anet.queries[1].relevance == {"no": 1.0}
    assert Path(anet.queries[1].row["video"][0]).parent.name == "v_anet1"


def test_mvbench_reads_20_configs_with_lettered_candidates_and_the_last_matching_gold(tmp_path):
    data, kwargs = _load("MVBench", "hub", tmp_path)
    assert len(data.queries) == 20 == len(SUBSETS)
    assert [Path(q.row["video"][0]).parts[-3] for q in data.queries] == list(SUBSETS)  # <subset>/<video>/
    query = data.queries[0]
    assert query.candidates == ["(A) walk", "(B) run", "(C) walk"] and query.relevance == {"(C) walk": 1.0}
    assert query.row["text"] == "episodic_reasoning: what happens?\nOptions:\n(A) walk\n(B) run\n(C) walk"
    assert data.queries[-1].relevance == {"(@) no answer": 1.0}  # never matches, scored as a miss
    assert "(@) no answer" not in data.corpus and check_task(get_task("MVBench"), DataSource(**kwargs))["ok"]


def test_mvbench_without_one_of_its_configs_is_an_error(tmp_path):
    fixtures_video.write("MVBench", "save_to_disk", tmp_path)
    shutil.rmtree(tmp_path / "data" / "MVBench" / "state_change")
    report = check_task(get_task("MVBench"), DataSource(**fixtures_video.source_kwargs("save_to_disk", tmp_path)))
    assert not report["ok"] and "state_change" in report["error"]


# ---------------------------------------------------------------- moment retrieval
def test_moment_clips_in_listdir_order_without_query_with_the_positive_gold(tmp_path):
    data, _ = _load("QVHighlight", "snapshot", tmp_path)
    folder = tmp_path / "mmeb" / get_task("QVHighlight").media / "QVHighlight_vid0_10.0_40.0"
    listed = [e for e in os.listdir(folder) if e not in ("query", "clips.txt")]
    query = data.queries[0]
    assert query.candidates == [str(folder / e) for e in listed]  # os.listdir order, files and query/ skipped
    assert query.relevance == {str(folder / "positive_0"): 1.0}
    assert query.row["instruction"] == mret.QUERY_INSTRUCTION and query.row["text"] == "QVHighlight moment 0"
    assert _names(query.row["video"]) == [f"frame_{i}.jpg" for i in (0, 4, 8, 12, 16, 20, 24, 29)]
    assert Path(query.row["video"][0]).parent == folder / "query"
    assert all(data.corpus[c]["instruction"] == mret.TARGET_INSTRUCTION for c in query.candidates)


def test_moment_several_positives_are_all_gold_and_none_is_an_error(tmp_path):
    kwargs = fixtures_video.write("Charades-STA", "snapshot", tmp_path)
    folder = tmp_path / "mmeb" / get_task("Charades-STA").media / "Charades-STA_vid1_10.0_40.0"
    frames(folder / "positive_1", 8)
    data = load_task(get_task("Charades-STA"), DataSource(**kwargs))
    assert data.queries[1].relevance == {str(folder / "positive_0"): 1.0, str(folder / "positive_1"): 1.0}
    for positive in ("positive_0", "positive_1"):
        shutil.rmtree(folder / positive)
    report = check_task(get_task("Charades-STA"), DataSource(**kwargs))
    assert not report["ok"] and "positive*" in report["error"] and str(folder) in report["error"]


def test_momentseeker_query_kinds_all_frames_and_several_positives(tmp_path):
    data, _ = _load("MomentSeeker", "snapshot", tmp_path)
    root = tmp_path / "mmeb" / get_task("MomentSeeker").media
    clips = root / "video_frames"
    video, still, text = (q.row for q in data.queries)
    assert video["instruction"] == mret.SEEKER_VIDEO_INSTRUCTION and len(video["video"]) == 11  # no sampling
    assert Path(video["video"][0]).parent == clips / "ego4d_q0"
    assert still == {"image": root / "query_still_1.jpg", "instruction": mret.SEEKER_IMAGE_INSTRUCTION,
                     "text": "where this object is used"}
    assert text == {"text": "someone plays the piano", "instruction": mret.SEEKER_TEXT_INSTRUCTION}
    first, second, third = data.queries
    assert first.candidates == [str(clips / n) for n in ("ego4d_q0_pos_0", "ego4d_q0_neg_0", "ego4d_q0_neg_1")]
    assert second.relevance == {str(clips / "movie_m1_pos_0"): 1.0, str(clips / "movie_m1_pos_1"): 1.0}
    assert third.candidates == [str(clips / "ego4d_q0_neg_1"), str(clips / "movie_m1_pos_0")]
    assert [len(data.corpus[c]["video"]) for c in first.candidates] == [9, 10, 11]  # every frame of a clip
    assert all(r["instruction"] == mret.SEEKER_TARGET_INSTRUCTION for r in data.corpus.values())
    assert len(data.corpus) == 6


@pytest.mark.parametrize("layout", ["hub", "snapshot", "save_to_disk"])
def test_tasks_written_into_one_root_read_their_own_rows(layout, tmp_path):
    tasks = ("HMDB51", "QVHighlight", "MomentSeeker", "MSR-VTT")  # the first three share config None, split test
    kwargs = {task: fixtures_video.write(task, layout, tmp_path) for task in tasks}
    assert all(kw == kwargs[tasks[0]] for kw in kwargs.values())  # one set of flags serves every task
    for task in tasks:
        report = check_task(get_task(task), DataSource(**kwargs[task]))
        assert report["ok"], report

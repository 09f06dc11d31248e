"""Tiny fixtures of the 18 MMEB-V2 video tasks in the published layouts: the annotation repo each reference parser
reads (columns, config and split of `eval/mmeb_tasks.json`) and its frame folders in the MMEB-V2 tree
(`<root>/mmeb/<task media>/`); for layout `"hub"` also the MMEB-V2 media archives, so media come from them.

`write(task, layout, root)` returns the `DataSource` keyword arguments. Conventions shared with the other fixture
writers: the hub cache is `root` itself (returned as `hub_cache`; `HF_HUB_CACHE=<root>` works as well), local
annotations live under `<root>/data`, the MMEB-V2 tree under `<root>/mmeb`, the media cache under `<root>/cache`;
several tasks may be written into one root. Frame files are named `frame_<i>.jpg`, not zero-padded.
"""

from __future__ import annotations

from pathlib import Path

from eval.mmeb.video_classification import label_list
from eval.mmeb.video_qa import SUBSETS
from eval.tasks import get_task
from tests.published import frames, image, pack_media, source_kwargs, write_annotations

RETRIEVAL_FRAMES = (8, 30, 12)  # frames per video folder of the retrieval rows (the reference needs >= 8)
CLASSIFICATION_FRAMES = (8, 30, 5)  # the last one has fewer than 8: all of them are used


def _retrieval_row(task: str, i: int, key: str) -> dict:
    caption = f"{task} caption {i}"
    return {
        "MSR-VTT": {"video_id": key, "video": f"{key}.mp4", "caption": caption, "category": 3},
        "MSVD": {"video_id": key, "video": f"{key}.avi", "caption": [caption, "another caption"]},
        "DiDeMo": {"video": f"videos/{key}.mp4", "caption": caption},
        "YouCook2": {"id": key, "youtube_id": f"yt{i}", "video_path": f"validation/{key}.mp4", "sentence": caption},
        "VATEX": {"videoID": key, "enCap": [caption, "another caption"]},
    }[task]


def _retrieval(task: str, media: Path) -> list[dict]:
    rows = []
    for i, count in enumerate(RETRIEVAL_FRAMES):
        key = f"{task.lower()}_video{i}"
        frames(media / key, count)
        rows.append(_retrieval_row(task, i, key))
    return rows


def _classification(task: str, media: Path) -> list[dict]:
    if task == "SmthSmthV2":
        labels = ["Pushing something from left to right", "Pulling something from right to left"]
        rows = []
        for i, count in enumerate(CLASSIFICATION_FRAMES):
            frames(media / str(100 + i), count)
            rows.append({"video_id": 100 + i, "pos_text": labels[i % 2],  # integer ids, cast to str by the parser
                         "neg_text": [labels[1], labels[0], labels[1], "Something falling like a rock"]})
        return rows
    labels = label_list(get_task(task))
    rows = []
    for i, count in enumerate(CLASSIFICATION_FRAMES):
        frames(media / f"{task}_clip{i}", count)
        rows.append({"video_id": f"{task}_clip{i}", "pos_text": labels[[5, 2, 5][i]]})
    return rows


def _qa_row(task: str, i: int) -> tuple[str, dict]:
    """(frame folder, row) of a QA task."""
    question = f"What happens in clip {i}?"
    if task == "Video-MME":
        return f"mme{i}", {"video_id": f"00{i}", "duration": "short", "domain": "Knowledge", "sub_category": "Art",
                           "videoID": f"mme{i}", "question_id": f"00{i}-1", "task_type": "Counting",
                           "question": question, "options": ["A. Apples.", "B. Two pears", "C. Nothing.", "D. A cat."],
                           "answer": "BCD"[i % 3]}
    if task == "NExTQA":
        return str(4000 + i), {"video": 4000 + i, "frame_count": 300, "question": question, "answer": i % 5,
                               "qid": i, "type": "CW", **{f"a{k}": f"answer {k} of {i}" for k in range(5)}}
    if task == "EgoSchema":
        return f"ego{i}", {"video_idx": f"ego{i}", "question_idx": f"q{i}", "question": question,
                           "option": [f"{letter}. c does {letter}." for letter in "ABCDE"], "answer": str(i % 5)}
    if task == "ActivityNetQA":
        return f"v_anet{i}", {"video_name": f"anet{i}", "question_id": f"v_anet{i}_1", "type": 3,
                              "question": f"is the person outdoors in {i}", "answer": ("yes", "no")[i % 2]}
    raise KeyError(task)


def _qa(task: str, media: Path) -> list[dict] | dict:
    if task == "MVBench":  # one row per config; the last config's answer is not among its candidates
        configs = {}
        for i, subset in enumerate(SUBSETS):
            frames(media / subset / f"{subset}_{i}.mp4", 3)
            answer = "no answer" if i == len(SUBSETS) - 1 else "walk"
            configs[subset] = [{"video": f"{subset}_{i}.mp4", "question": f"{subset}: what happens?",
                                "candidates": ["walk", "run", "walk"], "answer": answer, "accurate": True}]
        return configs
    rows = []
    for i, count in enumerate((8, 30, 5)):
        folder, row = _qa_row(task, i)
        frames(media / folder, count)
        rows.append(row)
    return rows


def _moments(task: str, media: Path) -> list[dict]:
    if task == "MomentSeeker":
        return _moment_seeker(media)
    rows = []
    for i in range(2):
        folder = media / f"{task}_vid{i}_10.0_40.0"
        frames(folder / "query", 30)
        for clip in ("negative_0", "positive_0", "negative_1", "negative_2"):
            frames(folder / clip, 8)
        (folder / "clips.txt").write_text("not a clip folder\n", encoding="utf-8")
        rows.append({"query": f"{task} moment {i}", "video_path": f"videos/{folder.name}.mp4", "qid": i,
                     "duration": 150})
    return rows


def _moment_seeker(media: Path) -> list[dict]:
    clips = media / "video_frames"
    frames(clips / "ego4d_q0", 11)  # a video query: every frame is used
    image(media / "query_still_1.jpg")
    rows = [
        {"query": "the moment the door opens", "input_frames": "ego4d/q0.mp4",
         "positive_frames": [{"output_path": "ego4d/q0_pos_0.mp4", "start": 0}],
         "negative_frames": [{"output_path": "ego4d/q0_neg_0.mp4", "start": 1},
                             {"output_path": "ego4d/q0_neg_1.mp4", "start": 2}]},
        {"query": "where this object is used", "input_frames": "still_1.jpg",
         "positive_frames": [{"output_path": "movie/m1_pos_0.mp4", "start": 0},
                             {"output_path": "movie/m1_pos_1.mp4", "start": 1}],
         "negative_frames": [{"output_path": "movie/m1_neg_0.mp4", "start": 2}]},
        {"query": "someone plays the piano", "input_frames": "",
         "positive_frames": [{"output_path": "ego4d/q0_neg_1.mp4", "start": 0}],
         "negative_frames": [{"output_path": "movie/m1_pos_0.mp4", "start": 1}]},
    ]
    for i, name in enumerate(["ego4d_q0_pos_0", "ego4d_q0_neg_0", "ego4d_q0_neg_1", "movie_m1_pos_0",
                              "movie_m1_pos_1", "movie_m1_neg_0"]):
        frames(clips / name, 9 + i)
    return rows


WRITERS = {"video_retrieval": _retrieval, "video_classification": _classification, "video_qa": _qa,
           "moment_retrieval": _moments}


def configs_of(task: str, rows) -> dict:
    """The `{config: {split: rows}}` of `task`'s annotation repo (MVBench: one config per subset)."""
    _, config, split = get_task(task).hub
    if isinstance(rows, dict):
        return {name: {split: subset_rows} for name, subset_rows in rows.items()}
    return {config: {split: rows}}


def write_rows(task: str, layout: str, root, rows) -> dict:
    """Write `rows` (a list, or `{config: rows}` for MVBench) as `task`'s annotations in `layout` under `root`
    (frames must already be in `<root>/mmeb`); returns the `DataSource` keyword arguments."""
    root = Path(root)
    repo = get_task(task).hub[0]
    write_annotations(layout, root if layout == "hub" else root / "data", repo, configs_of(task, rows))
    if layout == "hub":
        pack_media(root / "mmeb", root)
    return source_kwargs(layout, root)


def write(task: str, layout: str, root) -> dict:
    """A 2-4 row fixture of any of the 18 video tasks, annotations in `layout` and frames in `<root>/mmeb`;
    returns the `DataSource` keyword arguments."""
    spec = get_task(task)
    if spec.modality != "video":
        raise KeyError(f"{task} is not a video task")
    rows = WRITERS[spec.format](task, Path(root) / "mmeb" / spec.media)
    return write_rows(task, layout, root, rows)

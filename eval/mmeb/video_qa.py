"""Video question answering (Video-MME, NExTQA, EgoSchema, MVBench, ActivityNetQA): a video and a question rank
that row's answer options (local).

As the reference's `videomme/nextqa/egoschema/mvbench/activitynetqa_dataset.py` read them: the query is
`TASK_PROMPT` (the instruction), the question and its options (the text), and `num_frames` frames of the video
(all of them when the folder has fewer; no padding). Per dataset:
* Video-MME: text `question + "\\n" + options joined by "\\n"`; candidate name = the raw option (`"A. ..."`),
  encoded text = the option from its first `". "` on, with '.' and ' ' stripped at both ends; gold = the option
  at the answer letter (A-D). Frames `<videoID>`.
* NExTQA: text `question + "\\nOptions:\\n(A) a0\\n..."` (trailing whitespace stripped); candidates the raw
  `a0..a4`; gold `a[answer]`. Frames `<video>`.
* EgoSchema: text `question` with the options joined by single spaces glued to it; candidates as Video-MME;
  gold `option[int(answer)]`. Frames `<video_idx>`.
* MVBench: 20 configs (`SUBSETS`, split from the registry), concatenated; text as NExTQA; candidates
  `"(X) candidate"`; gold `"(X) answer"` with X the last candidate equal to the answer, `"(@) answer"` (never
  matching) when none is. Frames `<subset>/<video>`.
* ActivityNetQA: text `question + "? (A) yes; (B) no."`; candidates `yes`, `no`; gold the answer. Frames
  `v_<video_name>`.
"""

from __future__ import annotations

from pathlib import Path

from eval.data import TaskData, TaskDataError
from eval.mmeb import columns
from eval.mmeb.source import DataSource
from eval.mmeb.video_common import media_root, new_task, records, text_row, video, video_row, where
from eval.tasks import TaskSpec

TASK_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
               "Return only the exact text of your chosen answer. Question: ")
LETTERS = ("A", "B", "C", "D")
YES_NO = ("yes", "no")
# MVBench configs in the order of the reference's subset_meta
SUBSETS = ("episodic_reasoning", "action_sequence", "action_prediction", "action_antonym", "fine_grained_action",
           "unexpected_action", "object_existence", "object_interaction", "object_shuffle", "moving_direction",
           "action_localization", "scene_transition", "action_count", "moving_count", "moving_attribute",
           "state_change", "fine_grained_pose", "character_order", "egocentric_navigation",
           "counterfactual_inference")


def option_text(option: str) -> str:
    """The encoded text of a Video-MME/EgoSchema option: from its first `". "` on, '.'/' ' stripped (the
    reference's slice, including its quirk: without `". "` only the last character is kept)."""
    return option[option.find(". "):].strip(". ")


def lettered(question: str, candidates: list[str]) -> tuple[str, list[str]]:
    """The reference's `qa_template`: the question with `"\\nOptions:\\n(A) ...\\n(B) ..."` (right-stripped) and
    the `"(X) candidate"` strings."""
    options = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(candidates)]
    return (f"{question}\nOptions:\n" + "".join(f"{o}\n" for o in options)).rstrip(), options


def _id(record: dict, column: str, spec: TaskSpec, index) -> str:
    """A video id that the reference formats into a path with an f-string (a string or an integer)."""
    value = record.get(column)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return columns.text(record, column, spec.name, index)


def _index(value, count: int, spec: TaskSpec, index, column: str) -> int:
    """`int(value)` as the reference casts it (an int, a digit string or an integral float), checked."""
    position = None
    if isinstance(value, float) and value.is_integer():
        position = int(value)
    elif isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            position = int(value)
        except ValueError:
            pass
    if position is None or not 0 <= position < count:
        raise TaskDataError(f"{where(spec, index, column)}: expected an option index in 0..{count - 1}, got "
                            f"{value!r:.40}")
    return position


def _videomme(record, spec, index):
    options = columns.text_list(record, "options", spec.name, index)
    answer = columns.text(record, "answer", spec.name, index)
    if answer not in LETTERS[:len(options)]:
        raise TaskDataError(f"{where(spec, index, 'answer')}: expected one of {list(LETTERS[:len(options)])}, "
                            f"got {answer!r:.40}")
    text = columns.text(record, "question", spec.name, index) + "\n" + "\n".join(options)
    names = [(o, option_text(o)) for o in options]
    return _id(record, "videoID", spec, index), text, names, options[LETTERS.index(answer)]


def _nextqa(record, spec, index):
    options = [columns.text(record, f"a{i}", spec.name, index) for i in range(5)]
    answer = record.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise TaskDataError(f"{where(spec, index, 'answer')}: expected an integer, got {answer!r:.40}")
    text, _ = lettered(columns.text(record, "question", spec.name, index), options)
    gold = options[_index(answer, len(options), spec, index, "answer")]
    return _id(record, "video", spec, index), text, [(o, o) for o in options], gold


def _egoschema(record, spec, index):
    options = columns.text_list(record, "option", spec.name, index)
    answer = _index(record.get("answer"), len(options), spec, index, "answer")
    text = columns.text(record, "question", spec.name, index) + " ".join(options)
    return _id(record, "video_idx", spec, index), text, [(o, option_text(o)) for o in options], options[answer]


def _mvbench(record, spec, index):
    candidates = columns.text_list(record, "candidates", spec.name, index)
    answer = columns.text(record, "answer", spec.name, index)
    text, options = lettered(columns.text(record, "question", spec.name, index), candidates)
    position = max((i for i, c in enumerate(candidates) if c == answer), default=-1)
    gold = f"({chr(ord('A') + position)}) {answer}"  # position -1 gives "(@) ...", which matches no option
    folder = f"{columns.text(record, 'subset', spec.name, index)}/{_id(record, 'video', spec, index)}"
    return folder, text, [(o, o) for o in options], gold


def _activitynetqa(record, spec, index):
    answer = columns.text(record, "answer", spec.name, index)
    if answer not in YES_NO:
        raise TaskDataError(f"{where(spec, index, 'answer')}: expected 'yes' or 'no', got {answer!r:.40}")
    text = columns.text(record, "question", spec.name, index) + "? (A) yes; (B) no."
    return "v_" + _id(record, "video_name", spec, index), text, [(o, o) for o in YES_NO], answer


# task -> (columns the parser reads, row -> (frame folder, query text, [(candidate name, text)], gold name))
DATASETS = {
    "Video-MME": (("question", "videoID", "options", "answer", "question_id", "domain", "sub_category"), _videomme),
    "NExTQA": (("video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"), _nextqa),
    "EgoSchema": (("video_idx", "question", "answer", "question_idx", "option"), _egoschema),
    "MVBench": (("subset", "question", "video", "candidates", "answer"), _mvbench),
    "ActivityNetQA": (("video_name", "question", "answer", "question_id"), _activitynetqa),
}


def _records(spec: TaskSpec, source: DataSource) -> list[dict]:
    if spec.name != "MVBench":
        return records(spec, source)
    rows = []
    for subset in SUBSETS:  # the reference concatenates the configs and adds a `subset` column
        rows += [dict(record, subset=subset) for record in records(spec, source, config=subset)]
    return rows


def load(spec: TaskSpec, source: DataSource, num_frames: int = 8) -> TaskData:
    """Load a video QA task (see the module docstring)."""
    if spec.name not in DATASETS:
        raise TaskDataError(f"task {spec.name}: not a video QA task (one of {list(DATASETS)})")
    required, parse = DATASETS[spec.name]
    root: Path = media_root(spec, source)
    data = new_task(spec)
    for index, record in enumerate(_records(spec, source)):
        columns.require(record, required, spec.name, index)
        folder, text, candidates, gold = parse(record, spec, index)
        frames = video(root / folder, num_frames, where(spec, index))
        for name, candidate_text in candidates:
            data.add_candidate(name, text_row(candidate_text))
        data.add_query(index, video_row(frames, TASK_PROMPT, text), {gold: 1.0}, [name for name, _ in candidates])
    return data.check()

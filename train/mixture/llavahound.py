"""LLaVA-Hound video training data (`ShareGPTVideo/train_video_and_instruction`, cloned and unpacked as the
reference's `download_data.sh` does): JSON-lines annotations under `video_instruction/train/sft/`, one object per
line with `id`, `video` (a frame folder name under `train_300k/`) and `conversations` (`[{"from": "human",
"value": "<video>\\n..."}, {"from": "gpt", "value": "..."}]`), and frame folders of `.jpg` files.

`num_frames` frames (8 in the mixture) are picked as the reference picks them (`train.frames.sample_frames`:
floor(i * (n - 1) / (k - 1)) in natural order, every frame of a shorter folder). Rows whose frame folder is missing or
empty are left out, as the reference leaves them out, with one warning giving their number. Row id: the line index
(kept when rows are left out).

* `read_caption` (`video_caption_300k`), by `spec.mode`: `"caption_retrieval"` (video + the human turn -> the
  caption) or `"video_retrieval"` (the caption -> the video);
* `read_qa` (`video_qa_240k`): video + question -> answer.
"""

from __future__ import annotations

from transformers.utils import logging

from train.frames import sample_frames
from train.tables import read_training_table

from .schema import FEATURES, ReadContext, require_columns, training_row

logger = logging.get_logger(__name__)

MODES = ("caption_retrieval", "video_retrieval")
VIDEO_RETRIEVAL_QUERY = "Find a video that contains the following visual content:"
VIDEO_RETRIEVAL_TARGET = "Understand the content of the provided video:"
QA_INSTRUCTION = "Answer a question based on the content of a video."


def _turns(row: dict, where: str) -> tuple[str, str]:
    """The first human and model turns of a conversation, `<video>` removed."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        raise ValueError(f"{where}: 'conversations' must hold a human and a model turn, got {str(turns)[:80]}")
    texts = [turns[i].get("value") for i in (0, 1)]
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{where}: conversation turns need a string 'value', got {str(turns[:2])[:80]}")
    return texts[0].replace("<video>", "").strip(), texts[1].strip()


def _read(spec, context: ReadContext, build):
    """Rows of a LLaVA-Hound annotation file: `build(question, answer, frames)` gives each row's fields."""
    if not spec.frames_root:
        raise ValueError(f"dataset {spec.name!r}: LLaVA-Hound sources need 'frames_root' (the train_300k folder)")
    table = read_training_table(spec.path, None, spec.split, name=spec.name, data_root=context.data_root)
    require_columns(table, ("video", "conversations"), spec.name, spec.path)
    table = table.select_columns(["video", "conversations"])
    frames_root, name, num_frames = context.resolve(spec.frames_root), spec.name, spec.num_frames

    def convert(batch: dict, indices: list[int]) -> dict:
        out = {column: [] for column in FEATURES}
        for index, video, turns in zip(indices, batch["video"], batch["conversations"], strict=True):
            where = f"dataset {name!r} row {index}"
            try:
                frames = [str(p) for p in sample_frames(frames_root / str(video), num_frames, where)]
            except FileNotFoundError:
                continue
            row = training_row(name, str(index), **build(*_turns({"conversations": turns}, where), frames))
            for column, value in row.items():
                out[column].append(value)
        return out

    rows = table.map(convert, batched=True, with_indices=True, remove_columns=table.column_names, features=FEATURES,
                     load_from_cache_file=False, desc=f"Listing the frames of {name}")
    if len(rows) < len(table):
        logger.warning(f"dataset {name!r}: {len(table) - len(rows)} of {len(table)} rows left out, their frame "
                       f"folder under {frames_root} is missing or has no frames")
    return rows


def read_caption(spec, context: ReadContext):
    """`video_caption_300k` rows in `spec.mode` (`"caption_retrieval"` or `"video_retrieval"`)."""
    mode = spec.mode or "caption_retrieval"
    if mode not in MODES:
        raise ValueError(f"dataset {spec.name!r}: mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "caption_retrieval":
        def build(prompt, caption, frames):
            return {"qry_text": prompt, "qry_video": frames, "pos_text": caption}
    else:
        query = VIDEO_RETRIEVAL_QUERY if spec.instruction is None else spec.instruction
        target = VIDEO_RETRIEVAL_TARGET if spec.target_instruction is None else spec.target_instruction

        def build(prompt, caption, frames):
            return {"qry_instruction": query, "qry_text": caption, "pos_text": target, "pos_video": frames}
    return _read(spec, context, build)


def read_qa(spec, context: ReadContext):
    """`video_qa_240k` rows: video + question -> answer."""
    instruction = QA_INSTRUCTION if spec.instruction is None else spec.instruction

    def build(question, answer, frames):
        return {"qry_instruction": instruction, "qry_text": question, "qry_video": frames, "pos_text": answer}
    return _read(spec, context, build)

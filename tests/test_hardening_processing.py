"""Issue 13, processor side: ECR parsing and truncation that keep the answer, and input errors that name the row and
field (and path) instead of a library error or a silently wrong batch."""

from __future__ import annotations

import logging
import struct
import zlib

import pytest
from transformers.testing_utils import CaptureLogger

import processing_tte
from processing_tte import REASONER_PROMPTS, TASK_TYPES, TTEProcessor, answer_only, format_ecr, parse_ecr
from tests.helpers import solid


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl):
    return TTEProcessor.from_backbone(tiny_qwen2_vl)


def n_tokens(processor, text: str) -> int:
    return len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])


def assistant_turn(processor, batch, index=0) -> str:
    text = processor.tokenizer.decode(batch["input_ids"][index], skip_special_tokens=False)
    return text.replace(processor.tokenizer.pad_token, "").split("<|im_start|>assistant\n", 1)[1]


# ---------------------------------------------------------------- A: ECR parsing and truncation
@pytest.mark.parametrize(("text", "think", "answer"), [
    ("<think>the card is red. Answer: red", "the card is red.", "red"),
    ("<think>first\nAnswer: maybe\nno, wait\nAnswer: red", "first\nAnswer: maybe\nno, wait", "red"),
    ("<think>cut off mid-thought", "cut off mid-thought", None),
    ("<think>a FinalAnswer: not a line", "a FinalAnswer: not a line", None),
])
def test_unclosed_think_still_has_its_answer(text, think, answer):
    assert (parse_ecr(text).think, parse_ecr(text).answer) == (think, answer)


def test_truncating_an_unclosed_think_keeps_the_answer(processor):
    ecr = "<think>" + "red to green. " * 100 + "Answer: green"
    short = processor.truncate_ecr(ecr, max_tokens=30)
    assert n_tokens(processor, short) <= 30
    assert parse_ecr(short).answer == "green" and short.startswith("<think>red to green.")


def test_an_answer_longer_than_the_budget_is_kept_and_the_reasoning_goes(processor, caplog):
    answer = " ".join(["a red square next to a blue circle"] * 10)
    ecr = format_ecr("short reasoning", answer)
    with caplog.at_level(logging.WARNING):
        short = processor.truncate_ecr(ecr, max_tokens=12)
    assert n_tokens(processor, short) <= 12
    assert short.startswith("Answer: a red square") and "short reasoning" not in short
    assert "answer of an ECR alone exceeds max_ecr_tokens=12" in caplog.text
    # an answer that fits with room to spare keeps as much reasoning as fits
    kept = processor.truncate_ecr(format_ecr("one two three " * 30, "red"), max_tokens=20)
    assert n_tokens(processor, kept) <= 20 and parse_ecr(kept).answer == "red" and parse_ecr(kept).think


def test_answer_before_prose_without_think_tags_survives_truncation(processor):
    ecr = "the card looks red to me " * 30 + "Answer: red"
    short = processor.truncate_ecr(ecr, max_tokens=15)
    assert n_tokens(processor, short) <= 15 and short.endswith("Answer: red") and short.startswith("the card")


def test_answer_only_without_an_answer_line_warns_and_embeds_no_ecr(tiny_qwen2_vl):
    type(processing_tte.logger).warning_once.cache_clear()  # warning_once remembers messages process-wide
    with CaptureLogger(processing_tte.logger) as captured:
        assert answer_only("<think>only reasoning, never an answer</think>") == ""
    assert "no 'Answer:' line" in captured.out and "without ECR" in captured.out
    with CaptureLogger(processing_tte.logger) as captured:
        assert answer_only("<think>reasoning</think> leftover words") == "leftover words"
    assert "no 'Answer:' line" in captured.out
    only = TTEProcessor.from_backbone(tiny_qwen2_vl, ecr_mode="answer_only")
    batch = only.process_queries([{"text": "q", "ecr": "<think>only reasoning</think>"}])
    assert assistant_turn(only, batch) == "<|im_end|>"


# ---------------------------------------------------------------- C: input errors naming the row and field
@pytest.mark.parametrize(("row", "error", "message"), [
    ({"text": "a <|image_pad|> b"}, ValueError, r"query row 1 field 'text' contains the backbone's media token "
                                                r"'<\|image_pad\|>'"),
    ({"text": "q", "instruction": "see <|video_pad|>"}, ValueError, r"query row 1 field 'instruction' contains .*"
                                                                    r"'<\|video_pad\|>'"),
    ({"text": "q", "ecr": "Answer: <|image_pad|>"}, ValueError, r"query row 1 field 'ecr' contains"),
    ({"text": "bad \ud800 text"}, ValueError, r"query row 1 field 'text' is not valid Unicode: a lone surrogate"),
    ({"text": 123}, TypeError, r"query row 1 field 'text' must be a string, got int 123"),
    ({"text": "q", "instruction": float("nan")}, TypeError, r"query row 1 field 'instruction' must be a string"),
])
def test_bad_text_fields_name_the_row_and_field(processor, row, error, message):
    with pytest.raises(error, match=message):
        processor.process_queries([{"text": "fine"}, row])


def test_bad_text_in_reasoner_inputs_names_the_row(processor):
    with pytest.raises(TypeError, match=r"target row 0 field 'text' must be a string"):
        processor.process_reasoner_inputs([{"text": ["a", "list"]}], task_type="vqa", side="target")


def test_rows_must_be_a_list(processor):
    with pytest.raises(ValueError, match=r"^process_queries needs at least one row$"):
        processor.process_queries([])
    with pytest.raises(ValueError, match=r"^process_targets needs at least one row$"):
        processor.process_targets([])
    with pytest.raises(TypeError, match=r"process_queries expects a list of rows \(dicts\), got a dict; wrap a single"):
        processor.process_queries({"text": "a red square"})
    with pytest.raises(TypeError, match=r"process_reasoner_inputs expects a list of rows"):
        processor.process_reasoner_inputs({"text": "q"}, task_type="vqa")
    with pytest.raises(TypeError, match=r"process_targets expects a list of rows \(dicts\), got a str"):
        processor.process_targets("a red square")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` 1-bit pixels (PIL checks the size when it opens it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_names_the_row_and_path(processor, tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(20000, 20000))  # 4e8 pixels, over twice PIL's MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"target row 1 field 'image': cannot read image .*bomb\.png.*exceeds limit"):
        processor.process_targets([{"text": "ok"}, {"image": str(bomb)}])


def test_extreme_aspect_ratio_names_the_row_and_path(processor, tmp_path):
    path = tmp_path / "sliver.png"
    solid("red").resize((2, 600)).save(path)
    with pytest.raises(ValueError, match=r"query row 2 field 'image' \(.*sliver\.png\): the backbone processor "
                                         r"rejects it: absolute aspect ratio"):
        processor.process_queries([{"text": "ok"}, {"image": solid("blue")}, {"image": str(path), "text": "x"}])
    with pytest.raises(ValueError, match=r"query row 0 field 'image': the backbone processor rejects it"):
        processor.process_reasoner_inputs([{"image": solid("red").resize((600, 2))}], task_type="vqa")


# ---------------------------------------------------------------- E: the target side has its own directive
@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_reasoner_uses_the_directive_of_its_side(processor, task_type):
    query_directive, target_directive = REASONER_PROMPTS[task_type]
    assert query_directive != target_directive
    for side, own, other in (("query", query_directive, target_directive),
                             ("target", target_directive, query_directive)):
        batch = processor.process_reasoner_inputs([{"text": "a red square"}], task_type=task_type, side=side)
        prompt = processor.tokenizer.decode(batch["input_ids"][0])
        assert own in prompt and other not in prompt, side


def test_target_directive_text():
    assert REASONER_PROMPTS["vqa"][1] == "Restate this answer and the kind of question it answers."
    assert REASONER_PROMPTS["retrieval"][1].startswith("Summarise the key content of this candidate")

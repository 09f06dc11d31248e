import logging

import pytest
import torch

from processing_tte import TASK_TYPES, TTEProcessor, answer_only, format_ecr, parse_ecr
from tests.helpers import mixed_rows, solid


@pytest.fixture(scope="module")
def processor(tiny_qwen2_vl):
    return TTEProcessor.from_backbone(tiny_qwen2_vl)


def decoded(processor, batch, index=0):
    text = processor.tokenizer.decode(batch["input_ids"][index], skip_special_tokens=False)
    return text.replace(processor.tokenizer.pad_token, "")


@pytest.mark.parametrize(
    ("text", "think", "answer"),
    [
        ("<think>black to red. red to green.</think> Answer: green", "black to red. red to green.", "green"),
        ("<think>\n multi\n line \n</think>\nAnswer:  a red car \n", "multi\n line", "a red car"),
        ("Answer: only", None, "only"),
        ("<think>no answer yet</think>", "no answer yet", None),
        ("<think>cut off mid-thought", "cut off mid-thought", None),
        ("plain text", None, None),
        ("<think>Answer: inside</think> Answer: outside", "Answer: inside", "outside"),
    ],
)
def test_parse_ecr(text, think, answer):
    parsed = parse_ecr(text)
    assert (parsed.think, parsed.answer) == (think, answer)


def test_format_and_answer_only():
    assert format_ecr("a to b.", "b") == "<think>a to b.</think> Answer: b"
    assert answer_only("<think>long reasoning</think> Answer: b") == "Answer: b"
    assert answer_only("<think>no answer</think> leftover") == "leftover"


def test_embedder_input_puts_ecr_in_the_assistant_turn(processor):
    batch = processor.process_queries(mixed_rows())
    text = decoded(processor, batch)
    assert text.index("Find a caption.") < text.index("<|im_start|>assistant") < text.index("<think>It is red.")
    assert text.endswith("Answer: red<|im_end|>")
    assert text.count("<|image_pad|>") == 4  # 32x32 image, patch 8, merge 2
    media_keys = {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"}
    assert media_keys <= set(batch)
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]]  # 3 frames -> 2 temporal patches of 2
    assert decoded(processor, batch, 2).endswith("assistant\n<|im_end|>")  # no ECR


def test_ecr_modes(tiny_qwen2_vl):
    row = [{"text": "q", "ecr": "<think>step one</think> Answer: b"}]
    texts = {mode: decoded(p, p.process_queries(row)) for mode in ("full", "answer_only", "none")
             for p in [TTEProcessor.from_backbone(tiny_qwen2_vl, ecr_mode=mode)]}
    assert "<think>step one</think> Answer: b<|im_end|>" in texts["full"]
    assert "assistant\nAnswer: b<|im_end|>" in texts["answer_only"] and "step one" not in texts["answer_only"]
    assert texts["none"].endswith("assistant\n<|im_end|>")
    with pytest.raises(ValueError, match="ecr_mode"):
        TTEProcessor.from_backbone(tiny_qwen2_vl, ecr_mode="cot")


def test_over_long_ecr_is_truncated_keeping_the_answer(processor, caplog):
    ecr = format_ecr(" ".join(["red to green."] * 200), "green")
    with caplog.at_level(logging.WARNING):
        short = processor.truncate_ecr(ecr, max_tokens=40)
    assert "Truncating an ECR" in caplog.text
    assert len(processor.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 40
    assert parse_ecr(short).answer == "green" and short.startswith("<think>red to green.")
    assert processor.truncate_ecr("Answer: green", max_tokens=40) == "Answer: green"
    no_answer = processor.truncate_ecr("red " * 300, max_tokens=10)
    assert len(processor.tokenizer(no_answer, add_special_tokens=False)["input_ids"]) <= 10


def test_images_and_videos_from_paths(processor, tmp_path):
    solid("red").save(tmp_path / "red.png")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, colour in enumerate(["red", "blue", "green", "black"]):
        solid(colour).save(frames / f"{i:03d}.jpg")
    from_paths = processor.process_queries([{"image": str(tmp_path / "red.png"), "text": "x"},
                                            {"video": frames, "text": "y"}])
    from_pil = processor.process_queries([{"image": solid("red"), "text": "x"},
                                          {"video": [solid(c) for c in ["red", "blue", "green", "black"]],
                                           "text": "y"}])
    assert torch.equal(from_paths["input_ids"], from_pil["input_ids"])
    torch.testing.assert_close(from_paths["pixel_values"], from_pil["pixel_values"])
    assert from_paths["video_grid_thw"].tolist() == [[2, 4, 4]]


@pytest.mark.parametrize("task_type", TASK_TYPES)
@pytest.mark.parametrize("side", ["query", "target"])
def test_reasoner_prompts(processor, task_type, side):
    messages, media = processor.reasoner_messages({"image": solid("red"), "instruction": "Do it.", "text": "t"},
                                                  task_type, side, hint="green")
    text = messages[0]["content"][-1]["text"]
    assert text.startswith("Do it.\nt\n") and "<think>" in text and "Answer:" in text
    assert "green" in text and "do not mention it" in text
    assert len(media["images"]) == 1
    plain, _ = processor.reasoner_messages({"text": "t"}, task_type, side)
    assert "Hint" not in plain[0]["content"][-1]["text"]


def test_reasoner_inputs_are_left_padded_generation_prompts(processor):
    rows = [{"text": "short"}, {"image": solid("red"), "text": "a much longer query with many words in it"}]
    batch = processor.process_reasoner_inputs(rows, task_type="vqa")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert decoded(processor, batch, 1).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="task_type must be one of"):
        processor.process_reasoner_inputs(rows, task_type="ranking")
    with pytest.raises(ValueError, match="side must be one of"):
        processor.reasoner_messages(rows[0], "vqa", side="both")


def test_missing_image_names_row_and_path(processor, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"query row 1 field 'image'.*nope\.png"):
        processor.process_queries([{"text": "ok"}, {"image": str(tmp_path / "nope.png")}])


def test_unreadable_image_names_row_and_path(processor, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"target row 0 field 'image'.*broken\.png"):
        processor.process_targets([{"image": tmp_path / "broken.png"}])


def test_empty_row_is_rejected(processor):
    with pytest.raises(ValueError, match="query row 1: needs an image, a video or non-empty text"):
        processor.process_queries([{"text": "fine"}, {"text": "   ", "instruction": "Represent it."}])
    with pytest.raises(ValueError, match="at least one row"):
        processor.process_targets([])


def test_bad_videos_are_named(processor, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"query row 0 field 'video'.*missing"):
        processor.process_queries([{"video": tmp_path / "missing"}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"query row 0 field 'video': video has no frames"):
        processor.process_queries([{"video": tmp_path / "empty"}])


def test_not_a_vlm_processor(tmp_path):
    from train.tiny_backbone import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)
    with pytest.raises((ValueError, OSError)):
        TTEProcessor.from_backbone(str(tmp_path))

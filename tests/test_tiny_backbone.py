import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.conftest import FAMILIES
from train.tiny_backbone import SPECIAL_TOKENS, main


@pytest.mark.parametrize("family", FAMILIES)
def test_command_writes_a_complete_checkpoint(tmp_path, family, capsys):
    main(["--family", family, "--out", str(tmp_path), "--hidden-size", "32"])
    assert capsys.readouterr().out.strip() == str(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert model.config.model_type == family and model.config.get_text_config().hidden_size == 32
    assert processor.video_processor is not None and processor.image_processor.patch_size == 8
    tokenizer = processor.tokenizer
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 1 for t in SPECIAL_TOKENS)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_chat_template_marks_assistant_tokens(tiny_qwen2_vl):
    tokenizer = AutoProcessor.from_pretrained(tiny_qwen2_vl).tokenizer
    messages = [{"role": "user", "content": [{"type": "text", "text": "Which colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Answer: red"}]}]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    assistant = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(assistant) == "Answer: red<|im_end|>"

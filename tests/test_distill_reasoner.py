"""Student distillation with TRL SFTTrainer: loss falls, only unfrozen weights move, the result is a reasoner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from trl import ModelConfig, SFTConfig

from processing_tte import TTEProcessor
from train.distill_reasoner import DistillArguments, build_trainer, main, save_student, vision_tower
from train.ecr_store import ECRRecord, ECRStore
from train.generate_ecr import ECRRequest, LocalBackend, run_generation

RECIPES = Path(__file__).resolve().parent.parent / "train" / "recipes"
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


@pytest.fixture
def teacher_data(tmp_path):
    """An MMEB jsonl with image queries and text targets, and a teacher store holding their ECR."""
    root = tmp_path / "images"
    root.mkdir()
    lines, records = [], []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
        lines.append({"qry": f"<|image_1|>\nWhat colour is card {i}?", "qry_image_path": f"{i}.png",
                      "pos_text": colour, "pos_image_path": ""})
        records.append(ECRRecord("demo", str(i), "query", f"<think>The card is {colour}.</think> Answer: {colour}",
                                 colour, "teacher", "0" * 16))
        records.append(ECRRecord("demo", str(i), "target", f"<think>{colour} colour</think> Answer: {colour}",
                                 colour, "teacher", "0" * 16))
    data = tmp_path / "demo.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ECRStore(tmp_path / "teacher").add(records[:-1])  # the last target has no ECR: left out, not an error
    args = DistillArguments(ecr_store=str(tmp_path / "teacher"), image_root=str(root),
                            datasets=[{"name": "demo", "path": str(data), "task_type": "vqa"}])
    return args, data, root


def sft_config(tmp_path, **overrides) -> SFTConfig:
    settings = dict(output_dir=str(tmp_path / "run"), max_steps=8, per_device_train_batch_size=4,
                    learning_rate=3e-3, lr_scheduler_type="constant", bf16=False, gradient_checkpointing=False,
                    use_cpu=True, report_to="none", logging_steps=1, save_strategy="no", seed=0,
                    dataloader_num_workers=0, per_device_eval_batch_size=11)
    return SFTConfig(**{**settings, **overrides})


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def test_full_finetune_lowers_loss_freezes_vision_and_yields_a_reasoner(tiny_qwen2_vl, teacher_data, tmp_path):
    args, data, root = teacher_data
    trainer = build_trainer(args, sft_config(tmp_path), ModelConfig(model_name_or_path=tiny_qwen2_vl,
                                                                    dtype="float32"))
    assert len(trainer.train_dataset) == 11
    example = trainer.train_dataset[0]  # demo/0/query: its prompt is exactly the generation prompt, no hint
    request = ECRRequest("demo", "0", "query", {"image": str(root / "0.png"), "text": "What colour is card 0?"}, "vqa")
    _, _, generation_prompt = LocalBackend(tiny_qwen2_vl, TTEProcessor.from_backbone(tiny_qwen2_vl)).prepare(request)
    sft_prompt = trainer.processing_class.apply_chat_template(example["prompt"], tokenize=False,
                                                              add_generation_prompt=True)
    assert sft_prompt == generation_prompt and "Hint" not in sft_prompt
    assert example["completion"][0]["content"][0]["text"].startswith("<think>The card is red.")
    before_loss = trainer.evaluate(eval_dataset=trainer.train_dataset)["eval_loss"]
    vision_name, _ = vision_tower(trainer.model)
    before = snapshot(trainer.model)
    trainer.train()
    after_loss = trainer.evaluate(eval_dataset=trainer.train_dataset)["eval_loss"]
    assert after_loss < 0.8 * before_loss
    after = snapshot(trainer.model)
    vision = [n for n in before if n.startswith(vision_name + ".")]
    language = [n for n in before if not n.startswith(vision_name + ".")]
    assert vision and all(torch.equal(before[n], after[n]) for n in vision)
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if n in vision)
    changed = [n for n in language if not torch.equal(before[n], after[n])]
    assert len(changed) >= 0.9 * len(language)

    student = save_student(trainer, tmp_path / "student")
    backend = LocalBackend(str(student), name="student", max_new_tokens=16)
    request = ECRRequest("eval", "0", "query", {"image": str(root / "2.png"), "text": "What colour is card 2?"}, "vqa")
    report = run_generation([request], ECRStore(tmp_path / "student-ecr"), backend, show_progress=False)
    assert report.done == 1 and report.ecr_tokens > 0
    record = ECRStore(tmp_path / "student-ecr").get("eval", "0", "query")
    assert record.reasoner == "student" and record.ecr


def test_lora_trains_adapters_only_and_merges(tiny_qwen2_vl, teacher_data, tmp_path):
    args, _, _ = teacher_data
    model_args = ModelConfig(model_name_or_path=tiny_qwen2_vl, dtype="float32", use_peft=True, lora_r=4,
                             lora_alpha=8)
    trainer = build_trainer(args, sft_config(tmp_path, max_steps=3), model_args)
    before = snapshot(trainer.model)
    trainer.train()
    after = snapshot(trainer.model)
    lora = [n for n in before if "lora_" in n]
    assert lora and not any("visual" in n for n in lora)  # no adapter on the frozen vision tower
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(before[n], after[n]) for n in lora)
    folder = save_student(trainer, tmp_path / "merged")
    from transformers import AutoModelForImageTextToText

    merged = AutoModelForImageTextToText.from_pretrained(folder)
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_cli_recipe_and_bad_inputs(tiny_qwen2_vl, teacher_data, tmp_path):
    args, data, root = teacher_data
    dataset = json.dumps({"name": "demo", "path": str(data), "task_type": "vqa"})
    folder = main(["--config", str(RECIPES / "distill_tiny_cpu.yaml"), "--model_name_or_path", tiny_qwen2_vl,
                   "--ecr_store", args.ecr_store, "--image_root", str(root), "--datasets", dataset,
                   "--output_dir", str(tmp_path / "cli"), "--max_steps", "1"])
    assert (folder / "config.json").exists() and (folder / "chat_template.jinja").exists()
    with pytest.raises(ValueError, match="no training example"):
        build_trainer(DistillArguments(ecr_store=str(tmp_path / "empty"), datasets=[json.loads(dataset)],
                                       image_root=str(root)), sft_config(tmp_path),
                      ModelConfig(model_name_or_path=tiny_qwen2_vl))
    with pytest.raises(ValueError, match=r"dataset spec 0 \('d'\): unknown keys \['colour'\]"):
        DistillArguments(ecr_store="x", datasets=[{"name": "d", "path": "p", "colour": "red"}])


def test_sft_batches_supervise_only_the_completion_tokens(tiny_qwen2_vl, teacher_data, tmp_path):
    """The loss covers the teacher's ECR (and the end-of-turn token that closes it), never the prompt: whatever
    SFTConfig asked for, the labels of every training batch are -100 up to the assistant turn."""
    args, _, _ = teacher_data
    trainer = build_trainer(args, sft_config(tmp_path, completion_only_loss=False),
                            ModelConfig(model_name_or_path=tiny_qwen2_vl, dtype="float32"))
    tokenizer = trainer.processing_class.tokenizer
    completions = {example["completion"][0]["content"][0]["text"] for example in trainer.train_dataset}
    assistant = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    rows = 0
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
            ids, labels = ids.tolist(), labels.tolist()
            starts = [i + len(assistant) for i in range(len(ids)) if ids[i:i + len(assistant)] == assistant]
            assert len(starts) == 1
            supervised = [i for i, label in enumerate(labels) if label != -100]
            assert supervised and min(supervised) >= starts[0]  # nothing of the prompt (or the image) is trained on
            assert all(labels[i] == ids[i] for i in supervised)
            text = tokenizer.decode([ids[i] for i in supervised])
            assert text.removesuffix("\n").removesuffix("<|im_end|>") in completions
            rows += 1
    assert rows == len(trainer.train_dataset)

"""TTEContrastiveTrainer end to end: what trains, what stays frozen, homogeneous batches, the entry script and a
checkpoint that reloads in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.contrastive_utils import contrastive_args, make_rows
from train.collators import TTEContrastiveCollator
from train.data import HomogeneousSampler, write_toy_mmeb
from train.trainer import TTEContrastiveTrainer, prepare_model_for_training

REPO = Path(__file__).resolve().parent.parent


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _train(model, processor, tmp_path, steps=3, **overrides):
    rows = make_rows(8, dataset="a") + make_rows(8, dataset="b", start=8)
    args = contrastive_args(tmp_path, max_steps=steps, learning_rate=0.05, **overrides)
    trainer = TTEContrastiveTrainer(model=model, args=args, train_dataset=rows,
                                    data_collator=TTEContrastiveCollator(processor))
    trainer.train()
    return trainer


def test_unified_mode_trains_the_head_and_leaves_the_backbone_bit_identical(tiny_qwen2_vl, tmp_path):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="attention_pooler",
                                          head_num_heads=4, head_num_queries=4)
    model = prepare_model_for_training(model)
    before = _snapshot(model)
    _train(model, TTEProcessor.from_backbone(tiny_qwen2_vl), tmp_path, gradcache_chunk_size=2)
    after = _snapshot(model)
    head = [n for n in before if n.startswith("head.")]
    backbone = [n for n in before if n.startswith("vlm.")]
    assert head and backbone
    assert all(not torch.equal(before[n], after[n]) for n in head)
    assert all(torch.equal(before[n], after[n]) for n in backbone)


def test_lora_mode_trains_adapters_only(tiny_qwen2_vl, tmp_path):
    model = prepare_model_for_training(TTEForEmbedding.from_backbone(tiny_qwen2_vl), "lora", lora_dropout=0.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all("language_model" in n for n in trainable)  # the vision tower has no adapters by default
    before = _snapshot(model)
    _train(model, TTEProcessor.from_backbone(tiny_qwen2_vl), tmp_path)
    after = _snapshot(model)
    assert any(not torch.equal(before[n], after[n]) for n in trainable if "lora_B" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)


def test_prepare_model_rejects_mismatched_tuning(tiny_qwen2_vl):
    with pytest.raises(ValueError, match="unified mode trains only the head"):
        prepare_model_for_training(TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified"), "lora")
    with pytest.raises(ValueError, match="tuning must be one of"):
        prepare_model_for_training(TTEForEmbedding.from_backbone(tiny_qwen2_vl), "qlora")


def test_homogeneous_sub_batches(tiny_qwen2_vl, tmp_path):
    rows = [{"dataset": name, "row_id": str(i)} for name, n in (("a", 9), ("b", 6), ("c", 3)) for i in range(n)]
    args = contrastive_args(tmp_path, per_device_train_batch_size=3, max_steps=1)
    trainer = TTEContrastiveTrainer(model=TTEForEmbedding.from_backbone(tiny_qwen2_vl), args=args,
                                    train_dataset=rows, data_collator=lambda batch: [r["dataset"] for r in batch])
    assert isinstance(trainer._get_train_sampler(), HomogeneousSampler)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 6 and all(len(set(names)) == 1 and len(names) == 3 for names in batches)
    assert sorted(name for names in batches for name in names) == sorted(r["dataset"] for r in rows)
    sampler = HomogeneousSampler([r["dataset"] for r in rows], 3, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first) == list(range(len(rows)))


def test_entry_script_saves_a_checkpoint_that_reloads_in_a_fresh_process(tiny_qwen2_vl, tmp_path):
    from train.train_embedder import main

    toy = write_toy_mmeb(tmp_path / "toy", rows_per_dataset=8)
    recipe = yaml.safe_load((REPO / "train" / "recipes" / "embed_tiny_cpu.yaml").read_text())
    recipe.update(model_name_or_path=tiny_qwen2_vl, datasets=str(toy / "datasets.yaml"), image_root=str(toy),
                  ecr_store=str(toy / "ecr"), output_dir=str(tmp_path / "out"), per_device_train_batch_size=8)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    trainer = main(["--config", str(config), "--max_steps", "3", "--learning_rate", "0.01"])  # CLI overrides YAML
    assert trainer.state.global_step == 3 and trainer.args.learning_rate == 0.01
    out = tmp_path / "out"
    assert (out / "modeling_tte.py").is_file() and (out / "processing_tte.py").is_file()
    assert "AutoModel" in json.loads((out / "config.json").read_text())["auto_map"]

    query = {"text": "What colour is the card?", "image": str(toy / "images" / "ToyCaption_0.png"),
             "ecr": "<think>The card is red.</think> Answer: red"}
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    trained = trainer.model.eval()  # the LoRA model as trained, adapters not merged
    with torch.no_grad():
        expected = trained(**processor.process_queries([query])).embeddings[0]
    code = (
        "import json, sys, torch\n"
        "from transformers import AutoModel, AutoProcessor\n"
        "folder, query = sys.argv[1], json.loads(sys.argv[2])\n"
        "model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "assert type(model).__name__ == 'TTEForEmbedding' and 'transformers_modules' in type(model).__module__\n"
        "with torch.no_grad():\n"
        "    print(json.dumps(model(**processor.process_queries([query])).embeddings[0].tolist()))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code, str(out), json.dumps(query)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    reloaded = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=0)
    base = TTEForEmbedding.from_backbone(tiny_qwen2_vl).eval()
    with torch.no_grad():
        untrained = base(**processor.process_queries([query])).embeddings[0]
    assert (untrained - expected).abs().max() > 1e-4  # training changed the model, and the checkpoint kept it


def test_a_head_without_parameters_has_nothing_to_train(tiny_qwen2_vl):
    from modeling_tte import TTEForEmbedding
    from train.trainer import prepare_model_for_training

    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="last_token")
    with pytest.raises(ValueError, match="nothing to train: the 'last_token' head has no parameters"):
        prepare_model_for_training(model)
    with_projection = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="last_token",
                                                    output_dim=16)
    assert prepare_model_for_training(with_projection).projection.weight.requires_grad


def test_dataloader_workers_train_as_the_main_process_does(tiny_qwen2_vl, tmp_path):
    """Collation (processor calls and ECR store lookups through the on-disk index) in DataLoader workers gives the
    same losses as in the main process."""
    from train.train_embedder import main

    toy = write_toy_mmeb(tmp_path / "toy", rows_per_dataset=8)
    recipe = yaml.safe_load((REPO / "train" / "recipes" / "embed_tiny_cpu.yaml").read_text())
    losses = {}
    for workers in (0, 2):
        recipe.update(model_name_or_path=tiny_qwen2_vl, datasets=str(toy / "datasets.yaml"), image_root=str(toy),
                      ecr_store=str(toy / "ecr"), output_dir=str(tmp_path / f"out{workers}"),
                      per_device_train_batch_size=8, dataloader_num_workers=workers, logging_steps=1)
        config = tmp_path / f"recipe{workers}.yaml"
        config.write_text(yaml.safe_dump(recipe))
        trainer = main(["--config", str(config), "--max_steps", "3"])
        losses[workers] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses[0]) == 3 and losses[2] == pytest.approx(losses[0], abs=1e-5)

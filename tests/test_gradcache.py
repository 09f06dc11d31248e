"""GradCache (train/trainer.py + train/gradcache.py) equals a plain full-batch step."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.contrastive_utils import contrastive_args, make_rows
from train.collators import TTEContrastiveCollator
from train.gradcache import split_batch
from train.losses import InfoNCELoss
from train.trainer import TTEContrastiveTrainer, prepare_model_for_training

ROWS = make_rows(6, negatives=True)


@pytest.fixture(scope="module")
def collator(tiny_qwen2_vl):
    return TTEContrastiveCollator(TTEProcessor.from_backbone(tiny_qwen2_vl))


@pytest.fixture(scope="module")
def batch(collator):
    return collator(ROWS)


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}


class GradientRecorder(TrainerCallback):
    """Keeps the gradients the optimiser is about to apply."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = _grads(model)


def _trainer_step(model, rows, collator, tmp_path, **overrides):
    """One real `Trainer.train()` step over all `rows` as one batch; returns its loss and gradients."""
    args = contrastive_args(tmp_path, loss_temperature=0.05, per_device_train_batch_size=len(rows), max_steps=1,
                            learning_rate=0.0, max_grad_norm=0.0, homogeneous_batches=False,
                            train_sampling_strategy="sequential", **overrides)
    recorder = GradientRecorder()
    trainer = TTEContrastiveTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                                    callbacks=[recorder])
    return trainer.train().training_loss, recorder.grads


def test_split_batch_keeps_images_with_their_rows(tiny_qwen2_vl, batch):
    query = batch["query"]
    config = TTEForEmbedding.from_backbone(tiny_qwen2_vl).config.vlm_config
    chunks = split_batch(query, 2, config.image_token_id, config.video_token_id, 2)
    assert len(chunks) == 3
    assert torch.equal(torch.cat([c["input_ids"] for c in chunks]), query["input_ids"])
    assert torch.equal(torch.cat([c["pixel_values"] for c in chunks]), query["pixel_values"])
    # rows 0, 2, 4 have images; row 0's is 48x32 (24 patches), the others 32x32 (16 patches)
    assert [c["image_grid_thw"].shape[0] for c in chunks] == [1, 1, 1]
    assert [c["pixel_values"].shape[0] for c in chunks] == [24, 16, 16]
    with pytest.raises(ValueError, match="placeholder tokens of row 0"):
        split_batch(query, 2, config.image_token_id, config.video_token_id, merge_size=1)


@pytest.mark.parametrize("setting", ["full", "lora", "unified_self_init"])
def test_gradcache_equals_full_batch_step(tiny_qwen2_vl, collator, batch, tmp_path, setting):
    torch.manual_seed(0)
    if setting == "unified_self_init":
        base = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="self_init", num_head_layers=1)
        base = prepare_model_for_training(base)
    else:
        base = TTEForEmbedding.from_backbone(tiny_qwen2_vl)
        base = prepare_model_for_training(base, tuning=setting, lora_dropout=0.0)
    if setting == "lora":  # LoRA B starts at zero: move it so the gradients of A are not all zero
        with torch.no_grad():
            for name, p in base.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.02)
    plain_model, cached_model, reference_model = base, copy.deepcopy(base), copy.deepcopy(base)

    plain_loss, plain_grads = _trainer_step(plain_model, ROWS, collator, tmp_path / "plain")
    cached_loss, cached_grads = _trainer_step(cached_model, ROWS, collator, tmp_path / "cached",
                                              gradcache_chunk_size=2)

    # an independent reference: one forward of the whole batch, the loss module, backward
    embeddings = {side: reference_model(**batch[side]).embeddings for side in ("query", "target", "negative")}
    reference = InfoNCELoss(0.05)(embeddings["query"], embeddings["target"], embeddings["negative"],
                                  target_ids=batch["target_ids"])
    reference.backward()
    reference_grads = _grads(reference_model)

    assert plain_loss == pytest.approx(reference.item(), abs=1e-6)
    assert cached_loss == pytest.approx(reference.item(), abs=1e-5)
    assert set(cached_grads) == set(reference_grads) and reference_grads
    assert any(g.abs().max() > 1e-4 for g in reference_grads.values())
    for name, grad in reference_grads.items():
        torch.testing.assert_close(plain_grads[name], grad, atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=0, msg=name)


def _lora_model(tiny_qwen2_vl, lora_dropout: float):
    torch.manual_seed(0)
    model = prepare_model_for_training(TTEForEmbedding.from_backbone(tiny_qwen2_vl), "lora", lora_dropout=lora_dropout)
    with torch.no_grad():  # LoRA B starts at zero, which would hide the adapters (and their dropout)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model


def test_gradcache_replays_dropout_masks(tiny_qwen2_vl, collator, batch, tmp_path):
    """With dropout on, a chunk's graph pass must see the masks of its no-graph pass: GradCache with one chunk per
    side draws the masks in the order a plain step does, so the two steps match only if the masks are replayed."""
    base = _lora_model(tiny_qwen2_vl, lora_dropout=0.3)
    base.train()
    with torch.no_grad():  # dropout is really active
        first, second = (base(**batch["query"]).embeddings for _ in range(2))
    assert (first - second).abs().max() > 1e-3
    plain_model, cached_model = base, copy.deepcopy(base)
    plain_loss, plain_grads = _trainer_step(plain_model, ROWS, collator, tmp_path / "plain")
    cached_loss, cached_grads = _trainer_step(cached_model, ROWS, collator, tmp_path / "cached",
                                              gradcache_chunk_size=len(ROWS))
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    assert set(cached_grads) == set(plain_grads) and any(g.abs().max() > 1e-4 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=0, msg=name)


def test_gradcache_with_gradient_accumulation_equals_the_reference(tiny_qwen2_vl, collator, tmp_path):
    """Two accumulated micro-batches of 3 rows (GradCache chunks of 2: one chunk backpropagated by GradCache, one
    by the Trainer) equal the mean of the two micro-batch losses, back-propagated by hand."""
    base = _lora_model(tiny_qwen2_vl, lora_dropout=0.0)
    plain_model, cached_model, reference_model = base, copy.deepcopy(base), copy.deepcopy(base)
    settings = dict(per_device_train_batch_size=3, gradient_accumulation_steps=2)
    args = contrastive_args(tmp_path / "p", loss_temperature=0.05, max_steps=1, learning_rate=0.0, max_grad_norm=0.0,
                            homogeneous_batches=False, train_sampling_strategy="sequential", **settings)
    grads = {}
    for name, model, chunk in (("plain", plain_model, None), ("cached", cached_model, 2)):
        recorder = GradientRecorder()
        args.gradcache_chunk_size = chunk
        TTEContrastiveTrainer(model=model, args=args, train_dataset=ROWS, data_collator=collator,
                              callbacks=[recorder]).train()
        grads[name] = recorder.grads
    loss = InfoNCELoss(0.05)
    for half in (ROWS[:3], ROWS[3:]):
        micro = collator(half)
        embeddings = {side: reference_model(**micro[side]).embeddings for side in ("query", "target", "negative")}
        (loss(embeddings["query"], embeddings["target"], embeddings["negative"],
              target_ids=micro["target_ids"]) / 2).backward()
    reference = _grads(reference_model)
    assert set(grads["cached"]) == set(reference) and any(g.abs().max() > 1e-4 for g in reference.values())
    for name, grad in reference.items():
        torch.testing.assert_close(grads["plain"][name], grad, atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(grads["cached"][name], grad, atol=1e-5, rtol=0, msg=name)

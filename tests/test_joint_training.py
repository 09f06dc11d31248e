"""Joint training (the paper's Appendix B ablation): InfoNCE plus the language-model loss of the ECR tokens of the
same sequences, on one backbone."""

from __future__ import annotations

import pytest
import torch

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.contrastive_utils import contrastive_args, make_rows
from train.collators import TTEContrastiveCollator
from train.losses import ecr_positions
from train.trainer import TTEContrastiveTrainer, prepare_model_for_training


def _trainer(tiny_qwen2_vl, tmp_path, **overrides):
    torch.manual_seed(0)
    model = prepare_model_for_training(TTEForEmbedding.from_backbone(tiny_qwen2_vl), "full")
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    collator = TTEContrastiveCollator(processor, ecr_token_counts=True)
    return TTEContrastiveTrainer(model=model, args=contrastive_args(tmp_path, **overrides),
                                 data_collator=collator, processing_class=processor), collator, processor


def _hf_ecr_loss(model, batch: dict, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The backbone's own causal-LM loss (transformers' labels path) on the ECR tokens, as a sum and a count."""
    labels = batch["input_ids"].masked_fill(~ecr_positions(batch["attention_mask"], lengths), -100)
    count = int((labels[:, 1:] != -100).sum())
    return model.vlm(**batch, labels=labels).loss * count, count


def test_the_ecr_token_counts_cover_exactly_the_assistant_turn(tiny_qwen2_vl):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    rows = make_rows(4)
    batch = TTEContrastiveCollator(processor, ecr_token_counts=True)(rows)
    for side, field in (("query", "qry_ecr"), ("target", "pos_ecr")):
        inputs, lengths = batch[side], batch["ecr_lengths"][side]
        for i, row in enumerate(rows):
            ids = inputs["input_ids"][i][ecr_positions(inputs["attention_mask"], lengths)[i]]
            assert processor.tokenizer.decode(ids) == row[field] + processor.tokenizer.eos_token


def test_joint_loss_is_the_weighted_sum_of_infonce_and_the_backbone_lm_loss(tiny_qwen2_vl, tmp_path):
    trainer, collator, _ = _trainer(tiny_qwen2_vl, tmp_path, sft_loss_weight=0.5, contrastive_loss_weight=2.0)
    batch = collator(make_rows(4))
    model = trainer.model.eval()
    with torch.no_grad():
        joint = trainer.compute_loss(model, batch)
        embeddings = {side: model(**batch[side]).embeddings for side in ("query", "target")}
        infonce = trainer.loss_fn(embeddings["query"], embeddings["target"], target_ids=batch["target_ids"])
        parts = [_hf_ecr_loss(model, batch[side], batch["ecr_lengths"][side]) for side in ("query", "target")]
    nll = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    assert nll > 0 and infonce > 0
    torch.testing.assert_close(joint, 2.0 * infonce + 0.5 * nll)


def test_gradcache_gives_the_plain_steps_joint_gradient(tiny_qwen2_vl, tmp_path):
    grads = []
    for chunk in (None, 2):
        trainer, collator, _ = _trainer(tiny_qwen2_vl, tmp_path, sft_loss_weight=1.0, gradcache_chunk_size=chunk)
        model = trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop
        batch = collator(make_rows(4, images=False))
        model.zero_grad()
        trainer.compute_loss(model, batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_zero_sft_weight_is_the_two_stage_loss(tiny_qwen2_vl, tmp_path):
    trainer, collator, _ = _trainer(tiny_qwen2_vl, tmp_path)
    batch = collator(make_rows(4))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model.eval(), batch)
        embeddings = {side: trainer.model(**batch[side]).embeddings for side in ("query", "target")}
    torch.testing.assert_close(loss, trainer.loss_fn(embeddings["query"], embeddings["target"],
                                                     target_ids=batch["target_ids"]))


def test_joint_training_needs_a_trainable_embedder_and_token_counts(tiny_qwen2_vl, tmp_path):
    unified = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="attention_pooler")
    with pytest.raises(ValueError, match="mode='embedder'"):
        TTEContrastiveTrainer(model=unified, args=contrastive_args(tmp_path, sft_loss_weight=1.0))
    trainer, _, processor = _trainer(tiny_qwen2_vl, tmp_path, sft_loss_weight=1.0)
    with pytest.raises(ValueError, match="ecr_token_counts=True"):
        trainer.compute_loss(trainer.model, TTEContrastiveCollator(processor)(make_rows(4)))
    with pytest.raises(ValueError, match="both 0"):
        contrastive_args(tmp_path, sft_loss_weight=0.0, contrastive_loss_weight=0.0)

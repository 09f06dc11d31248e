"""ecr_dropout: one embedder trained to embed with and without ECR; 0 leaves training exactly as it was."""

from __future__ import annotations

import pytest
import torch

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.contrastive_utils import contrastive_args, make_rows
from train.collators import TTEContrastiveCollator
from train.trainer import TTEContrastiveTrainer, prepare_model_for_training


def _decoded(processor, batch, side):
    """Each row's text without its padding."""
    inputs = batch[side]
    return [processor.tokenizer.decode(ids[mask.bool()]) for ids, mask in
            zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]


def test_a_dropped_side_is_the_no_ecr_input_and_the_fraction_is_kept(tiny_qwen2_vl):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    rows = make_rows(400, images=False)
    full = TTEContrastiveCollator(processor)(rows)
    dropped = TTEContrastiveCollator(processor, ecr_dropout=0.5)(rows)
    bare = TTEContrastiveCollator(processor)([{**row, "qry_ecr": "", "pos_ecr": ""} for row in rows])
    without = {}
    for side in ("query", "target"):
        texts, with_ecr, no_ecr = (_decoded(processor, b, side) for b in (dropped, full, bare))
        assert all(t in (a, b) for t, a, b in zip(texts, with_ecr, no_ecr, strict=True))
        without[side] = [t == b for t, b in zip(texts, no_ecr, strict=True)]
        assert 0.42 < sum(without[side]) / len(rows) < 0.58
    assert without["query"] != without["target"]  # each side decided on its own
    again = TTEContrastiveCollator(processor, ecr_dropout=0.5)(rows)
    assert _decoded(processor, again, "query") == _decoded(processor, dropped, "query")
    other_seed = TTEContrastiveCollator(processor, ecr_dropout=0.5, ecr_dropout_seed=1)(rows)
    assert _decoded(processor, other_seed, "query") != _decoded(processor, dropped, "query")
    with pytest.raises(ValueError, match="between 0 and 1"):
        TTEContrastiveCollator(processor, ecr_dropout=1.5)


def test_zero_ecr_dropout_leaves_training_unchanged(tiny_qwen2_vl, tmp_path):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    rows = make_rows(8)
    weights = []
    for collator in (TTEContrastiveCollator(processor), TTEContrastiveCollator(processor, ecr_dropout=0.0),
                     TTEContrastiveCollator(processor, ecr_dropout=0.5)):
        torch.manual_seed(0)
        model = prepare_model_for_training(TTEForEmbedding.from_backbone(tiny_qwen2_vl), "full")
        TTEContrastiveTrainer(model=model, args=contrastive_args(tmp_path, max_steps=2), train_dataset=rows,
                              data_collator=collator).train()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])

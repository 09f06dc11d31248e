"""TTEForEmbedding behaves like any PreTrainedModel: reloading keeps a unified model frozen, `forward` takes the
standard keyword arguments, input embeddings delegate to the backbone (`resize_token_embeddings`), and inputs that
the processor did not make (the `feature-extraction` pipeline) get a warning."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, pipeline

from modeling_tte import TTEEmbeddingOutput, TTEForEmbedding
from processing_tte import TTEProcessor
from tests.helpers import mixed_rows

UNIFIED = [{"mode": "unified", "head_type": "self_init", "num_head_layers": 1},
           {"mode": "unified", "head_type": "attention_pooler", "head_num_heads": 4, "head_num_queries": 4},
           {"mode": "embedder"}]


def _grad_map(model) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("overrides", UNIFIED, ids=["unified-self_init", "unified-attention_pooler", "embedder"])
def test_a_reloaded_model_is_frozen_exactly_as_from_backbone_made_it(tiny_qwen2_vl, tmp_path, overrides):
    made = TTEForEmbedding.from_backbone(tiny_qwen2_vl, **overrides)
    made.save_pretrained(tmp_path)
    for reloaded in (TTEForEmbedding.from_pretrained(tmp_path),
                     AutoModel.from_pretrained(tmp_path, trust_remote_code=True)):
        assert _grad_map(reloaded) == _grad_map(made)
        if overrides["mode"] == "unified":
            assert not reloaded.backbone_trainable and any(p.requires_grad for p in reloaded.head.parameters())
    # and `output_loading_info=True` (a tuple) too
    reloaded, info = TTEForEmbedding.from_pretrained(tmp_path, output_loading_info=True)
    assert _grad_map(reloaded) == _grad_map(made) and not info["missing_keys"]


@pytest.fixture(scope="module")
def unified(tiny_qwen2_vl):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="self_init",
                                          num_head_layers=1, attn_implementation="eager").eval()
    return model, TTEProcessor.from_backbone(tiny_qwen2_vl)


def test_forward_takes_the_standard_keyword_arguments(unified):
    model, processor = unified
    batch = processor.process_queries(mixed_rows())
    with torch.no_grad():
        output = model(**batch)
        as_tuple = model(**batch, return_dict=False, use_cache=True)
        full = model(**batch, return_dict=True, output_hidden_states=True, output_attentions=True, use_cache=False)
        full_tuple = model(**batch, return_dict=False, output_hidden_states=True, output_attentions=True)
    assert isinstance(output, TTEEmbeddingOutput) and isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], output.embeddings, atol=0, rtol=0)
    torch.testing.assert_close(full.embeddings, output.embeddings, atol=1e-6, rtol=0)
    depth = model.config.num_backbone_layers
    assert len(full.hidden_states) == depth + 1 and len(full.attentions) == depth
    rows, length = batch["input_ids"].shape
    assert full.attentions[0].shape[0] == rows and full.attentions[0].shape[-1] == length
    assert len(full_tuple) == 3 and full_tuple[2][0].shape == full.attentions[0].shape


def test_resize_token_embeddings_resizes_the_backbone(tiny_qwen2_vl, tmp_path):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="self_init",
                                          num_head_layers=1).eval()
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    assert model.get_input_embeddings() is model.vlm.get_input_embeddings()
    old = model.config.vlm_config.text_config.vocab_size
    model.resize_token_embeddings(old + 5)
    assert model.get_input_embeddings().weight.shape[0] == old + 5
    assert model.vlm.get_output_embeddings().weight.shape[0] == old + 5  # the unified reasoner still generates
    assert model.config.vlm_config.text_config.vocab_size == old + 5 == model.vlm.config.text_config.vocab_size
    batch = processor.process_queries([{"text": "a red square"}, {"text": "a blue circle"}])
    batch["input_ids"][0, 1] = old + 3  # a new token
    with torch.no_grad():
        embeddings = model(**batch).embeddings
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded = TTEForEmbedding.from_pretrained(tmp_path).eval()
    assert reloaded.get_input_embeddings().weight.shape[0] == old + 5
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).embeddings, embeddings, atol=1e-6, rtol=0)


def test_the_feature_extraction_pipeline_warns_that_it_gives_no_tte_embedding(tiny_qwen2_vl, tmp_path, caplog):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl).eval()
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "feature-extraction" in card and "process_queries" in card
    with torch.no_grad():
        model(**processor.process_queries(mixed_rows()))  # the processor's inputs: no warning
    assert not [r for r in caplog.records if "end-of-turn" in r.getMessage()]
    extractor = pipeline("feature-extraction", model=str(tmp_path), trust_remote_code=True)
    extractor("a red square")
    extractor("a blue circle")
    warnings = [r.getMessage() for r in caplog.records if "end-of-turn" in r.getMessage()]
    assert len(warnings) == 1 and "process_queries" in warnings[0]  # warned once, with the right call

import pytest
import torch
import torch.nn.functional as F

from configuration_tte import HEAD_TYPES
from modeling_tte import TTEEmbeddingOutput, TTEForEmbedding, last_token_pool
from processing_tte import TTEProcessor
from tests.conftest import FAMILIES
from tests.helpers import mixed_rows


def build(path, head_type="last_token", **overrides):
    mode = "embedder" if head_type == "last_token" else "unified"
    overrides.setdefault("head_num_heads", 4)
    return TTEForEmbedding.from_backbone(path, mode=mode, head_type=head_type, **overrides).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_embeds_image_video_and_text_with_either_padding(tiny_backbone, family, head_type):
    path = tiny_backbone(family)
    model, processor = build(path, head_type), TTEProcessor.from_backbone(path)
    rows = mixed_rows()
    with torch.no_grad():
        right = model(**processor.process_queries(rows, padding_side="right"))
        left = model(**processor.process_queries(rows, padding_side="left"))
    assert isinstance(right, TTEEmbeddingOutput)
    assert right.embeddings.shape == (3, 64)
    torch.testing.assert_close(right.embeddings.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(left.embeddings, right.embeddings, atol=1e-5, rtol=0)
    # the three inputs really differ
    assert torch.cdist(right.embeddings, right.embeddings).triu(1).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_head_layers", [1, 8])
def test_self_init_head_is_a_copy_of_the_backbone_at_init(tiny_backbone, family, num_head_layers):
    path = tiny_backbone(family)
    model = build(path, "self_init", num_head_layers=num_head_layers, normalize=False)
    assert len(model.head.layers) == min(num_head_layers, 2)
    batch = TTEProcessor.from_backbone(path).process_queries(mixed_rows())
    with torch.no_grad():
        embeddings = model(**batch).embeddings
        backbone = model.vlm.base_model(**batch).last_hidden_state
    torch.testing.assert_close(embeddings, last_token_pool(backbone, batch["attention_mask"]), atol=1e-6, rtol=0)
    # a copy, not the same modules: training the head leaves the backbone alone
    assert model.head.layers[-1].mlp.up_proj.weight is not model.vlm.get_decoder().layers[-1].mlp.up_proj.weight


def test_head_layer_selects_a_hidden_state(tiny_qwen2_vl):
    batch = TTEProcessor.from_backbone(tiny_qwen2_vl).process_queries(mixed_rows())
    model = build(tiny_qwen2_vl, "last_token", head_layer=1, normalize=False)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.embeddings, last_token_pool(out.hidden_states[1], batch["attention_mask"]))


def test_output_dim_projects(tiny_qwen2_vl):
    batch = TTEProcessor.from_backbone(tiny_qwen2_vl).process_queries(mixed_rows())
    with torch.no_grad():
        embeddings = build(tiny_qwen2_vl, "attention_pooler", output_dim=16)(**batch).embeddings
    assert embeddings.shape == (3, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))


def test_unified_mode_freezes_the_backbone_and_trains_the_head(tiny_qwen2_vl):
    model = build(tiny_qwen2_vl, "qformer").train()
    assert not any(p.requires_grad for p in model.vlm.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    batch = TTEProcessor.from_backbone(tiny_qwen2_vl).process_queries(mixed_rows())
    embeddings = model(**batch).embeddings
    (embeddings[0] @ embeddings[1]).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.vlm.parameters())


def test_embedder_mode_backpropagates_into_the_backbone_with_gradient_checkpointing(tiny_qwen2_vl):
    batch = TTEProcessor.from_backbone(tiny_qwen2_vl).process_queries(mixed_rows())
    model = build(tiny_qwen2_vl)
    with torch.no_grad():
        reference = model(**batch).embeddings
    model.gradient_checkpointing_enable()
    model.train()
    embeddings = model(**batch).embeddings
    torch.testing.assert_close(embeddings, reference, atol=1e-6, rtol=0)
    F.mse_loss(embeddings, torch.zeros_like(embeddings)).backward()
    layer = model.vlm.get_decoder().layers[0]
    assert layer.gradient_checkpointing
    assert layer.mlp.up_proj.weight.grad.abs().sum() > 0


def test_sdpa_dtype_and_device_map_pass_through(tiny_qwen2_vl, tmp_path):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, attn_implementation="sdpa", dtype=torch.bfloat16)
    assert model.vlm.config._attn_implementation == "sdpa"
    assert model.head.__class__.__name__ == "LastTokenHead" and model.dtype == torch.bfloat16
    assert any("DecoderLayer" in name for name in model._no_split_modules)
    model.save_pretrained(tmp_path)
    reloaded = TTEForEmbedding.from_pretrained(tmp_path, device_map="auto", attn_implementation="sdpa")
    assert reloaded.vlm.config._attn_implementation == "sdpa"


def test_generate_uses_the_backbone_lm_head(tiny_qwen2_vl):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    model = build(tiny_qwen2_vl, "self_init")
    inputs = processor.process_reasoner_inputs(mixed_rows()[:2], task_type="retrieval")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_from_backbone_rejects_a_text_only_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' model, not a vision-language model"):
        TTEForEmbedding.from_backbone(str(tmp_path))


@pytest.mark.parametrize(("kwargs", "field"), [({"head_type": "mean_pool", "mode": "unified"}, "head_type"),
                                               ({"head_layer": 5}, "head_layer")])
def test_from_backbone_rejects_bad_settings(tiny_qwen2_vl, kwargs, field):
    with pytest.raises(ValueError, match=rf"TTEConfig\.{field}"):
        TTEForEmbedding.from_backbone(tiny_qwen2_vl, **kwargs)

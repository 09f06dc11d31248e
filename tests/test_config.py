import pytest
from transformers import AutoConfig

from configuration_tte import HEAD_TYPES, TTEConfig
from tests.conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_keeps_every_field(tiny_backbone, family, tmp_path):
    vlm = AutoConfig.from_pretrained(tiny_backbone(family))
    config = TTEConfig(vlm_config=vlm, mode="unified", head_type="qformer", head_num_heads=4,
                       qformer_layers=[1, 2], output_dim=16, loss_temperature=0.05, max_ecr_tokens=64)
    config.save_pretrained(tmp_path)
    loaded = TTEConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert type(loaded.vlm_config) is type(vlm)
    assert loaded.hidden_size == 64 and loaded.num_backbone_layers == 2
    assert (loaded.head_type, loaded.qformer_layers, loaded.output_dim) == ("qformer", [1, 2], 16)


def test_defaults_match_the_paper():
    config = TTEConfig()
    assert config.vlm_config.model_type == "qwen2_vl"
    assert (config.mode, config.head_type, config.loss_temperature, config.num_head_layers) == (
        "embedder", "last_token", 0.02, 8)
    assert config.resolved_qformer_layers == list(range(config.num_backbone_layers - 3, config.num_backbone_layers + 1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "both"}, "mode"),
        ({"mode": "unified", "head_type": "mean"}, "head_type"),
        ({"head_type": "qformer"}, "head_type"),  # heads need unified mode
        ({"head_layer": 199}, "head_layer"),
        ({"head_layer": -199}, "head_layer"),
        ({"mode": "unified", "head_type": "qformer", "qformer_layers": [1, 200]}, "qformer_layers"),
        ({"num_head_layers": 0}, "num_head_layers"),
        ({"loss_temperature": 0}, "loss_temperature"),
        ({"max_ecr_tokens": -1}, "max_ecr_tokens"),
        ({"output_dim": 0}, "output_dim"),
        ({"mode": "unified", "head_type": "attention_pooler", "head_num_heads": 7}, "head_num_heads"),
        ({"vlm_config": {"model_type": "llama"}}, "vlm_config"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"TTEConfig\.{field}"):
        TTEConfig(**kwargs)


def test_error_lists_allowed_head_types():
    with pytest.raises(ValueError) as error:
        TTEConfig(mode="unified", head_type="nope")
    assert all(head in str(error.value) for head in HEAD_TYPES)

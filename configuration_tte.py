"""Configuration of a Think-Then-Embed (TTE) embedding model."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

MODES = ("embedder", "unified")
HEAD_TYPES = ("last_token", "attention_pooler", "latent_attention", "qformer", "self_init")


def _choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"TTEConfig.{field} must be one of {list(allowed)}, got {value!r}")


def _positive(field: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"TTEConfig.{field} must be a positive number, got {value!r}")


class TTEConfig(PreTrainedConfig):
    r"""
    Configuration for [`TTEForEmbedding`]: a vision-language backbone plus how its hidden states become an
    embedding.

    Args:
        vlm_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the backbone VLM; any model type known to `AutoModelForImageTextToText` (e.g. `qwen2_vl`,
            `qwen2_5_vl`, `qwen3_vl`). Defaults to a default `qwen2_vl` config.
        mode (`str`, *optional*, defaults to `"embedder"`):
            `"embedder"`: a separate embedder (TTE_t / TTE_s), the backbone itself is trained and pooled at its last
            token. `"unified"`: TTE_u, the backbone (a reasoner) is frozen and a trainable `head_type` head reads its
            hidden states.
        head_type (`str`, *optional*, defaults to `"last_token"`):
            One of `"last_token"`, `"attention_pooler"`, `"latent_attention"` (NV-Embed), `"qformer"` or
            `"self_init"` (copies of the backbone's last `num_head_layers` decoder layers). Embedder mode uses
            `"last_token"`.
        head_layer (`int`, *optional*, defaults to -1):
            Index into the backbone's hidden states (`0` = embeddings, `-1` = final, normalised output) read by the
            `last_token`, `attention_pooler` and `latent_attention` heads.
        num_head_layers (`int`, *optional*, defaults to 8):
            Decoder layers copied by the `self_init` head (clipped to the backbone's depth).
        head_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of the `attention_pooler`, `latent_attention` and `qformer` heads; must divide the
            backbone's hidden size.
        head_num_queries (`int`, *optional*, defaults to 32):
            Learnable queries of the `attention_pooler` and `qformer` heads.
        head_num_latents (`int`, *optional*, defaults to 512):
            Size of the trainable latent array of the `latent_attention` head.
        qformer_layers (`list[int]`, *optional*):
            Backbone hidden-state indices the `qformer` blocks cross-attend to, one block each. Defaults to the last
            `min(4, depth)` layers.
        normalize (`bool`, *optional*, defaults to `True`):
            L2-normalise the embeddings.
        output_dim (`int`, *optional*):
            If set, a linear projection to this size after pooling.
        loss_temperature (`float`, *optional*, defaults to 0.02):
            InfoNCE temperature used when training this model.
        max_ecr_tokens (`int`, *optional*, defaults to 512):
            Longest reasoning trace (ECR), in tokens, fed to the embedder; longer traces are truncated.
        router_layer (`int`, *optional*):
            A unified model's think router (`think="auto"` in `generate_and_embed`): the hidden-state index it reads
            at the prompt's last token, at the end of prefill. `None` (the default): no router.
        router_threshold (`float`, *optional*, defaults to 0.5):
            The router thinks for a row when its probability that thinking changes the row's retrieval outcome is at
            least this (0: always think, above 1: never).
    """

    model_type = "tte"
    sub_configs_defaults = {"vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl")}

    vlm_config: dict | PreTrainedConfig | None = None
    mode: str = "embedder"
    head_type: str = "last_token"
    head_layer: int = -1
    num_head_layers: int = 8
    head_num_heads: int = 8
    head_num_queries: int = 32
    head_num_latents: int = 512
    qformer_layers: list[int] | None = None
    normalize: bool = True
    output_dim: int | None = None
    loss_temperature: float = 0.02
    max_ecr_tokens: int = 512
    router_layer: int | None = None
    router_threshold: float = 0.5

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_tte()

    @property
    def text_config(self) -> PreTrainedConfig:
        """The backbone's language-model config (hidden size, depth)."""
        return self.vlm_config.get_text_config()

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_backbone_layers(self) -> int:
        return self.text_config.num_hidden_layers

    @property
    def resolved_qformer_layers(self) -> list[int]:
        """Hidden-state indices read by the qformer head, one per block."""
        if self.qformer_layers is not None:
            return list(self.qformer_layers)
        depth = self.num_backbone_layers
        return list(range(depth - min(4, depth) + 1, depth + 1))

    def validate_tte(self) -> None:
        """Raise `ValueError` naming the field if any TTE setting is invalid."""
        if self.vlm_config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise ValueError(
                f"TTEConfig.vlm_config must be a vision-language model known to AutoModelForImageTextToText, "
                f"got model_type {self.vlm_config.model_type!r}"
            )
        _choice("mode", self.mode, MODES)
        _choice("head_type", self.head_type, HEAD_TYPES)
        if self.mode == "embedder" and self.head_type != "last_token":
            raise ValueError(
                f"TTEConfig.head_type must be 'last_token' in embedder mode (heads need mode='unified'), "
                f"got {self.head_type!r}"
            )
        for field in ("num_head_layers", "head_num_heads", "head_num_queries", "head_num_latents",
                      "loss_temperature", "max_ecr_tokens"):
            _positive(field, getattr(self, field))
        _positive("output_dim", self.output_dim, allow_none=True)
        depth = self.num_backbone_layers
        self._check_layer("head_layer", self.head_layer, depth)
        for index in self.resolved_qformer_layers:
            self._check_layer("qformer_layers", index, depth)
        if self.router_layer is not None:
            if self.mode != "unified":
                raise ValueError("TTEConfig.router_layer needs mode='unified' (the router decides whether the "
                                 "model's own backbone thinks)")
            self._check_layer("router_layer", self.router_layer, depth)
        if isinstance(self.router_threshold, bool) or not isinstance(self.router_threshold, (int, float)) \
                or self.router_threshold < 0:
            raise ValueError(f"TTEConfig.router_threshold must be a number >= 0, got {self.router_threshold!r}")
        if self.head_type != "last_token" and self.hidden_size % self.head_num_heads:
            raise ValueError(
                f"TTEConfig.head_num_heads must divide the backbone hidden size {self.hidden_size}, "
                f"got {self.head_num_heads}"
            )

    @staticmethod
    def _check_layer(field: str, index, depth: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not -(depth + 1) <= index <= depth:
            raise ValueError(
                f"TTEConfig.{field} must be a hidden-state index in [{-(depth + 1)}, {depth}] "
                f"(the backbone has {depth} layers), got {index!r}"
            )


TTEConfig.register_for_auto_class()

__all__ = ["TTEConfig"]

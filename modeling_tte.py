"""Think-Then-Embed embedding model: a vision-language backbone plus a pooling head.

Hub remote code: imports only torch, transformers and the sibling `configuration_tte`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.utils import ModelOutput, logging

try:
    from .configuration_tte import TTEConfig
except ImportError:  # imported as a top-level module (installed project, tests)
    from configuration_tte import TTEConfig

logger = logging.get_logger(__name__)


@dataclass
class TTEEmbeddingOutput(ModelOutput):
    """
    Output of [`TTEForEmbedding`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, dim)`):
            The pooled embeddings, unit norm when `config.normalize`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The backbone's hidden states (embeddings + one per layer), when `output_hidden_states=True`.
    """

    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BackboneStates:
    """What a head may read from one backbone pass."""

    hidden_states: tuple[torch.Tensor, ...]
    attention_mask: torch.Tensor
    layer_capture: LayerCapture | None = None


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The hidden state of each row's last non-padding token; works for left and right padding."""
    if attention_mask is None:
        return hidden[:, -1]
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class LayerCapture:
    """Forward hooks on a decoder's layers that record what enters layer `first` (hidden state and keyword
    arguments such as rotary position embeddings and the attention mask) and anything the decoder adds to the
    residual stream between later layers (e.g. Qwen3-VL's deepstack visual features)."""

    def __init__(self, decoder: nn.Module, first: int):
        self.decoder, self.first = decoder, first
        self.inputs: torch.Tensor | None = None
        self.layer_kwargs: dict = {}
        self._outputs: list[torch.Tensor] = []
        self._boundaries: list[torch.Tensor] = []

    def _on_first(self, module, args, kwargs):
        self.inputs = args[0] if args else kwargs["hidden_states"]
        self.layer_kwargs = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "cache", "use_cache",
                                                                          "past_key_values", "past_key_value")}

    def _on_boundary(self, module, args, kwargs):
        self._boundaries.append(args[0] if args else kwargs["hidden_states"])

    def _on_output(self, module, args, output):
        self._outputs.append(output[0] if isinstance(output, tuple) else output)

    @contextlib.contextmanager
    def __call__(self):
        layers = self.decoder.layers
        handles = [layers[self.first].register_forward_pre_hook(self._on_first, with_kwargs=True)]
        for layer in layers[self.first + 1:]:
            handles.append(layer.register_forward_pre_hook(self._on_boundary, with_kwargs=True))
        handles.append(self.decoder.norm.register_forward_pre_hook(self._on_boundary, with_kwargs=True))
        for layer in layers[self.first:]:
            handles.append(layer.register_forward_hook(self._on_output))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def injections(self) -> list[torch.Tensor | None]:
        """Per copied layer: what the decoder added after it, or `None` when nothing was."""
        pairs = zip(self._outputs, self._boundaries, strict=True)
        return [None if after is out else after - out for out, after in pairs]


class LastTokenHead(nn.Module):
    """Baseline: the last token's hidden state of `config.head_layer`."""

    def __init__(self, config: TTEConfig):
        super().__init__()
        self.layer = config.head_layer

    def forward(self, states: BackboneStates) -> torch.Tensor:
        return last_token_pool(states.hidden_states[self.layer], states.attention_mask)


class AttentionPoolerHead(nn.Module):
    """Learnable queries cross-attend to one layer's hidden states; their outputs are averaged."""

    def __init__(self, config: TTEConfig):
        super().__init__()
        hidden = config.hidden_size
        self.layer = config.head_layer
        self.queries = nn.Parameter(torch.empty(config.head_num_queries, hidden))
        self.attention = nn.MultiheadAttention(hidden, config.head_num_heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, states: BackboneStates) -> torch.Tensor:
        hidden = states.hidden_states[self.layer]
        queries = self.queries.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        pooled, _ = self.attention(queries, hidden, hidden, key_padding_mask=states.attention_mask == 0,
                                   need_weights=False)
        return self.norm(pooled.mean(1))


class LatentAttentionHead(nn.Module):
    """NV-Embed's latent attention: each token attends to a trainable latent array, an MLP follows, then a
    masked mean over tokens."""

    def __init__(self, config: TTEConfig):
        super().__init__()
        hidden = config.hidden_size
        self.layer = config.head_layer
        self.latents = nn.Parameter(torch.empty(config.head_num_latents, hidden))
        self.attention = nn.MultiheadAttention(hidden, config.head_num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden * 4), nn.GELU(), nn.Linear(hidden * 4, hidden))

    def forward(self, states: BackboneStates) -> torch.Tensor:
        hidden = states.hidden_states[self.layer]
        latents = self.latents.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        attended, _ = self.attention(hidden, latents, latents, need_weights=False)
        return masked_mean(self.mlp(attended), states.attention_mask)


class QFormerBlock(nn.Module):
    """Queries: cross-attention to one backbone layer, self-attention, MLP; each residual and post-norm."""

    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.cross = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden * 4), nn.GELU(), nn.Linear(hidden * 4, hidden))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(3))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        queries = self.norms[0](queries + self.cross(queries, memory, memory, key_padding_mask=padding,
                                                     need_weights=False)[0])
        queries = self.norms[1](queries + self.self_attn(queries, queries, queries, need_weights=False)[0])
        return self.norms[2](queries + self.mlp(queries))


class QFormerHead(nn.Module):
    """QFormer-style head: query blocks, each cross-attending to a different backbone layer."""

    def __init__(self, config: TTEConfig):
        super().__init__()
        self.layers = config.resolved_qformer_layers
        self.queries = nn.Parameter(torch.empty(config.head_num_queries, config.hidden_size))
        self.blocks = nn.ModuleList(QFormerBlock(config.hidden_size, config.head_num_heads) for _ in self.layers)

    def forward(self, states: BackboneStates) -> torch.Tensor:
        padding = states.attention_mask == 0
        first = states.hidden_states[self.layers[0]]
        queries = self.queries.to(first.dtype).expand(first.shape[0], -1, -1)
        for layer, block in zip(self.layers, self.blocks, strict=True):
            queries = block(queries, states.hidden_states[layer], padding)
        return queries.mean(1)


class SelfInitHead(nn.Module):
    """Deep copies of the backbone's last `num_head_layers` decoder layers and final norm, fed the hidden state
    entering the first copied layer with the backbone's own rotary positions and mask; last-token output. At
    initialisation it reproduces the backbone's final hidden state exactly."""

    def __init__(self, config: TTEConfig, decoder: nn.Module):
        super().__init__()
        depth = len(decoder.layers)
        self.first_layer = depth - min(config.num_head_layers, depth)
        self.layers = nn.ModuleList(copy.deepcopy(decoder.layers[i]) for i in range(self.first_layer, depth))
        self.norm = copy.deepcopy(decoder.norm)

    def forward(self, states: BackboneStates) -> torch.Tensor:
        capture = states.layer_capture
        hidden = capture.inputs
        for layer, injection in zip(self.layers, capture.injections(), strict=True):
            hidden = layer(hidden, **capture.layer_kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            if injection is not None:
                hidden = hidden + injection
        return last_token_pool(self.norm(hidden), states.attention_mask)


MODEL_CARD = """---
library_name: transformers
pipeline_tag: feature-extraction
tags: [think-then-embed, multimodal-embedding, custom_code]
---
# Think-Then-Embed embedding model

A Think-Then-Embed (arXiv 2510.05014) embedding model: a `{backbone}` backbone in `{mode}` mode with a
`{head_type}` head. Queries and targets are embedded together with their embedding-centric reasoning trace
(ECR, `<think> ... </think> Answer: ...`) written by a reasoner model.

```python
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("<this repo>", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("<this repo>", trust_remote_code=True)
queries = processor.process_queries([{{"image": "photo.jpg", "instruction": "Find a caption for the image.",
                                      "ecr": "<think>...</think> Answer: ..."}}])
targets = processor.process_targets([{{"text": "a red car"}}])
with torch.inference_mode():
    scores = model(**queries).embeddings @ model(**targets).embeddings.T
```
"""

HEADS = {
    "last_token": LastTokenHead,
    "attention_pooler": AttentionPoolerHead,
    "latent_attention": LatentAttentionHead,
    "qformer": QFormerHead,
}


class TTEPreTrainedModel(PreTrainedModel):
    config_class = TTEConfig
    base_model_prefix = "tte"
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            init.xavier_uniform_(module.in_proj_weight)
            init.zeros_(module.in_proj_bias)
        elif isinstance(module, (AttentionPoolerHead, QFormerHead)):
            init.normal_(module.queries, std=0.02)
        elif isinstance(module, LatentAttentionHead):
            init.normal_(module.latents, std=0.02)


class TTEForEmbedding(TTEPreTrainedModel):
    """
    A Think-Then-Embed embedding model. `config.mode="embedder"`: the backbone VLM itself, pooled at the last
    token (TTE_t / TTE_s). `config.mode="unified"`: a frozen reasoner VLM (it keeps its LM head and can
    `generate` ECR) plus a trainable head on its hidden states (TTE_u).

    Example:

    ```python
    >>> model = TTEForEmbedding.from_backbone("Qwen/Qwen2-VL-2B-Instruct", mode="unified", head_type="self_init")
    >>> embeddings = model(**processor.process_queries(rows)).embeddings
    ```
    """

    def __init__(self, config: TTEConfig, vlm: PreTrainedModel | None = None):
        super().__init__(config)
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.vlm_config)
        if config.head_type == "self_init":
            self.head = SelfInitHead(config, self.vlm.get_decoder())
        else:
            self.head = HEADS[config.head_type](config)
        self.projection = nn.Linear(config.hidden_size, config.output_dim) if config.output_dim else None
        if config.mode == "unified":
            self.vlm.requires_grad_(False)
        self.post_init()

    @classmethod
    def from_backbone(cls, pretrained_model_name_or_path: str, **kwargs) -> TTEForEmbedding:
        """
        Wrap a pretrained VLM checkpoint (hub id or local folder) into a `TTEForEmbedding`.

        Args:
            pretrained_model_name_or_path (`str`): e.g. `"Qwen/Qwen2-VL-2B-Instruct"` or a local folder.
            kwargs: `TTEConfig` fields (`mode`, `head_type`, ...) configure the model; everything else (`dtype`,
                `attn_implementation`, `device_map`, `revision`, ...) goes to the backbone's `from_pretrained`.
        """
        tte_fields = {f.name for f in fields(TTEConfig)} - {f.name for f in fields(PreTrainedConfig)} - {"vlm_config"}
        tte_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in tte_fields}
        backbone_config = AutoConfig.from_pretrained(pretrained_model_name_or_path,
                                                     revision=kwargs.get("revision"))
        if backbone_config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} is a {backbone_config.model_type!r} model, not a vision-language "
                f"model that AutoModelForImageTextToText can load"
            )
        config = TTEConfig(vlm_config=backbone_config, **tte_kwargs)
        vlm = AutoModelForImageTextToText.from_pretrained(pretrained_model_name_or_path, **kwargs)
        config.vlm_config = vlm.config
        model = cls(config, vlm=vlm)
        # the new head sits where the backbone's last layers are (they may be spread by `device_map`)
        head_device = vlm.get_decoder().norm.weight.device
        for module in (model.head, model.projection):
            if module is not None:
                module.to(device=head_device, dtype=vlm.dtype)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus a model card (README.md) with usage if the folder has none."""
        super().save_pretrained(save_directory, *args, **kwargs)
        card = os.path.join(save_directory, "README.md")
        if kwargs.get("is_main_process", True) and not os.path.exists(card):
            with open(card, "w", encoding="utf-8") as handle:
                handle.write(MODEL_CARD.format(mode=self.config.mode, head_type=self.config.head_type,
                                               backbone=self.config.vlm_config.model_type))

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vlm.parameters())

    def generate(self, *args, **kwargs):
        """Generate with the backbone (e.g. ECR from a unified model's reasoner); see `GenerationMixin.generate`."""
        return self.vlm.generate(*args, **kwargs)

    def _needs_all_hidden_states(self) -> bool:
        return self.config.head_type == "qformer" or self.config.head_layer != -1

    def backbone_states(self, input_ids=None, attention_mask=None, all_hidden_states: bool = False,
                        **backbone_inputs) -> BackboneStates:
        """Run the backbone once and collect what the head reads (every layer's states if `all_hidden_states`)."""
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        capture = None
        if isinstance(self.head, SelfInitHead):
            capture = LayerCapture(self.vlm.get_decoder(), self.head.first_layer)
        grad = torch.is_grad_enabled() and self.backbone_trainable
        with torch.set_grad_enabled(grad), capture() if capture else contextlib.nullcontext():
            outputs = self.vlm.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=all_hidden_states or self._needs_all_hidden_states(),
                use_cache=False,
                return_dict=True,
                **backbone_inputs,
            )
        hidden_states = outputs.hidden_states or (outputs.last_hidden_state,)
        return BackboneStates(hidden_states, attention_mask, capture)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **backbone_inputs,
    ) -> TTEEmbeddingOutput:
        r"""
        Embed a batch made by `TTEProcessor` (`input_ids`, `attention_mask`, and any of `pixel_values`,
        `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `mm_token_type_ids`, ...).

        Returns:
            [`TTEEmbeddingOutput`] with `embeddings` of shape `(batch_size, dim)`.
        """
        states = self.backbone_states(input_ids, attention_mask, bool(output_hidden_states), **backbone_inputs)
        embeddings = self.head(states)
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        if self.config.normalize:
            embeddings = F.normalize(embeddings.float(), dim=-1).to(embeddings.dtype)
        return TTEEmbeddingOutput(
            embeddings=embeddings,
            hidden_states=states.hidden_states if output_hidden_states else None,
        )


TTEForEmbedding.register_for_auto_class("AutoModel")

__all__ = ["TTEEmbeddingOutput", "TTEForEmbedding", "TTEPreTrainedModel"]

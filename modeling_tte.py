"""Think-Then-Embed embedding model: a vision-language backbone plus a pooling head.

Hub remote code: imports only torch, transformers and the sibling `configuration_tte`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from transformers import AutoConfig, AutoModelForImageTextToText, LogitsProcessor, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import can_return_tuple

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
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The backbone's attention weights (one per layer), when `output_attentions=True` (needs an attention
            implementation that returns them, e.g. `attn_implementation="eager"`).
    """

    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class TTEGenerationOutput(ModelOutput):
    """
    Output of [`TTEForEmbedding.generate_and_embed`]: the reasoning trace (ECR) written by the backbone and the
    embedding of prompt + ECR, from one generation pass.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, dim)`):
            The pooled embeddings of prompt + ECR (the final end-of-turn token), as `forward` computes them.
        sequences (`torch.LongTensor` of shape `(batch_size, prompt_length + generated_length)`):
            Prompt and generated ids, as `generate` returns them.
        ecr_ids (`torch.LongTensor` of shape `(batch_size, ecr_length)`):
            Each row's ECR: its generated ids up to and including the first end-of-turn (eos) token, which is
            appended where generation stopped at `max_new_tokens`; padded after it.
        attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length + ecr_length)`):
            The prompt's mask followed by the ECR's (1 up to the row's eos): the mask the embedding was pooled with.
        thought (`torch.BoolTensor` of shape `(batch_size,)`):
            Whether each row thought. A row that did not (`think=False`, or the router's choice with `think="auto"`)
            has an empty ECR: its embedding is of prompt + end-of-turn token.
    """

    embeddings: torch.FloatTensor | None = None
    sequences: torch.LongTensor | None = None
    ecr_ids: torch.LongTensor | None = None
    attention_mask: torch.LongTensor | None = None
    thought: torch.BoolTensor | None = None


@dataclass
class BackboneStates:
    """What a head may read from one backbone pass."""

    hidden_states: tuple[torch.Tensor, ...]
    attention_mask: torch.Tensor
    layer_capture: LayerCapture | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The hidden state of each row's last non-padding token; works for left and right padding."""
    if attention_mask is None:
        return hidden[:, -1]
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class LayerCapture:
    """Forward hooks on a decoder's layers that record what enters layer `first` (hidden state and keyword
    arguments such as rotary position embeddings and the attention mask) and anything the decoder adds to the
    residual stream between later layers (e.g. Qwen3-VL's deepstack visual features). Records every call of the
    decoder (e.g. prefill and decode steps of `generate`); `merge_calls` joins them along the sequence."""

    def __init__(self, decoder: nn.Module, first: int):
        self.decoder, self.first = decoder, first
        self.inputs: torch.Tensor | None = None
        self.layer_kwargs: dict = {}
        self._calls: list[tuple[torch.Tensor, dict]] = []
        self._outputs: list[torch.Tensor] = []
        self._boundaries: list[torch.Tensor] = []

    def _on_first(self, module, args, kwargs):
        self.inputs = args[0] if args else kwargs["hidden_states"]
        self.layer_kwargs = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "cache", "use_cache",
                                                                          "past_key_values", "past_key_value")}
        self._calls.append((self.inputs, self.layer_kwargs))

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
        """Per copied layer: what the decoder added after it (joined over calls along the sequence), or `None`
        when nothing was."""
        depth = len(self.decoder.layers) - self.first
        result = []
        for index in range(depth):
            pairs = list(zip(self._outputs[index::depth], self._boundaries[index::depth], strict=True))
            if all(after is out for out, after in pairs):
                result.append(None)
            else:
                result.append(torch.cat([after - out for out, after in pairs], dim=1))
        return result

    def merge_calls(self, attention_mask: torch.Tensor) -> None:
        """Join the recorded calls into one record of the whole sequence, as one forward over it with the 2D
        `attention_mask` would have recorded: inputs and rotary position embeddings concatenated, the layer's mask
        for the whole sequence, and no text `position_ids` (a single forward passes none)."""
        self.inputs = torch.cat([inputs for inputs, _ in self._calls], dim=1)
        mask = sequence_mask(self.decoder.config, self.inputs, attention_mask, self.first)
        self.layer_kwargs = dict(self._calls[0][1], attention_mask=mask)
        if "position_ids" in self.layer_kwargs:
            self.layer_kwargs["position_ids"] = None
        rotary = [kwargs.get("position_embeddings") for _, kwargs in self._calls]
        if rotary[0] is not None:
            joined = (torch.cat(parts, dim=-2) for parts in zip(*rotary, strict=True))
            self.layer_kwargs["position_embeddings"] = tuple(joined)


class GenerationCapture:
    """Forward hooks that record, at every call of a decoder during `generate` (prefill, each decode step, a final
    step), only what a head reads: the hidden states at `hidden_indices` (indexed like `output_hidden_states`: 0 is
    the embeddings, `depth` the final normalised output) and, for the self-initialised head, a `LayerCapture` of its
    first copied layer `first`. `backbone_states` joins the calls along the sequence."""

    def __init__(self, decoder: nn.Module, hidden_indices: list[int], first: int | None = None):
        self.decoder = decoder
        self.hidden: dict[int, list[torch.Tensor]] = {index: [] for index in hidden_indices}
        self.layer_capture = LayerCapture(decoder, first) if first is not None else None
        self.position_ids: torch.Tensor | None = None

    def _record(self, index: int, entering: bool = False):
        def hook(module, args, kwargs_or_output):
            if entering:  # a pre-hook: what enters the module
                value = args[0] if args else kwargs_or_output["hidden_states"]
            else:
                value = kwargs_or_output[0] if isinstance(kwargs_or_output, tuple) else kwargs_or_output
            self.hidden[index].append(value)
        return hook

    def _on_decoder(self, module, args, kwargs):
        self.position_ids = kwargs.get("position_ids")

    @contextlib.contextmanager
    def __call__(self):
        layers, depth = self.decoder.layers, len(self.decoder.layers)
        handles = [self.decoder.register_forward_pre_hook(self._on_decoder, with_kwargs=True)]
        for index in self.hidden:
            if index == 0:
                handles.append(layers[0].register_forward_pre_hook(self._record(0, entering=True), with_kwargs=True))
            else:
                module = self.decoder.norm if index == depth else layers[index - 1]
                handles.append(module.register_forward_hook(self._record(index)))
        try:
            with self.layer_capture() if self.layer_capture else contextlib.nullcontext():
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def backbone_states(self, attention_mask: torch.Tensor) -> BackboneStates:
        """What a head reads, for the whole sequence the decoder was called on, with its 2D `attention_mask`."""
        depth = len(self.decoder.layers)
        hidden_states = tuple(torch.cat(self.hidden[index], dim=1) if index in self.hidden else None
                              for index in range(depth + 1))
        if self.layer_capture is not None:
            self.layer_capture.merge_calls(attention_mask)
        return BackboneStates(hidden_states, attention_mask, self.layer_capture)


def sequence_mask(config: PreTrainedConfig, inputs: torch.Tensor, attention_mask: torch.Tensor, layer: int):
    """The attention mask decoder layer `layer` receives in one forward over `inputs` with a 2D `attention_mask`."""
    layer_types = getattr(config, "layer_types", None) or []
    sliding = layer < len(layer_types) and layer_types[layer] == "sliding_attention"
    make_mask = create_sliding_window_causal_mask if sliding else create_causal_mask
    return make_mask(config=config, inputs_embeds=inputs, attention_mask=attention_mask, cache=None)


def ecr_from_generation(generated: torch.Tensor, eos_token_ids: list[int], pad_token_id: int):
    """
    Each row's ECR from its generated ids: up to and including the first of `eos_token_ids`, with `eos_token_ids[0]`
    appended (one more column) to rows that have none. Returns `(ecr_ids, ecr_mask)`, padded with `pad_token_id`.
    """
    eos = torch.tensor(eos_token_ids, device=generated.device)
    has_eos = torch.isin(generated, eos).any(dim=1)
    if not has_eos.all():
        extra = torch.where(has_eos, pad_token_id, eos_token_ids[0]).to(generated.dtype)
        generated = torch.cat([generated, extra[:, None]], dim=1)
    first_eos = torch.isin(generated, eos).int().argmax(dim=1)
    ecr_mask = torch.arange(generated.shape[1], device=generated.device)[None] <= first_eos[:, None]
    return generated.masked_fill(~ecr_mask, pad_token_id), ecr_mask.long()


class ThinkGate(LogitsProcessor):
    """
    A logits processor that decides, at the first generation step (the scores of prefill), which rows think:
    `decide()` returns one boolean per row (e.g. the router's choice, read from the prefill states that hooks
    captured). A row that does not think gets the end-of-turn token `eos_token_id` forced, so its ECR is empty and it
    costs no decode step. `thinks` holds the decision.
    """

    def __init__(self, decide, prompt_length: int, eos_token_id: int):
        self.decide, self.prompt_length, self.eos_token_id = decide, prompt_length, eos_token_id
        self.thinks: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] != self.prompt_length:
            return scores
        self.thinks = self.decide().to(scores.device)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.eos_token_id] = 0
        return torch.where(self.thinks[:, None], scores, forced)


def two_pass_inputs(prompt_inputs: dict, output: TTEGenerationOutput) -> dict:
    """
    The inputs of the two-pass reference for a [`TTEForEmbedding.generate_and_embed`] result: `prompt_inputs` (the
    left-padded generation batch, with its media) with each row's ECR appended, for `model(**inputs)`.
    """
    prompt_ids = prompt_inputs["input_ids"]
    inputs = dict(prompt_inputs, input_ids=torch.cat([prompt_ids, output.ecr_ids], dim=1),
                  attention_mask=output.attention_mask)
    for key, value in prompt_inputs.items():  # per-token tensors such as mm_token_type_ids: the ECR is text
        if key not in ("input_ids", "attention_mask") and torch.is_tensor(value) and value.shape == prompt_ids.shape:
            inputs[key] = torch.cat([value, value.new_zeros(output.ecr_ids.shape)], dim=1)
    return inputs


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
        hidden, mask = states.hidden_states[self.layer], states.attention_mask.bool()
        # each token attends to the latents on its own: all rows' real tokens form one batch (no padding, and the
        # latents' keys and values are projected once, not once per row)
        tokens, latents = hidden[mask][None], self.latents.to(hidden.dtype)[None]
        attended, _ = self.attention(tokens, latents, latents, need_weights=False)
        per_token = self.mlp(attended[0])
        sums = per_token.new_zeros(hidden.shape[0], hidden.shape[-1]).index_add_(0, mask.nonzero()[:, 0], per_token)
        return sums / mask.sum(1, keepdim=True).clamp(min=1).to(sums.dtype)


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

Rows are strings (text), PIL images, or dicts with any of `image` (PIL image, path, `http(s)://` URL, base64
`data:` URI, numpy array or tensor), `video` (a video file such as `.mp4`, a folder or list of frames, or an array
of frames), `text`, `instruction` and `ecr`.

The `feature-extraction` pipeline does **not** give TTE embeddings: it tokenizes raw text, without the chat
template, the ECR or the end-of-turn token whose state is pooled (the model logs a warning when it sees such
inputs). Use the processor as above.
"""

# sentence-transformers: the input module (remote code beside this file) and the files that load it. The module's
# own config has another name than `config.json`, which is TTE's.
SENTENCE_TRANSFORMERS_MODULE = "sentence_tte.py"
SENTENCE_TRANSFORMERS_FILES = {
    "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_tte.TTESentenceModule"}],
    "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "prompts": {"query": "", "document": ""},
                                          "default_prompt_name": None, "similarity_fn_name": "cosine"},
    "sentence_tte_config.json": {"think_task_type": "retrieval", "max_new_tokens": None},
}


def write_sentence_transformers_files(folder, sources: list[str]) -> None:
    """
    Make `folder` load with `SentenceTransformer(folder, trust_remote_code=True)`: copy `sentence_tte.py` from the
    first of `sources` (folders) that holds it, and write `modules.json`, `config_sentence_transformers.json` and
    the module's `sentence_tte_config.json` where the folder has none (a folder that sentence-transformers saved
    keeps its own). Logs a warning and writes nothing when no source holds the module.
    """
    source = next((os.path.join(s, SENTENCE_TRANSFORMERS_MODULE) for s in sources
                   if s and os.path.isfile(os.path.join(s, SENTENCE_TRANSFORMERS_MODULE))), None)
    if source is None:
        logger.warning_once(f"{SENTENCE_TRANSFORMERS_MODULE} not found beside modeling_tte.py or in the model's "
                            f"folder: the saved folder will not load with sentence-transformers")
        return
    target = os.path.join(folder, SENTENCE_TRANSFORMERS_MODULE)
    if not os.path.exists(target) or not os.path.samefile(source, target):
        shutil.copyfile(source, target)
    for name, content in SENTENCE_TRANSFORMERS_FILES.items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(content, handle, indent=2)


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
        self.router = nn.Linear(config.hidden_size, 1) if config.router_layer is not None else None
        self.freeze_backbone_for_mode()
        self.post_init()

    def freeze_backbone_for_mode(self) -> None:
        """Freeze the backbone of a unified model (`config.mode="unified"`): it is the reasoner, only the head trains.
        Embedder mode leaves `requires_grad` as it is."""
        if self.config.mode == "unified":
            self.vlm.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """
        [`~PreTrainedModel.from_pretrained`], then [`freeze_backbone_for_mode`] again: loading replaces every
        parameter with a new, trainable `nn.Parameter`, which would undo the freeze `__init__` applied. A reloaded
        model is thus frozen exactly as [`from_backbone`] makes it.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_backbone_for_mode()
        return loaded

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's token embeddings (so `resize_token_embeddings` resizes the backbone)."""
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        """The backbone's LM head (a unified model generates ECR with it), resized with the input embeddings."""
        return self.vlm.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.vlm.set_output_embeddings(value)

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
        """`PreTrainedModel.save_pretrained`, plus a model card (README.md) with usage if the folder has none, and the
        files that make the folder load with `SentenceTransformer(folder, trust_remote_code=True)` (see
        `write_sentence_transformers_files`; save the processor into the same folder too)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        card = os.path.join(save_directory, "README.md")
        if kwargs.get("is_main_process", True) and not os.path.exists(card):
            with open(card, "w", encoding="utf-8") as handle:
                handle.write(self.model_card())
        if kwargs.get("is_main_process", True):
            write_sentence_transformers_files(save_directory, [os.path.dirname(os.path.abspath(__file__)),
                                                               str(self.name_or_path or "")])

    def model_card(self) -> str:
        """The model card (README.md) text that `save_pretrained` writes: what the model is and how to call it."""
        return MODEL_CARD.format(mode=self.config.mode, head_type=self.config.head_type,
                                 backbone=self.config.vlm_config.model_type)

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vlm.parameters())

    def generate(self, *args, **kwargs):
        """Generate with the backbone (e.g. ECR from a unified model's reasoner); see `GenerationMixin.generate`."""
        return self.vlm.generate(*args, **kwargs)

    def _needs_all_hidden_states(self) -> bool:
        return self.config.head_type == "qformer" or self.config.head_layer != -1

    def backbone_states(self, input_ids=None, attention_mask=None, all_hidden_states: bool = False,
                        output_attentions: bool = False, **backbone_inputs) -> BackboneStates:
        """Run the backbone once and collect what the head reads (every layer's states if `all_hidden_states`, and
        the attention weights if `output_attentions`)."""
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        capture = None
        if isinstance(self.head, SelfInitHead):
            capture = LayerCapture(self.vlm.get_decoder(), self.head.first_layer)
        grad = torch.is_grad_enabled() and self.backbone_trainable
        if output_attentions:
            backbone_inputs["output_attentions"] = True
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
        return BackboneStates(hidden_states, attention_mask, capture, getattr(outputs, "attentions", None))

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        use_cache: bool | None = None,
        **backbone_inputs,
    ) -> TTEEmbeddingOutput:
        r"""
        Embed a batch made by `TTEProcessor` (`input_ids`, `attention_mask`, and any of `pixel_values`,
        `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `mm_token_type_ids`, ...).

        Args:
            output_hidden_states (`bool`, *optional*): also return the backbone's hidden states.
            output_attentions (`bool`, *optional*): also return the backbone's attention weights.
            use_cache (`bool`, *optional*): ignored: an embedding pass keeps no key/value cache (`generate` and
                `generate_and_embed` do).
            return_dict (`bool`, *optional*): `False` returns `output.to_tuple()` (its non-`None` fields in order).

        Inputs must end with the end-of-turn token, as `TTEProcessor.process_queries` / `process_targets` make them
        (chat template, ECR as the assistant turn, end-of-turn token): a warning (once) says so otherwise, e.g. for the
        `feature-extraction` pipeline, which tokenizes raw text and cannot produce TTE embeddings.

        Returns:
            [`TTEEmbeddingOutput`] with `embeddings` of shape `(batch_size, dim)`.

        Raises:
            `ValueError`: when `input_ids` hold image (video) tokens but no `pixel_values` (`pixel_values_videos`) are
            given, or a row of `attention_mask` is all zeros (it has no token to pool).
        """
        self.check_inputs(input_ids, attention_mask, backbone_inputs)
        self.warn_unless_end_of_turn(input_ids, attention_mask)
        states = self.backbone_states(input_ids, attention_mask, bool(output_hidden_states), bool(output_attentions),
                                      **backbone_inputs)
        return TTEEmbeddingOutput(
            embeddings=self.embed_states(states),
            hidden_states=states.hidden_states if output_hidden_states else None,
            attentions=states.attentions if output_attentions else None,
        )

    def end_of_turn_token_ids(self) -> list[int]:
        """The backbone's end-of-turn token ids (its generation config's `eos_token_id`): the token whose state a TTE
        embedding pools."""
        eos = self.vlm.generation_config.eos_token_id
        if eos is None:
            eos = getattr(self.config.text_config, "eos_token_id", None)
        return [] if eos is None else [eos] if isinstance(eos, int) else [int(token) for token in eos]

    def warn_unless_end_of_turn(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        """Log a warning (once) when a row's last token is not an end-of-turn token: the inputs were not made by
        `TTEProcessor`, so the embedding is not a TTE embedding."""
        eos = self.end_of_turn_token_ids()
        if input_ids is None or not eos or input_ids.dim() != 2:
            return
        last = last_token_pool(input_ids[..., None], attention_mask)[:, 0]
        if not torch.isin(last, torch.tensor(eos, device=last.device)).all():
            logger.warning_once(
                "TTEForEmbedding: inputs do not end with the end-of-turn token, so they were not made by TTEProcessor "
                "(e.g. the `feature-extraction` pipeline or a bare tokenizer, which embed raw tokens without the chat "
                "template, ECR or end-of-turn token). Embed with `model(**processor.process_queries(rows))` / "
                "`model(**processor.process_targets(rows))`."
            )

    def check_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                     backbone_inputs: dict) -> None:
        """Raise `ValueError` for inputs that would embed silently wrong: an all-zero `attention_mask` row (nothing
        to pool: it would return the state of a padding token), or media tokens in `input_ids` without their pixels
        (the placeholders would be embedded as text)."""
        if attention_mask is not None and attention_mask.dim() == 2:
            empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"attention_mask row {empty[0]} is all zeros (empty rows: {empty}): a row needs at "
                                 f"least one token to embed")
        if input_ids is None:
            return
        vlm_config = self.config.vlm_config
        for kind, token_key, pixels_key in (("image", "image_token_id", "pixel_values"),
                                            ("video", "video_token_id", "pixel_values_videos")):
            token_id = getattr(vlm_config, token_key, None)
            if token_id is None or backbone_inputs.get(pixels_key) is not None:
                continue
            count = int((input_ids == token_id).sum())
            if count:
                raise ValueError(f"input_ids hold {count} {kind} tokens (id {token_id}) but no `{pixels_key}` was "
                                 f"passed: pass the processor's whole output (`model(**batch)`)")

    def embed_states(self, states: BackboneStates) -> torch.Tensor:
        """The head, the optional projection and normalisation applied to a backbone pass's states."""
        embeddings = self.head(states)
        if self.projection is not None:
            embeddings = self.projection(embeddings)
        if self.config.normalize:
            embeddings = F.normalize(embeddings.float(), dim=-1).to(embeddings.dtype)
        return embeddings

    # ---------------------------------------------------------------- the think router (think="auto")
    def add_router(self, layer: int = -1, threshold: float | None = None) -> nn.Linear:
        """Give a unified model a think router reading hidden-state index `layer` (`config.router_layer`) at the
        prompt's last token; `threshold` sets `config.router_threshold`. Returns the new (zero) linear router, to
        train with `train.train_router`."""
        if self.config.mode != "unified":
            raise ValueError("a think router needs a unified model (config.mode='unified')")
        self.config.router_layer = layer
        if threshold is not None:
            self.config.router_threshold = threshold
        self.config.validate_tte()
        norm = self.vlm.get_decoder().norm.weight
        self.router = nn.Linear(self.config.hidden_size, 1).to(device=norm.device, dtype=norm.dtype)
        nn.init.zeros_(self.router.weight)
        nn.init.zeros_(self.router.bias)
        return self.router

    def _require_router(self) -> None:
        if self.router is None:
            raise ValueError("this model has no think router (config.router_layer is None): train one with "
                             "`python -m train.train_router`, or pass think=True / think=False")

    def router_probability(self, prompt_states: torch.Tensor) -> torch.Tensor:
        """The router's probability, per row, that thinking changes the row's retrieval outcome, from the prompt's
        last-token states at `config.router_layer` (shape `(batch_size, hidden_size)`)."""
        self._require_router()
        logits = self.router(prompt_states.to(self.router.weight.dtype)).squeeze(-1)
        return torch.sigmoid(logits.float())

    @torch.no_grad()
    def router_states(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                      **backbone_inputs) -> torch.Tensor:
        """The states the router reads for reasoner prompts (`TTEProcessor.process_reasoner_inputs`): each prompt's
        last-token state at `config.router_layer`, from one forward over them, as `generate_and_embed` has them at
        the end of prefill."""
        if self.config.router_layer is None:
            self._require_router()
        states = self.backbone_states(input_ids, attention_mask, all_hidden_states=True, **backbone_inputs)
        return last_token_pool(states.hidden_states[self.config.router_layer], states.attention_mask)

    def think_probability(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                          **backbone_inputs) -> torch.Tensor:
        """`router_probability` of reasoner prompts, from `router_states`."""
        return self.router_probability(self.router_states(input_ids, attention_mask, **backbone_inputs))

    def _think_gate(self, think: bool | str, capture: GenerationCapture, attention_mask: torch.Tensor,
                    eos_token_id: int, threshold: float | None) -> ThinkGate | None:
        """The `ThinkGate` for `think` (`None` for `True`): never think, or the router's choice from the prefill
        states `capture` records at `config.router_layer`."""
        if think is True:
            return None
        if think is False:
            return ThinkGate(lambda: torch.zeros(attention_mask.shape[0], dtype=torch.bool), attention_mask.shape[1],
                             eos_token_id)
        if think != "auto":
            raise ValueError(f"think must be True, False or 'auto', got {think!r}")
        self._require_router()
        threshold = self.config.router_threshold if threshold is None else threshold
        index = self.config.router_layer % (self.config.num_backbone_layers + 1)

        def decide() -> torch.Tensor:
            prefill = capture.hidden[index][0]  # the first decoder call of generate: the prompts
            return self.router_probability(last_token_pool(prefill, attention_mask)) >= threshold
        return ThinkGate(decide, attention_mask.shape[1], eos_token_id)

    # ---------------------------------------------------------------- single-pass think-then-embed (TTE_u)
    def generate_and_embed(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        think: bool | str = True,
        router_threshold: float | None = None,
        **generate_kwargs,
    ) -> TTEGenerationOutput:
        r"""
        Single-pass TTE_u: the backbone writes each row's ECR and the head embeds prompt + ECR from the hidden states
        computed during generation (captured with hooks, for just what the head reads), with no second forward over
        prompt + ECR. Equal to `model(**two_pass_inputs(inputs, output))`. Greedy unless `do_sample=True`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`):
                Left-padded generation prompts, e.g. from `TTEProcessor.process_reasoner_inputs`.
            attention_mask (`torch.Tensor` of shape `(batch_size, prompt_length)`, *optional*):
                The prompts' padding mask.
            max_new_tokens (`int`, *optional*):
                ECR length cap (the thinking budget), defaults to `config.max_ecr_tokens`; an ECR cut there gets an
                eos appended.
            think (`bool` or `"auto"`, *optional*, defaults to `True`):
                `True`: every row thinks. `False`: none does (prompt + end-of-turn is embedded, no decode step).
                `"auto"`: the model's router (`config.router_layer`) decides per row from its prompt's state at the
                end of prefill, inside the same `generate` call (no extra forward).
            router_threshold (`float`, *optional*):
                With `think="auto"`, overrides `config.router_threshold`.
            generate_kwargs:
                Media inputs (`pixel_values`, `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`,
                `mm_token_type_ids`, ...) and generation settings (`do_sample`, `eos_token_id`, ...) for `generate`.
                Beam search and assisted decoding are not supported.

        Returns:
            [`TTEGenerationOutput`] with `embeddings`, `sequences`, `ecr_ids`, the embedding's `attention_mask` and
            which rows `thought`.
        """
        if self.config.mode != "unified":
            raise ValueError(
                "generate_and_embed needs a unified model (config.mode='unified'): in embedder mode the reasoner is a "
                "separate model, so generate the ECR with it and embed with `forward`"
            )
        eos_token_ids, pad_token_id = self._single_pass_tokens(generate_kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.check_inputs(input_ids, attention_mask, generate_kwargs)
        generate_kwargs.setdefault("do_sample", False)
        first = self.head.first_layer if isinstance(self.head, SelfInitHead) else None
        router = [self.config.router_layer] if think == "auto" and self.router is not None else []
        capture = GenerationCapture(self.vlm.get_decoder(), self._head_hidden_indices(router), first)
        gate = self._think_gate(think, capture, attention_mask, eos_token_ids[0], router_threshold)
        if gate is not None:
            generate_kwargs["logits_processor"] = [*generate_kwargs.get("logits_processor", []), gate]
        with capture():  # the regions below are named for torch.profiler (`eval.bench_speed --profile`)
            with record_function("tte.generate"):
                generated = self.vlm.generate(input_ids=input_ids, attention_mask=attention_mask,
                                              max_new_tokens=max_new_tokens or self.config.max_ecr_tokens,
                                              return_dict_in_generate=True, use_cache=True, **generate_kwargs)
            new_tokens = generated.sequences[:, input_ids.shape[1]:]
            ecr_ids, ecr_mask = ecr_from_generation(new_tokens, eos_token_ids, pad_token_id)
            # generate never feeds its last token (nor the eos appended to capped rows): one more cached decode step
            decode_mask = torch.cat([attention_mask, torch.ones_like(ecr_ids)], dim=1)
            with record_function("tte.final_decode_step"):
                self._final_decode_step(ecr_ids[:, new_tokens.shape[1] - 1:], decode_mask, capture.position_ids,
                                        generated.cache)
        mask = torch.cat([attention_mask, ecr_mask.to(attention_mask.dtype)], dim=1)
        thought = gate.thinks if gate is not None else torch.ones(len(input_ids), dtype=torch.bool)
        with record_function("tte.merge_states"):
            states = capture.backbone_states(mask)
        with record_function("tte.head"):
            embeddings = self.embed_states(states)
        return TTEGenerationOutput(embeddings=embeddings,
                                   sequences=generated.sequences, ecr_ids=ecr_ids, attention_mask=mask,
                                   thought=thought.to(input_ids.device))

    def _head_hidden_indices(self, extra: list[int] = ()) -> list[int]:
        """The hidden-state indices (0 = embeddings, depth = final output) the head reads (none for self_init), and
        `extra` ones."""
        depth = self.config.num_backbone_layers
        qformer = self.config.head_type == "qformer"
        indices = self.config.resolved_qformer_layers if qformer else [self.config.head_layer]
        indices = [*([] if self.config.head_type == "self_init" else indices), *extra]
        return sorted({index % (depth + 1) for index in indices})

    def _single_pass_tokens(self, generate_kwargs: dict) -> tuple[list[int], int]:
        """Check the generation settings suit single-pass capture; return the eos token ids and the pad token id."""
        config = generate_kwargs.get("generation_config") or self.vlm.generation_config
        for key in ("num_beams", "num_return_sequences"):
            if (generate_kwargs.get(key, getattr(config, key, None)) or 1) > 1:
                raise ValueError(f"generate_and_embed supports one greedy or sampled sequence per row, got {key}>1")
        if generate_kwargs.get("assistant_model") is not None or generate_kwargs.get("prompt_lookup_num_tokens"):
            raise ValueError("generate_and_embed does not support assisted decoding")
        eos = generate_kwargs.get("eos_token_id", config.eos_token_id)
        if eos is None:
            raise ValueError("generate_and_embed needs the end-of-turn token: pass `eos_token_id`")
        eos = [eos] if isinstance(eos, int) else [int(token) for token in eos]
        pad = generate_kwargs.get("pad_token_id", config.pad_token_id)
        return eos, eos[0] if pad is None else pad

    @torch.no_grad()
    def _final_decode_step(self, tokens, attention_mask, position_ids, cache) -> None:
        """Feed `tokens` through the backbone with the generation's `cache`, positioned as `generate`'s next decode
        step would position them (after `position_ids`, the last step's), so the hooks capture their states too."""
        if position_ids is not None:
            position_ids = position_ids[..., -1:] + torch.arange(1, tokens.shape[1] + 1, device=position_ids.device)
        self.vlm.base_model(input_ids=tokens, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                            use_cache=True)


TTEForEmbedding.register_for_auto_class("AutoModel")

__all__ = ["TTEEmbeddingOutput", "TTEForEmbedding", "TTEGenerationOutput", "TTEPreTrainedModel", "two_pass_inputs"]

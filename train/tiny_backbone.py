"""Write a complete, tiny, randomly initialised Qwen-VL checkpoint folder, offline.

The folder holds what a real hub checkpoint holds (config, safetensors weights, a trained BPE
tokenizer with the Qwen special tokens and a chat template, image and video processors), so the
tests and the demo exercise exactly the code path used for ``Qwen/Qwen2-VL-2B-Instruct``.

    python -m train.tiny_backbone --family qwen2_vl --output_dir /tmp/tiny-qwen2-vl
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]

# A Qwen-style chat template. Assistant text sits in a `{% generation %}` block that crosses no
# `{% if %}` boundary, which TRL's assistant-only loss needs.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{% for part in parts %}{{ part['text'] }}{% endfor %}<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "{% for part in parts %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the tokenizer is trained on: prompt vocabulary, colours, shapes, relations, digits.
_CORPUS_WORDS = """
the a an of to in on at is are be and or not with which what where how many who this that it
image video document page frame query target text caption question answer instruction represent
given find retrieve classify describe identify locate object scene shape colour color size left
right above below top bottom between next near far inside outside first second third last start
follow link links reach step think reasoning key value small large big tiny medium count number
red green blue yellow black white orange purple pink brown grey gray cyan magenta circle square
triangle star cross ring diamond hexagon background card grid edit replace remove add change
same different more fewer than most least true false yes no zero one two three four five six
seven eight nine ten 0 1 2 3 4 5 6 7 8 9 Answer: Summarize above in one word. Let's think step
by step. <think> </think> hint ground truth do not reveal relevant information embedding
""".split()


def _corpus():
    """Yield training sentences for the tiny tokenizer (deterministic)."""
    words = _CORPUS_WORDS
    for n in range(3000):
        yield " ".join(words[(n * k + k * k) % len(words)] for k in range(1, 12))
    for word in words:
        yield word
        yield word.capitalize() + "."


def build_tokenizer(vocab_size: int = 1024) -> Qwen2Tokenizer:
    """Train a small byte-level BPE tokenizer with the Qwen-VL special tokens and chat template."""
    base = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    tokenizer = base.train_new_from_iterator(_corpus(), vocab_size=vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def build_config(family: str, tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2,
                 vision_width: int = 32, patch_size: int = 8, num_heads: int = 4, num_kv_heads: int = 2,
                 intermediate_size: int | None = None, vision_heads: int = 2, vision_mlp_ratio: int = 2):
    """A config of the given family whose special token ids match ``tokenizer``: tiny by default, any shape (e.g.
    Qwen2-VL-2B's: hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960; vision 32 x 1280, 16 heads, ratio 4)
    with the sizes given. `intermediate_size` defaults to twice the hidden size."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    heads = num_heads
    head_dim = hidden_size // heads
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": _mrope_section(head_dim)},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    vision = dict(depth=vision_depth, num_heads=vision_heads, patch_size=patch_size, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    if family == "qwen2_vl":
        vision.update(embed_dim=vision_width, hidden_size=hidden_size, mlp_ratio=vision_mlp_ratio)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    if family == "qwen2_5_vl":
        vision.update(hidden_size=vision_width, intermediate_size=vision_width * vision_mlp_ratio,
                      out_hidden_size=hidden_size, window_size=patch_size * 4, fullatt_block_indexes=[vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    text.update(head_dim=head_dim)
    text["rope_parameters"]["mrope_interleaved"] = True
    vision.update(hidden_size=vision_width, intermediate_size=vision_width * vision_mlp_ratio,
                  out_hidden_size=hidden_size, num_position_embeddings=64, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


def build_processor(family: str, tokenizer, patch_size: int = 8):
    """The stock processor class of ``family`` with small image and video sizes."""
    pixels = {"shortest_edge": (patch_size * 2) ** 2, "longest_edge": (patch_size * 2) ** 2 * 64}
    common = dict(patch_size=patch_size, merge_size=2, temporal_patch_size=2, size=pixels)
    image_processor = Qwen2VLImageProcessor(**common)
    if family == "qwen3_vl":
        video_processor = Qwen3VLVideoProcessor(**common, do_sample_frames=False, cap_pixels_per_frame=True)
        from transformers import Qwen3VLProcessor as processor_class
    else:
        video_processor = Qwen2VLVideoProcessor(**common, do_sample_frames=False, cap_pixels_per_frame=True)
        from transformers import Qwen2VLProcessor as processor_class
        if family == "qwen2_5_vl":
            from transformers import Qwen2_5_VLProcessor as processor_class
    return processor_class(image_processor=image_processor, video_processor=video_processor,
                           tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def write_tiny_backbone(out_dir: str | Path, family: str = "qwen2_vl", seed: int = 0, dtype: str | None = None,
                        **sizes) -> Path:
    """Write a tiny ``family`` checkpoint (model, tokenizer, processor) to ``out_dir`` and return it.

    ``sizes`` are forwarded to :func:`build_config` (``hidden_size``, ``num_layers``, ``num_heads``,
    ``num_kv_heads``, ``intermediate_size``, ``vision_depth``, ``vision_width``, ``vision_heads``,
    ``vision_mlp_ratio``, ``patch_size``); ``dtype`` (e.g. ``"bfloat16"``) is the dtype of the saved weights.
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = build_config(family, tokenizer, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype) if dtype else None)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor = build_processor(family, tokenizer, patch_size=sizes.get("patch_size", 8))
    processor.save_pretrained(out_dir)
    return out_dir


@dataclass
class TinyBackboneArguments:
    """Options of `python -m train.tiny_backbone`."""

    output_dir: str = field(metadata={"help": "folder the checkpoint is written to"})
    family: str = field(default="qwen2_vl", metadata={"help": "model family", "choices": FAMILIES})
    hidden_size: int = field(default=64, metadata={"help": "hidden size of the language model"})
    num_layers: int = field(default=2, metadata={"help": "decoder layers"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights"})


def main(argv=None):
    from train.cli import parse

    (args,) = parse((TinyBackboneArguments,), "train.tiny_backbone", __doc__, argv)
    path = write_tiny_backbone(args.output_dir, args.family, seed=args.seed, hidden_size=args.hidden_size,
                               num_layers=args.num_layers)
    AutoProcessor.from_pretrained(path)  # fail loudly here if the folder is incomplete
    print(path)


if __name__ == "__main__":
    main()

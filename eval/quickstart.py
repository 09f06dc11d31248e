"""Quick start, offline: build a tiny Qwen2-VL, wrap it as a TTE embedder and embed image+text queries.

    python -m eval.quickstart --output_dir runs/quickstart
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from train.tiny_backbone import FAMILIES, write_tiny_backbone

COLOURS = ["red", "green", "blue", "yellow"]


@dataclass
class QuickstartArguments:
    """Options of `python -m eval.quickstart`."""

    output_dir: str = field(default="runs/quickstart", metadata={"help": "folder for the backbone and the model"})
    family: str = field(default="qwen2_vl", metadata={"help": "backbone family", "choices": FAMILIES})


def main(argv=None) -> torch.Tensor:
    from train.cli import parse

    (args,) = parse((QuickstartArguments,), "eval.quickstart", __doc__, argv)
    out = Path(args.output_dir)
    backbone = write_tiny_backbone(out / "backbone", args.family)
    model = TTEForEmbedding.from_backbone(str(backbone)).eval()
    processor = TTEProcessor.from_backbone(str(backbone))
    queries = [
        {"image": Image.new("RGB", (32, 32), colour), "instruction": "Find a caption for this image.",
         "ecr": f"<think>The image is filled with {colour}.</think> Answer: {colour}"}
        for colour in COLOURS
    ]
    targets = [{"text": f"a {colour} square", "ecr": f"Answer: {colour}"} for colour in COLOURS]
    with torch.inference_mode():
        query_emb = model(**processor.process_queries(queries)).embeddings
        target_emb = model(**processor.process_targets(targets)).embeddings
    scores = query_emb @ target_emb.T
    print(f"query embeddings {tuple(query_emb.shape)}, norms {query_emb.norm(dim=-1).tolist()}")
    print("query x target similarity (an untrained tiny model, so the numbers are arbitrary):")
    for colour, row in zip(COLOURS, scores.tolist(), strict=True):
        print(f"  {colour:>7}: " + " ".join(f"{s:+.3f}" for s in row))
    model.save_pretrained(out / "tte-model")
    processor.save_pretrained(out / "tte-model")
    print(f"saved a trust_remote_code checkpoint to {out / 'tte-model'}")
    return scores


if __name__ == "__main__":
    main()

"""Quick start, offline: build a tiny Qwen2-VL, wrap it as a TTE embedder and embed image+text queries.

    python -m eval.quickstart --out runs/quickstart
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from train.tiny_backbone import write_tiny_backbone

COLOURS = ["red", "green", "blue", "yellow"]


def main(argv=None) -> torch.Tensor:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quickstart")
    parser.add_argument("--family", default="qwen2_vl", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    args = parser.parse_args(argv)
    out = Path(args.out)
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

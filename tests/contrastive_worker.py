"""One short contrastive run for tests/test_distributed_training.py; writes its results as JSON (and rank 0's
trainable parameters). Run directly (one process) or under `accelerate launch` (several).

    python tests/contrastive_worker.py --backbone BACKBONE --out OUT --per-device-batch 8
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.contrastive_utils import contrastive_args, make_rows
from train.collators import TTEContrastiveCollator
from train.trainer import TTEContrastiveTrainer, prepare_model_for_training


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", type=int, required=True)
    parser.add_argument("--gradcache-chunk", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = prepare_model_for_training(TTEForEmbedding.from_backbone(args.backbone, dtype=torch.float32), "full")
    processor = TTEProcessor.from_backbone(args.backbone)
    rows = make_rows(16, negatives=True)
    for row in rows[4:8] + rows[12:]:  # with two ranks of 4 rows, only rank 0 has hard negatives
        del row["neg_text"], row["neg_image"], row["neg_ecr"]
    training_args = contrastive_args(Path(args.out) / "trainer", per_device_train_batch_size=args.per_device_batch,
                                     max_steps=args.steps, learning_rate=0.05, max_grad_norm=0.0,
                                     loss_temperature=0.05, homogeneous_batches=False,
                                     train_sampling_strategy="sequential", gradcache_chunk_size=args.gradcache_chunk,
                                     ddp_timeout=120)
    trainer = TTEContrastiveTrainer(model=model, args=training_args, train_dataset=rows,
                                    data_collator=TTEContrastiveCollator(processor))
    out = Path(args.out)
    if trainer.is_world_process_zero():
        torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                   out / "params-initial.pt")
    output = trainer.train()
    result = {
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "args_world_size": trainer.args.world_size,
        "wrapped": type(trainer.model_wrapped).__name__,
        "training_loss": output.training_loss,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "rank": int(os.environ.get("RANK", 0)),
    }
    if trainer.is_world_process_zero():
        torch.save({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, out / "params.pt")
    (out / f"result-{result['rank']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()

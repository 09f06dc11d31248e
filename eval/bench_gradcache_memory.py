"""Peak memory (RSS) of one contrastive training step at a large batch, with and without GradCache, on a tiny
Qwen2-VL on the CPU. Each setting runs in a fresh process, so each peak is that step's own.

    OMP_NUM_THREADS=1 python -m eval.bench_gradcache_memory --batch_size 512 --chunk_size 32

Prints, per setting, the process's RSS before the step, its peak during the step and their difference, then the
ratios (plain / GradCache). The loss of both settings is printed too: they must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_step(args) -> dict:
    """One `Trainer` step on `args.batch_size` rows (in this process); returns RSS numbers in MiB and the loss."""
    import torch
    from PIL import Image

    from modeling_tte import TTEForEmbedding
    from processing_tte import TTEProcessor
    from train.collators import TTEContrastiveCollator
    from train.tiny_backbone import write_tiny_backbone
    from train.trainer import TTEContrastiveConfig, TTEContrastiveTrainer, prepare_model_for_training

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        backbone = str(write_tiny_backbone(Path(folder) / "backbone", hidden_size=args.hidden_size,
                                           num_layers=args.num_layers))
        model = prepare_model_for_training(TTEForEmbedding.from_backbone(backbone, dtype=torch.float32), "full")
        processor = TTEProcessor.from_backbone(backbone)
        words = "red green blue yellow black white orange purple".split()
        rows = [{"dataset": "bench", "row_id": str(i),
                 "qry_text": f"Find the caption of the image. {' '.join(words[(i + k) % 8] for k in range(6))}",
                 "qry_image": Image.new("RGB", (32, 32), words[i % 8]) if i % 2 == 0 else "",
                 "pos_text": f"a {words[i % 8]} square next to a {words[(i * 7) % 8]} circle, number {i}",
                 "pos_image": ""} for i in range(args.batch_size)]
        training_args = TTEContrastiveConfig(
            output_dir=str(Path(folder) / "out"), use_cpu=True, report_to="none", save_strategy="no",
            per_device_train_batch_size=args.batch_size, max_steps=1, optim="sgd", learning_rate=0.0,
            disable_tqdm=True, homogeneous_batches=False, gradcache_chunk_size=args.chunk_size or None)
        trainer = TTEContrastiveTrainer(model=model, args=training_args, train_dataset=rows,
                                        data_collator=TTEContrastiveCollator(processor))
        before = _rss_mib()
        loss = trainer.train().training_loss
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"chunk_size": args.chunk_size, "rss_before_mib": before, "peak_rss_mib": peak,
            "step_mib": peak - before, "loss": loss}


@dataclass
class BenchGradCacheArguments:
    """Options of `python -m eval.bench_gradcache_memory`."""

    batch_size: int = field(default=512, metadata={"help": "rows per training step"})
    chunk_size: int = field(default=32, metadata={"help": "GradCache chunk size of the second run"})
    hidden_size: int = field(default=128, metadata={"help": "tiny backbone width"})
    num_layers: int = field(default=2, metadata={"help": "tiny backbone depth"})
    child: bool = field(default=False, metadata={"help": argparse.SUPPRESS})


def main(argv=None) -> dict:
    from train.cli import parse

    (args,) = parse((BenchGradCacheArguments,), "eval.bench_gradcache_memory", __doc__, argv)
    if args.child:
        print(json.dumps(run_step(args)))
        return {}
    results = {}
    for name, chunk in (("plain", 0), ("gradcache", args.chunk_size)):
        command = [sys.executable, "-m", "eval.bench_gradcache_memory", "--child", "--batch_size",
                   str(args.batch_size), "--chunk_size", str(chunk), "--hidden_size", str(args.hidden_size),
                   "--num_layers", str(args.num_layers)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:>9} (chunk {chunk or '-'}): RSS before {r['rss_before_mib']:.0f} MiB, peak "
              f"{r['peak_rss_mib']:.0f} MiB, step {r['step_mib']:.0f} MiB, loss {r['loss']:.6f}")
    plain, cached = results["plain"], results["gradcache"]
    print(f"batch {args.batch_size}, hidden {args.hidden_size}, {args.num_layers} layers: peak RSS ratio plain/"
          f"GradCache = {plain['peak_rss_mib'] / cached['peak_rss_mib']:.2f}, step-memory ratio = "
          f"{plain['step_mib'] / max(cached['step_mib'], 1e-9):.2f}")
    return results


if __name__ == "__main__":
    main()

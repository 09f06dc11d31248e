"""Evaluate a TTE model on MMEB-V2 (or MMEB-V1) tasks with the reference protocol.

    python -m eval.run_mmeb --model runs/quickstart/tte-model --tasks ImageNet-1K,MSR-VTT,ViDoRe_arxivqa \
        --ecr-store runs/ecr/eval --out runs/mmeb/tte
    python -m eval.run_mmeb --model runs/quickstart/tte-model --category visdoc --ecr-mode none --out runs/mmeb/base
    accelerate launch --num_processes 8 -m eval.run_mmeb --model DIR --category all --ecr-store DIR --out DIR

Without `--data-root` the annotations come from the hub by name (`datasets.load_dataset`) and the media from the
benchmark's media repository (`huggingface_hub.snapshot_download`), unless `--media-root` points at them.
Writes `<out>/<benchmark>/<modality>/{task}_score.json` and `{task}_pred.jsonl`, then `<out>/<benchmark>/`
`<model>.json` (leaderboard layout), `summary.md` and `categories.png`. A rerun skips finished tasks.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eval.ecr import ECR_MODES
from eval.harness import evaluate_model
from eval.tasks import select_tasks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved TTE model folder or hub id")
    parser.add_argument("--benchmark", choices=["v2", "v1", "synthetic"], default="v2",
                        help="MMEB-V2, MMEB-V1, or the offline synthetic benchmark (eval/synthetic)")
    parser.add_argument("--tasks", help="comma-separated task names")
    parser.add_argument("--category", help="a category (I-CLS, V-MRET, VD-ViDoRe-V2, ...), a modality, or 'all'")
    parser.add_argument("--out", required=True, help="output folder for this model and setting")
    parser.add_argument("--data-root", help="local folder with the tasks (see eval/loaders.py); default: the hub")
    parser.add_argument("--media-root", help="folder that relative image/frame paths are relative to")
    parser.add_argument("--cache-dir", help="embedding cache (default <out>/embedding_cache); share it across runs")
    parser.add_argument("--ecr-store", help="ECR store folder (dataset = task name, row id, side)")
    parser.add_argument("--ecr-mode", choices=ECR_MODES, default="full", help="'none' is the no-ECR baseline")
    parser.add_argument("--reasoner", help="generate missing ECR with this reasoner: a local checkpoint, or with "
                        "--reasoner-url the served model's name")
    parser.add_argument("--reasoner-url", help="OpenAI-compatible endpoint serving --reasoner (vllm serve, ...)")
    parser.add_argument("--reasoner-max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8, help="frames sampled uniformly per video")
    parser.add_argument("--model-name", help="name in the leaderboard JSON (default: the model folder name)")
    return parser


def reasoner_backend(args, state):
    """The ECR generation backend `--reasoner` / `--reasoner-url` describe, or `None`."""
    if not args.reasoner:
        return None
    from train.generate_ecr import LocalBackend, OpenAIBackend

    if args.reasoner_url:
        return OpenAIBackend(args.reasoner_url, args.reasoner, args.reasoner,
                             max_new_tokens=args.reasoner_max_new_tokens)
    return LocalBackend(args.reasoner, max_new_tokens=args.reasoner_max_new_tokens, device=str(state.device))


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from accelerate import PartialState

    from train.ecr_store import ECRStore

    benchmark = args.benchmark if args.benchmark == "synthetic" else f"mmeb_{args.benchmark}"
    names = [n.strip() for n in args.tasks.split(",") if n.strip()] if args.tasks else None
    if not names and not args.category:
        parser.error("give --tasks or --category")
    try:
        tasks = select_tasks(names, args.category, benchmark)
    except KeyError as error:
        parser.error(error.args[0])
    state = PartialState()
    store = ECRStore(args.ecr_store, part=f"eval-rank{state.process_index}") if args.ecr_store else None
    if args.reasoner and store is None:
        parser.error("--reasoner writes the ECR it generates into --ecr-store; give one")
    scores = evaluate_model(args.model, tasks, args.out, ecr_mode=args.ecr_mode, batch_size=args.batch_size,
                            model_name=args.model_name, state=state, data_root=args.data_root,
                            media_root=args.media_root, cache_dir=args.cache_dir, ecr_store=store,
                            num_frames=args.num_frames, reasoner=reasoner_backend(args, state))
    if state.is_main_process:
        for spec in tasks:
            if spec.name in scores:
                print(f"{spec.name:45s} {spec.headline:14s} {100 * scores[spec.name][spec.headline]:6.2f}")
        print(f"summary: {Path(args.out) / benchmark / 'summary.md'}")
    return scores


if __name__ == "__main__":
    main()

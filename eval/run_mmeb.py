"""Evaluate a TTE model on MMEB-V2 (or MMEB-V1) tasks, scored as the reference evaluator (VLM2Vec-V2) scores them.

    python -m eval.run_mmeb --model DIR --tasks all --mmeb-root data/vlm2vec_eval --ecr-store runs/ecr/eval \
        --out runs/mmeb/tte
    python -m eval.run_mmeb --model DIR --tasks video,ViDoRe_arxivqa --ecr-mode none --out runs/mmeb/base
    python -m eval.run_mmeb --check-data --tasks all --mmeb-root data/vlm2vec_eval
    accelerate launch --num_processes 8 -m eval.run_mmeb --model DIR --tasks all --ecr-store DIR --out DIR

`--tasks` takes `all`, a modality (`image`, `video`, `visdoc`), a category (`I-CLS`, `V-MRET`, ...) or task names,
comma-separated. Annotations come from the hub (or its cache) by name, or from `--data-root` (local snapshot or
`save_to_disk` folders); media from `--mmeb-root` (the TIGER-Lab/MMEB-V2 clone as its download script leaves
it), or, without it, from the hub's MMEB-V2 archives unpacked once into `--mmeb-cache`. Writes
`<out>/<benchmark>/<modality>/{task}_score.json`, `{task}_pred.jsonl` and `{task}_provenance.json`, then
`<out>/<benchmark>/<model>.json` (the reference leaderboard layout), `summary.md` and `categories.png`. A rerun
reuses a task's score only when its model, settings and inputs are unchanged. Flags also take underscores
(`--ecr_store`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from eval.ecr import ECR_MODES
from eval.mmeb import DataSource, check_task
from eval.tasks import select_tasks


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _flag(parser, name: str, **kwargs) -> None:
    """Add `--name-with-dashes` and its `--name_with_underscores` spelling."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])
    parser.add_argument(*spellings, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _flag(parser, "model", help="saved TTE model folder or hub id (not needed with --check-data)")
    _flag(parser, "benchmark", choices=["v2", "v1", "synthetic"], default="v2",
          help="MMEB-V2, MMEB-V1, or the offline synthetic benchmark (eval/synthetic)")
    _flag(parser, "tasks", required=True,
          help="all | image | video | visdoc | a category | task names, comma-separated")
    _flag(parser, "out", help="output folder for this model and setting")
    _flag(parser, "data-root", help="local annotation folders (hub snapshots, save_to_disk); default: the hub")
    _flag(parser, "mmeb-root", help="the MMEB-V2 data folder (clone of TIGER-Lab/MMEB-V2, archives unpacked); "
          "default: fetch the archives a task needs from the hub into --mmeb-cache")
    _flag(parser, "mmeb-cache", help="where hub media archives are unpacked and visual-document pages written "
          "(default $TTE_CACHE/mmeb)")
    _flag(parser, "hub-cache", help="Hugging Face hub cache to read annotations and archives from (default: "
          "HF_HUB_CACHE)")
    _flag(parser, "cache-dir", help="embedding cache (default <out>/embedding_cache); share it across runs")
    _flag(parser, "ecr-store", help="ECR store folder (dataset = task name, row id, side)")
    _flag(parser, "ecr-mode", choices=ECR_MODES, default="full", help="'none' is the no-ECR baseline")
    _flag(parser, "reasoner", help="generate missing ECR with this reasoner: a local checkpoint, or with "
          "--reasoner-url the served model's name")
    _flag(parser, "reasoner-url", help="OpenAI-compatible endpoint serving --reasoner (vllm serve, ...)")
    _flag(parser, "reasoner-max-new-tokens", type=_positive_int, default=512)
    _flag(parser, "batch-size", type=_positive_int, default=8)
    _flag(parser, "num-workers", type=int, default=0, help="DataLoader worker processes that preprocess rows (images, "
          "frames, tokens) for the embedder and a local --reasoner; 0: in the main process")
    _flag(parser, "num-frames", type=_positive_int, default=8, help="frames sampled per video (reference: 8)")
    _flag(parser, "model-name", help="name in the leaderboard JSON (default: the model folder name)")
    _flag(parser, "reference-ndcg", action="store_true", help="graded NDCG with the reference's label/grade "
          "pairing after set() (see the README); default: each label keeps its own grade")
    _flag(parser, "trust-remote-code", action="store_true", help="allow code named by the model folder's auto_map "
          "to run (off: the project's own classes are used)")
    _flag(parser, "check-data", action="store_true", help="only report, per task, whether annotations and media "
          "are found (rows, candidates, frames); no model is loaded")
    return parser


def reasoner_backend(args, state):
    """The ECR generation backend `--reasoner` / `--reasoner-url` describe, or `None`."""
    if not args.reasoner:
        return None
    from train.generate_ecr import LocalBackend, OpenAIBackend

    if args.reasoner_url:
        return OpenAIBackend(args.reasoner_url, args.reasoner, args.reasoner,
                             max_new_tokens=args.reasoner_max_new_tokens)
    return LocalBackend(args.reasoner, max_new_tokens=args.reasoner_max_new_tokens, device=str(state.device),
                        num_workers=args.num_workers)


def check_data(tasks, source: DataSource, num_frames: int) -> list[dict]:
    """Print one line per task: found or the error; returns the reports."""
    reports = []
    for spec in tasks:
        report = check_task(spec, source, num_frames)
        reports.append(report)
        if report["ok"]:
            frames = f", {report['videos']} videos of {report['frames'][0]}-{report['frames'][1]} frames" \
                if report["frames"] else ""
            print(f"ok      {spec.name:45s} {report['rows']} rows, {report['candidates']} candidates{frames}")
        else:
            print(f"MISSING {spec.name:45s} {report['error']}")
    found = sum(r["ok"] for r in reports)
    print(f"{found} of {len(reports)} tasks found ({source.mode} annotations"
          f"{', media under ' + str(source.mmeb_root) if source.mmeb_root else ', hub media'})")
    return reports


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    benchmark = args.benchmark if args.benchmark == "synthetic" else f"mmeb_{args.benchmark}"
    try:
        tasks = select_tasks(args.tasks, benchmark)
    except KeyError as error:
        parser.error(error.args[0])
    source = DataSource(args.data_root, args.mmeb_root, args.mmeb_cache, args.hub_cache)
    if args.check_data:
        reports = check_data(tasks, source, args.num_frames)
        if not all(r["ok"] for r in reports):
            raise SystemExit(1)
        return {r["task"]: r for r in reports}
    if not args.model or not args.out:
        parser.error("give --model and --out (or --check-data)")
    return evaluate(args, parser, tasks, source, benchmark)


def evaluate(args, parser, tasks, source: DataSource, benchmark: str) -> dict:
    from eval.harness import evaluate_model
    from train.ecr_store import ECRStore
    from train.processes import process_state

    state = process_state()
    logging.getLogger(__name__).info("process %d/%d", state.process_index + 1, state.num_processes)
    store = ECRStore(args.ecr_store, part=f"eval-rank{state.process_index}") if args.ecr_store else None
    if args.reasoner and store is None:
        parser.error("--reasoner writes the ECR it generates into --ecr-store; give one")
    scores = evaluate_model(args.model, tasks, args.out, ecr_mode=args.ecr_mode, batch_size=args.batch_size,
                            model_name=args.model_name, state=state, source=source, cache_dir=args.cache_dir,
                            ecr_store=store, num_frames=args.num_frames, reasoner=reasoner_backend(args, state),
                            reference_ndcg=args.reference_ndcg, trust_remote_code=args.trust_remote_code,
                            num_workers=args.num_workers)
    if state.is_main_process:
        for spec in tasks:
            if spec.name in scores:
                print(f"{spec.name:45s} {spec.headline:14s} {100 * scores[spec.name][spec.headline]:6.2f}")
        print(f"summary: {Path(args.out) / benchmark / 'summary.md'}")
    return scores


if __name__ == "__main__":
    main()

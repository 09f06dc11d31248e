r"""Evaluate a TTE model on MMEB-V2 (or MMEB-V1) tasks, scored as the reference evaluator (VLM2Vec-V2) scores them.

    python -m eval.run_mmeb --model_name_or_path DIR --tasks all --mmeb_root data/vlm2vec_eval \
        --ecr_store runs/ecr/eval --output_dir runs/mmeb/tte
    python -m eval.run_mmeb --model_name_or_path DIR --tasks video,ViDoRe_arxivqa --ecr_mode none \
        --output_dir runs/mmeb/base
    python -m eval.run_mmeb --check_data --tasks all --mmeb_root data/vlm2vec_eval
    python -m eval.run_mmeb --config eval_settings.yaml --tasks image   # any option in YAML, overridable here
    accelerate launch --num_processes 8 -m eval.run_mmeb --model_name_or_path DIR --tasks all --ecr_store DIR \
        --output_dir DIR

`--tasks` takes `all`, a modality (`image`, `video`, `visdoc`), a category (`I-CLS`, `V-MRET`, ...) or task names,
comma-separated. Annotations come from the hub (or its cache) by name, or from `--data_root` (local snapshot or
`save_to_disk` folders); media from `--mmeb_root` (the TIGER-Lab/MMEB-V2 clone as its download script leaves
it), or, without it, from the hub's MMEB-V2 archives unpacked once into `--mmeb_cache`. Writes
`<output_dir>/<benchmark>/<modality>/{task}_score.json`, `{task}_pred.jsonl` and `{task}_provenance.json`, then
`<output_dir>/<benchmark>/<model>.json` (the reference leaderboard layout), `summary.md` and `categories.png`. A
rerun reuses a task's score only when its model, settings and inputs are unchanged. Options take the same names as
in the training scripts (`train.cli`); dashes work too (`--ecr_store`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from eval.ecr import ECR_MODES
from eval.mmeb import DataSource, check_task
from eval.tasks import select_tasks


@dataclass
class RunMMEBArguments:
    """Options of `python -m eval.run_mmeb` (see the module docstring)."""

    tasks: str = field(metadata={"help": "all | image | video | visdoc | a category | task names, comma-separated"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "saved TTE model folder or hub id (not needed with --check_data)"})
    output_dir: str | None = field(default=None, metadata={"help": "output folder for this model and setting"})
    benchmark: str = field(default="v2", metadata={
        "choices": ["v2", "v1", "synthetic"], "help": "MMEB-V2, MMEB-V1, or the offline synthetic benchmark"})
    data_root: str | None = field(default=None, metadata={
        "help": "local annotation folders (hub snapshots, save_to_disk); default: the hub"})
    mmeb_root: str | None = field(default=None, metadata={
        "help": "the MMEB-V2 data folder (clone of TIGER-Lab/MMEB-V2, archives unpacked); default: fetch the "
                "archives a task needs from the hub into --mmeb_cache"})
    mmeb_cache: str | None = field(default=None, metadata={
        "help": "where hub media archives are unpacked and visual-document pages written (default $TTE_CACHE/mmeb)"})
    hub_cache: str | None = field(default=None, metadata={
        "help": "Hugging Face hub cache to read annotations and archives from (default: HF_HUB_CACHE)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": "embedding cache (default <output_dir>/embedding_cache); share it across runs"})
    ecr_store: str | None = field(default=None, metadata={"help": "ECR store folder (dataset = task, row id, side)"})
    ecr_mode: str = field(default="full", metadata={"choices": list(ECR_MODES), "help": "'none': no-ECR baseline"})
    reasoner: str | None = field(default=None, metadata={
        "help": "generate missing ECR with this reasoner: a local checkpoint, or with --reasoner_url the served "
                "model's name"})
    reasoner_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint serving --reasoner (vllm serve, ...)"})
    reasoner_max_new_tokens: int = field(default=512, metadata={"help": "longest generated ECR in tokens"})
    prompts: str | None = field(default=None, metadata={
        "help": "reasoner prompt registry YAML read over the shipped one (default: the shipped registry)"})
    batch_size: int = field(default=8, metadata={"help": "rows per forward"})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes that preprocess rows (images, frames, tokens) for the embedder and a "
                "local --reasoner; 0: in the main process"})
    num_frames: int = field(default=8, metadata={"help": "frames sampled per video (reference: 8)"})
    model_name: str | None = field(default=None, metadata={
        "help": "name in the leaderboard JSON (default: the model folder name)"})
    reference_ndcg: bool = field(default=False, metadata={
        "help": "graded NDCG with the reference's label/grade pairing after set() (see the README); default: each "
                "label keeps its own grade"})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "allow code named by the model folder's auto_map to run (off: the project's own classes are used)"})
    check_data: bool = field(default=False, metadata={
        "help": "only report, per task, whether annotations and media are found (rows, candidates, frames); no "
                "model is loaded"})

    def __post_init__(self):
        for name in ("reasoner_max_new_tokens", "batch_size", "num_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if not self.check_data and not (self.model_name_or_path and self.output_dir):
            raise ValueError("give --model_name_or_path and --output_dir (or --check_data)")
        if self.reasoner and not self.ecr_store and not self.check_data:
            raise ValueError("--reasoner writes the ECR it generates into --ecr_store; give one")


def parse_args(argv=None) -> RunMMEBArguments:
    """The options from `--config` YAML and the command line."""
    from train.cli import parse

    return parse((RunMMEBArguments,), "eval.run_mmeb", __doc__, argv)[0]


def reasoner_backend(args, state):
    """The ECR generation backend `--reasoner` / `--reasoner_url` describe, or `None`."""
    if not args.reasoner:
        return None
    from train.generate_ecr import LocalBackend, OpenAIBackend

    if args.reasoner_url:
        return OpenAIBackend(args.reasoner_url, args.reasoner, args.reasoner,
                             max_new_tokens=args.reasoner_max_new_tokens, prompts=args.prompts)
    return LocalBackend(args.reasoner, max_new_tokens=args.reasoner_max_new_tokens, device=str(state.device),
                        num_workers=args.num_workers, prompts=args.prompts)


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
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    benchmark = args.benchmark if args.benchmark == "synthetic" else f"mmeb_{args.benchmark}"
    try:
        tasks = select_tasks(args.tasks, benchmark)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    source = DataSource(args.data_root, args.mmeb_root, args.mmeb_cache, args.hub_cache)
    if args.check_data:
        reports = check_data(tasks, source, args.num_frames)
        if not all(r["ok"] for r in reports):
            raise SystemExit(1)
        return {r["task"]: r for r in reports}
    return evaluate(args, tasks, source, benchmark)


def evaluate(args: RunMMEBArguments, tasks, source: DataSource, benchmark: str) -> dict:
    from eval.harness import evaluate_model
    from train.ecr_store import ECRStore
    from train.processes import process_state

    state = process_state()
    logging.getLogger(__name__).info("process %d/%d", state.process_index + 1, state.num_processes)
    store = ECRStore(args.ecr_store, part=f"eval-rank{state.process_index}") if args.ecr_store else None
    scores = evaluate_model(args.model_name_or_path, tasks, args.output_dir, ecr_mode=args.ecr_mode,
                            batch_size=args.batch_size, model_name=args.model_name, state=state, source=source,
                            cache_dir=args.cache_dir,
                            ecr_store=store, num_frames=args.num_frames, reasoner=reasoner_backend(args, state),
                            reference_ndcg=args.reference_ndcg, trust_remote_code=args.trust_remote_code,
                            num_workers=args.num_workers)
    if state.is_main_process:
        for spec in tasks:
            if spec.name in scores:
                print(f"{spec.name:45s} {spec.headline:14s} {100 * scores[spec.name][spec.headline]:6.2f}")
        print(f"summary: {Path(args.output_dir) / benchmark / 'summary.md'}")
    return scores


if __name__ == "__main__":
    main()

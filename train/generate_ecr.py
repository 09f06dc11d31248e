"""ECR generation: a reasoner writes embedding-centric reasoning for MMEB rows into an ECR store.

Two backends (in `train.reasoner_backends`): a local `transformers` model (`LocalBackend`: batched, left-padded
`generate`, greedy by default) and any OpenAI-compatible chat-completions server (`OpenAIBackend`: `vllm serve`,
SGLang, TGI, `transformers serve`), which is how a 72B teacher is run. Records are appended as batches finish, so a
killed job restarted with the same arguments skips what is done and finishes the rest; a finished job re-run does
no model work.

Teacher ECR over a dataset with a served model (one process; add `accelerate launch` to shard a local model):

    vllm serve Qwen/Qwen2.5-VL-72B-Instruct --tensor-parallel-size 8 --port 8000 &
    python -m train.generate_ecr --config train/recipes/teacher_ecr_72b.yaml --image_root /data/MMEB-train

A tiny offline run (a random tiny backbone, two CPU processes each writing its own part file):

    python -m train.tiny_backbone --output_dir /tmp/tiny
    accelerate launch --num_processes 2 --num_machines 1 --multi_gpu --mixed_precision no --dynamo_backend no \
        -m train.generate_ecr --config train/recipes/tiny_ecr.yaml --model_name_or_path /tmp/tiny --ecr_store /tmp/ecr \
        --datasets '{"name": "demo", "path": "demo.jsonl"}'

The exit status is 1 when any row failed (each is listed with its id and reason, and logged under
`<ecr_store>/failures/<part>.jsonl`), else 0.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from processing_tte import TTEProcessor, as_registry, parse_ecr
from train.ecr_store import ECRRecord, ECRStore, content_hash
from train.mmeb_data import MMEBPair, dataset_configs, load_mmeb_pairs
from train.processes import process_state
from train.reasoner_backends import (
    ECRRequest,
    LocalBackend,
    OpenAIBackend,
    ReasonerBackend,
    request_hash,
)

logger = logging.getLogger(__name__)


@dataclass
class GenerationReport:
    """Summary of a `run_generation` call. `failures` are `(key, reason)` pairs; `stale` counts rows whose stored
    record was written for another request (row content, task type, hint or reasoner) and were regenerated."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    stale: int = 0
    failures: list[tuple[tuple[str, str, str], str]] = field(default_factory=list)
    ecr_tokens: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def mean_ecr_tokens(self) -> float:
        return self.ecr_tokens / self.done if self.done else 0.0

    @property
    def rows_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        stale = f", {self.stale} stale, regenerated" if self.stale else ""
        lines = [f"{self.total} rows: {self.done} generated, {self.skipped} already in the store{stale}, "
                 f"{self.failed} failed; mean ECR length {self.mean_ecr_tokens:.1f} tokens; "
                 f"{self.rows_per_second:.2f} rows/s"]
        lines += [f"  FAILED {'/'.join(key)}: {reason}" for key, reason in self.failures]
        return "\n".join(lines)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _todo(requests: dict, hashes: dict, store: ECRStore) -> tuple[list[ECRRequest], int]:
    """The requests without a record of the same request hash, and how many of them have a stale record. Asks the
    store's index for the keys in chunks (`ECRStore.missing`): no stored record is read."""
    todo_keys = store.missing(requests, request_hashes=hashes)
    todo = [requests[key] for key in todo_keys]
    return todo, len(todo_keys) - len(store.missing(todo_keys))


def run_generation(requests, store: ECRStore, backend: ReasonerBackend, batch_size: int = 16,
                   show_progress: bool = True) -> GenerationReport:
    r"""
    Generate the ECR of every request without an up-to-date record in `store` and append it there, batch by batch.

    A stored record is up to date when its `request_hash` (row content, side, task type, hint, reasoner prompt and
    reasoner identity, see `train.reasoner_backends.request_hash`) equals the request's; other records of the key are
    stale and regenerated (counted in `GenerationReport.stale`). Records of unknown provenance (older versions) are
    kept, with a warning. Appends hold the store part's writer lock.

    Args:
        requests (iterable of `ECRRequest`): rows to reason about; repeated keys count once (the first wins).
        store (`ECRStore`): where records are read (to skip) and appended.
        backend (`LocalBackend` or `OpenAIBackend`): the reasoner.
        batch_size (`int`, *optional*, defaults to 16): rows per backend call (and per store append).
        show_progress (`bool`, *optional*, defaults to `True`): show a progress bar with rows/s.

    Returns:
        `GenerationReport`: rows done, skipped (up to date), stale (regenerated) and failed (with key and reason),
        mean ECR tokens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unique = {}
    for request in requests:
        if not isinstance(request, ECRRequest):
            raise ValueError(f"run_generation expects ECRRequest objects, got {type(request).__name__}")
        unique.setdefault(request.key, request)
    hashes = {key: request_hash(request, backend.identity, backend.prompts) for key, request in unique.items()}
    todo, stale = _todo(unique, hashes, store)
    if not todo:
        return GenerationReport(total=len(unique), skipped=len(unique))
    backend.check()
    with store.locked():
        if store.reloaded_on_lock:  # another writer of this part finished in between
            todo, stale = _todo(unique, hashes, store)
        report = GenerationReport(total=len(unique), skipped=len(unique) - len(todo), stale=stale)
        if stale:
            logger.warning(f"{stale} records in {store.path} are stale (written for other row content, task type, "
                           f"hint or reasoner than {backend.name!r} is asked for now): regenerating them")
        _generate_into(todo, hashes, store, backend, batch_size, show_progress, report)
    return report


def _generate_into(todo: list[ECRRequest], hashes: dict, store: ECRStore, backend: ReasonerBackend, batch_size: int,
                   show_progress: bool, report: GenerationReport) -> None:
    """Generate `todo` batch by batch, appending each batch's records to `store` and counting into `report`."""
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="row", desc=f"ECR ({backend.name})", disable=not show_progress) as bar:
        for batch in _chunks(todo, batch_size):
            outputs = backend.generate(batch)
            records = []
            for request, output in zip(batch, outputs, strict=True):
                if output.error is not None:
                    report.failures.append((request.key, output.error))
                    logger.warning(f"ECR generation failed for {request.where}: {output.error}")
                    continue
                records.append(ECRRecord(*request.key, ecr=output.text, answer=parse_ecr(output.text).answer,
                                         reasoner=backend.name, prompt_hash=output.prompt_hash,
                                         content_hash=content_hash(request.row),
                                         request_hash=hashes[request.key], prompt_set=backend.prompts.name))
                report.ecr_tokens += output.num_tokens
            report.done += store.add(records)
            bar.update(len(batch))
            bar.set_postfix(failed=report.failed)
    report.seconds = time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- local backend
@dataclass
class GenerateECRArguments:
    r"""
    Arguments of `python -m train.generate_ecr` (YAML via `--config`, any field overridable on the command line).

    Args:
        ecr_store (`str`): the ECR store folder; each process appends to its own part file `<part><i>.jsonl`.
        part (`str`, defaults to `"rank"`): the part file prefix; two jobs writing one store at the same time need
            different prefixes (a part being written by another process is refused up front).
        datasets (`list`): MMEB-format datasets, each a mapping with the fields of `MMEBDatasetConfig` (`name`,
            `path`, `subset`, `task_type`, ...); on the command line, JSON objects or recipe files
            (`train.data.read_datasets`).
        image_root (`str`, *optional*): folder the image paths are relative to.
        sides (`list[str]`, defaults to query and target): which sides to reason about.
        teacher_hint (`bool`, defaults to `False`): pass the positive target's text as a hint on the query side
            (teacher ECR for training data only; never for evaluation data).
        backend (`str`, defaults to `"local"`): `"local"` (transformers) or `"openai"` (a served model).
        model_name_or_path (`str`): checkpoint (local) or served model name (openai). processor (`str`,
            *optional*): where the processor comes from (defaults to `model_name_or_path`). reasoner_name (`str`,
            *optional*): name in the records.
        base_url, api_key_env, max_concurrency, max_retries, backoff, request_timeout: the OpenAI backend's server.
        batch_size, max_new_tokens, do_sample, temperature, top_p, top_k, seed, dtype: generation settings.
        prompts (`str`, *optional*): a reasoner prompt registry file read over the shipped one
            (`prompts_tte.PromptRegistry`); each row is asked its dataset's prompt.
        dry_run (`int`, defaults to 0): print the reasoner messages of the first `dry_run` rows of each dataset and
            side, and stop (no model, no store writes).
        num_workers (`int`, defaults to 0): `DataLoader` worker processes building and processing the prompts of the
            local backend (`LocalBackend(num_workers=...)`); 0 does it in the main process.
    """

    model_name_or_path: str = field(metadata={"help": "checkpoint (local backend) or served model name (openai)"})
    ecr_store: str = field(metadata={"help": "ECR store folder the traces are written to"})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "MMEB-format datasets: JSON objects or recipe files (mappings in YAML; MMEBDatasetConfig)"})
    image_root: str | None = field(default=None, metadata={"help": "image paths are relative to this folder"})
    sides: list[str] = field(default_factory=lambda: ["query", "target"], metadata={"help": "query and/or target"})
    teacher_hint: bool = field(default=False, metadata={"help": "give the ground-truth target as a hint (teacher)"})
    backend: str = field(default="local", metadata={"help": "local | openai"})
    processor: str | None = field(default=None, metadata={"help": "processor checkpoint (defaults to model)"})
    reasoner_name: str | None = field(default=None, metadata={"help": "reasoner name stored in the records"})
    part: str = field(default="rank", metadata={"help": "part file prefix: process i writes <store>/<part><i>.jsonl"})
    base_url: str = field(default="http://localhost:8000/v1", metadata={"help": "OpenAI-compatible API base"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "env variable holding the API key"})
    max_concurrency: int = field(default=8, metadata={"help": "requests in flight (openai backend)"})
    max_retries: int = field(default=5, metadata={"help": "retries of transient server errors"})
    backoff: float = field(default=1.0, metadata={"help": "first retry delay in seconds (doubles each retry)"})
    request_timeout: float = field(default=600.0, metadata={"help": "seconds per request (openai backend)"})
    batch_size: int = field(default=16, metadata={"help": "rows per generate call / store append"})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes that build and process prompts (local backend); 0: main process"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest ECR in tokens"})
    force_answer_tokens: int = field(default=0, metadata={
        "help": "local backend: a trace cut at max_new_tokens gets '</think> Answer:' and this many more tokens"})
    do_sample: bool = field(default=False, metadata={"help": "sample instead of greedy decoding"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (with do_sample)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (with do_sample)"})
    top_k: int | None = field(default=None, metadata={"help": "top-k sampling (local backend, with do_sample)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    dtype: str = field(default="auto", metadata={"help": "model dtype (local backend)"})
    show_progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    prompts: str | None = field(default=None, metadata={"help": "reasoner prompt registry YAML (default: shipped)"})
    dry_run: int = field(default=0, metadata={
        "help": "print the reasoner messages of this many rows per dataset and side, then stop (no model)"})

    def __post_init__(self):
        for name in ("batch_size", "max_new_tokens", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("max_retries", "num_workers", "dry_run"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        self.datasets = dataset_configs(self.datasets)
        if not self.datasets:
            raise ValueError("generate_ecr needs at least one entry in `datasets`")
        if self.backend not in ("local", "openai"):
            raise ValueError(f"backend must be 'local' or 'openai', got {self.backend!r}")
        if set(self.sides) - {"query", "target"} or not self.sides:
            raise ValueError(f"sides must be a non-empty subset of ['query', 'target'], got {self.sides}")


def build_requests(pairs: list[MMEBPair], task_type: str, sides=("query", "target"),
                   teacher_hint: bool = False) -> list[ECRRequest]:
    """One `ECRRequest` per pair and side; with `teacher_hint` the query side gets the target text as its hint."""
    requests = []
    for pair in pairs:
        for side in sides:
            hint = (pair.target.get("text") or None) if teacher_hint and side == "query" else None
            requests.append(ECRRequest(pair.dataset, pair.row_id, side, getattr(pair, side), task_type, hint))
    return requests


def make_backend(args: GenerateECRArguments, device: str | None = None) -> ReasonerBackend:
    """The backend the arguments describe (the model is loaded lazily, on the first row that needs it)."""
    import os

    processor = args.processor or args.model_name_or_path
    if args.backend == "openai":
        return OpenAIBackend(args.base_url, args.model_name_or_path, processor,
                             api_key=os.environ.get(args.api_key_env, "EMPTY"),
                             name=args.reasoner_name, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature if args.do_sample else 0.0,
                             top_p=args.top_p if args.do_sample else None,
                             seed=args.seed if args.do_sample else None, max_concurrency=args.max_concurrency,
                             max_retries=args.max_retries, backoff=args.backoff, timeout=args.request_timeout,
                             prompts=args.prompts)
    local_processor = TTEProcessor.from_backbone(args.processor) if args.processor else None
    return LocalBackend(args.model_name_or_path, local_processor, name=args.reasoner_name,
                        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                        top_p=args.top_p, top_k=args.top_k,
                        seed=args.seed, device=device, dtype=args.dtype, batch_size=args.batch_size,
                        num_workers=args.num_workers, prompts=args.prompts,
                        force_answer_tokens=args.force_answer_tokens)


def write_failures(store: ECRStore, failures: list[tuple[tuple[str, str, str], str]]) -> Path:
    """Write this part's failures of the last run to `<ecr_store>/failures/<part>.jsonl` (replacing older ones)."""
    path = store.path / "failures" / store.part_path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"dataset": k[0], "row_id": k[1], "side": k[2], "reason": r}) + "\n" for k, r in failures]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def print_dry_run(requests: list[ECRRequest], processor: TTEProcessor, prompts, rows: int) -> int:
    """Print the messages the reasoner would get for the first `rows` requests of each dataset and side."""
    shown = {}
    for request in requests:
        count = shown.get((request.dataset, request.side), 0)
        if count >= rows:
            continue
        shown[(request.dataset, request.side)] = count + 1
        messages, media = processor.reasoner_messages(request.row, request.task_type, request.side, request.hint,
                                                      where=request.where, dataset=request.dataset, prompts=prompts)
        family = prompts.family(request.dataset) or f"task type {request.task_type}"
        print(f"=== {request.where} ({prompts.name}, {family}{', with hint' if request.hint else ''})")
        names = iter(media["names"]["images"] + media["names"]["videos"])
        for part in messages[0]["content"]:
            print(part["text"] if part["type"] == "text" else f"<{part['type']}: {next(names)}>")
    return sum(shown.values())


def main(argv: list[str] | None = None) -> int:
    """Run ECR generation from a recipe; returns the exit status (1 if any row failed)."""
    from train.cli import parse

    (args,) = parse((GenerateECRArguments,), "train.generate_ecr", __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        requests = [request for dataset in args.datasets for request in build_requests(
            load_mmeb_pairs(dataset, image_root=args.image_root)[:args.dry_run], dataset.task_type, args.sides,
            args.teacher_hint)]
        processor = TTEProcessor.from_backbone(args.processor or args.model_name_or_path)
        print_dry_run(requests, processor, as_registry(args.prompts), args.dry_run)
        return 0
    state = process_state()
    store = ECRStore(args.ecr_store, part=f"{args.part}{state.process_index}")
    store.lock()  # up front: an unwritable folder or a part another job writes fails before any model work
    try:
        (store.path / "failures").mkdir(exist_ok=True)
        requests = []
        for dataset in args.datasets:
            pairs = load_mmeb_pairs(dataset, image_root=args.image_root)
            requests += build_requests(pairs, dataset.task_type, args.sides, args.teacher_hint)
        shard = requests[state.process_index::state.num_processes]
        backend = make_backend(args, device=str(state.device) if args.backend == "local" else None)
        report = run_generation(shard, store, backend, batch_size=args.batch_size,
                                show_progress=args.show_progress and state.is_local_main_process)
        write_failures(store, report.failures)
    finally:
        store.unlock()
    print(f"ECR generation, process {state.process_index + 1}/{state.num_processes} "
          f"({backend.name} -> {args.ecr_store}): {report.summary()}", flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ECRRequest", "GenerationReport", "LocalBackend", "OpenAIBackend", "ReasonerBackend", "main",
           "run_generation"]

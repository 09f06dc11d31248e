"""Scale benchmark of the ECR store: today's dict reader against the indexed store, side by side, in one run.

    python -m eval.bench_scale                        # 1,000,000 traces of ~1.9 KB in 8 parts (~2.2 GB, temp dir)
    python -m eval.bench_scale --records 4000000      # the paper's ~4M traces (~8.7 GB of disk; the dict reader,
                                                      # ~10 GiB per process, is left out above --dict_max_records)
    python -m eval.bench_scale --records 20000 --skip_encoder --json /tmp/scale.json

A store of `--records` synthetic traces (keys of 20 datasets, both sides, provenance hashes, interleaved over
`--parts` part files as ranks write them) is written to a temp folder, removed at the end. Each reader runs in its
own fresh process (peak RSS is that process's `VmHWM`, which covers everything it ever held):
1. the dict store (`DictECRStore`: every record parsed into a Python dict, as the store read before its index):
   open time (every open is a full read: its second open is its first), peak RSS, random lookups/s (`get`), then
   the time to find what a 10%-unfinished `generate_ecr` job still has to do (its skip test before the index: one
   `get(..., request_hash=)` per row);
2. the indexed store (`train.ecr_store.ECRStore`): the first open (which builds `<store>/.index.sqlite`), then a
   second open in a fresh process: open time, peak RSS, lookups/s, and `train.generate_ecr._todo` on the same job;
3. for each, two readers at once on the same store (both open, look up, and hold everything until the other is
   done): the second one's open time and peak RSS.
Lookups read each trace from its part file (`pread`): on a machine whose page cache cannot hold the parts, some of
them wait for the disk (the dict store holds everything in its own memory instead).
Ratios are baseline / indexed (times, memory) and indexed / baseline (lookups/s). The encoder half of the scale
benchmark (`eval.bench_encoder.run`, rows/s with 0-2 DataLoader workers) is run after it when that module exists
(`--skip_encoder` leaves it out). The table goes to stdout, all numbers to `--json`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import random
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from train.ecr_store import SIDES, _newest, _parse_record

REPO = Path(__file__).resolve().parent.parent
DATASETS = [f"mmeb-train-{d:02d}" for d in range(20)]
TARGETS = {"reader peak RSS (MiB)": ("<=", 300.0), "open, second (s)": ("<=", 2.0),
           "random lookups/s": (">=", 50_000.0)}
WORDS = ("the image shows a red circle left of a blue square so the query asks for the colour of the card above it "
         "and the answer names three shapes in the frame while the caption mentions a dog on grass").split()


# ------------------------------------------------------------------------------------------------ the baseline
class DictECRStore:
    """The store's reader before its index, kept as the baseline: every record of every part (names in order) parsed
    into a dict of lists in this process; `get` picks the newest matching record as the store does."""

    def __init__(self, path):
        self.records: dict[tuple[str, str, str], list] = {}
        for part in sorted(Path(path).glob("*.jsonl")):
            with open(part, "rb") as handle:
                for line in handle:
                    try:
                        record = _parse_record(line)
                    except ValueError:
                        continue
                    self.records.setdefault(record.key, []).append(record)

    def get(self, dataset: str, row_id, side: str, *, request_hash: str | None = None):
        records = self.records.get((dataset, str(row_id), side))
        if records and request_hash is not None:
            records = ([r for r in records if r.request_hash == request_hash]
                       or [r for r in records if r.request_hash is None])
        return _newest(records) if records else None

    def __contains__(self, key) -> bool:
        return tuple(key) in self.records


def dict_todo(requests: dict, hashes: dict, store: DictECRStore) -> tuple[list, int]:
    """`generate_ecr`'s skip test before the index: one `get` per row, then one membership test per row to do."""
    todo = [request for key, request in requests.items() if store.get(*key, request_hash=hashes[key]) is None]
    return todo, sum(key in store for key in todo)


# ------------------------------------------------------------------------------------------------ synthetic data
def key_of(i: int) -> tuple[str, str, str]:
    """The key of synthetic trace `i` (unique per `i`): 20 datasets, both sides of each row."""
    return DATASETS[i % 20], str(i // 40), SIDES[(i // 20) % 2]


def request_of(i: int) -> str:
    return hashlib.blake2b(f"request {i}".encode(), digest_size=8).hexdigest()


def _ecr_pool(ecr_bytes: int, seed: int, size: int = 64) -> list[str]:
    """JSON-escaped bodies (without quotes) of ~`ecr_bytes`-long reasoning traces."""
    rng, pool = random.Random(seed), []
    for _ in range(size):
        words = []
        while sum(len(w) + 1 for w in words) < ecr_bytes - 60:
            words.append(rng.choice(WORDS))
        text = f"{' '.join(words)} </think>\nAnswer: {rng.choice(WORDS)}"
        pool.append(json.dumps(text)[1:-1])
    return pool


def write_store(folder: Path, records: int, parts: int, ecr_bytes: int, seed: int) -> int:
    """Write `records` synthetic traces as ranks do (record `i` in part `i % parts`); returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    pool, created = _ecr_pool(ecr_bytes, seed), 1.7e9
    handles = [open(folder / f"rank{p}.jsonl", "w", encoding="utf-8", buffering=4 * 2**20) for p in range(parts)]
    try:
        for i in range(records):
            dataset, row_id, side = key_of(i)
            content = hashlib.blake2b(f"content {i}".encode(), digest_size=8).hexdigest()
            handles[i % parts].write(
                f'{{"dataset": "{dataset}", "row_id": "{row_id}", "side": "{side}", "ecr": "<think> trace {i}: '
                f'{pool[i % len(pool)]}", "answer": "a", "reasoner": "teacher-72b", "prompt_hash": "{content}", '
                f'"content_hash": "{content}", "request_hash": "{request_of(i)}", "created": {created + i / 1e3}}}\n')
    finally:
        for handle in handles:
            handle.close()
    return sum(p.stat().st_size for p in folder.glob("*.jsonl"))


# ------------------------------------------------------------------------------------------------ reader process
def _vm_mib(field: str) -> float:
    try:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rendezvous(sync: str | None, name: str, timeout: float = 1800.0) -> None:
    """Mark `name` done and wait until every process of the pair has (`<sync>.<name>.<pid>` files)."""
    if not sync:
        return
    Path(f"{sync}.{name}.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(Path(sync).parent.glob(f"{Path(sync).name}.{name}.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)


def _lookups(store, records: int, count: int, seed: int) -> float:
    """Random keys looked up with `get`; returns lookups/s (every key must be found, with its own trace)."""
    rng = random.Random(seed)
    picks = [rng.randrange(records) for _ in range(count)]
    lost = 0
    start = time.perf_counter()
    for i in picks:  # nothing is kept: the reader's memory is the store's
        lost += store.get(*key_of(i)) is None
    seconds = time.perf_counter() - start
    for i in picks[:100]:
        record = store.get(*key_of(i))
        if record is None or not record.ecr.startswith(f"<think> trace {i}:"):
            raise RuntimeError(f"lookup of trace {i} returned {record!r}")
    if lost:
        raise RuntimeError(f"{lost} stored keys were not found")
    return count / seconds


def _missing_job(store, kind: str, records: int) -> dict:
    """Time the skip test of a job of `records` rows of which 10% are not in the store yet."""
    indices = [i for i in range(records) if i % 10]
    indices += list(range(records, 2 * records - len(indices)))  # the 10% not reasoned about yet
    keys = [key_of(i) for i in indices]
    hashes = {key: request_of(i) for key, i in zip(keys, indices, strict=True)}
    requests = {key: key for key in keys}
    if kind == "dict":
        todo_fn = dict_todo
    else:
        from train.generate_ecr import _todo as todo_fn  # the real skip test of generate_ecr
    start = time.perf_counter()
    todo, stale = todo_fn(requests, hashes, store)
    seconds = time.perf_counter() - start
    expected = sum(i >= records for i in indices)
    if len(todo) != expected or stale:
        raise RuntimeError(f"{kind}: found {len(todo)} rows to do ({stale} stale), expected {expected}")
    return {"job_rows": len(keys), "todo": len(todo), "missing_s": seconds}


@dataclass
class ReaderArguments:
    """Options of one reader process (`run_readers` starts them)."""

    kind: str = field(metadata={"choices": ["dict", "index"], "help": "the dict store or the indexed store"})
    ecr_store: str = field(metadata={"help": "the store to read"})
    records: int = field(metadata={"help": "traces in the store"})
    lookups: int = field(default=0, metadata={"help": "random lookups"})
    seed: int = field(default=0, metadata={"help": "seed of the lookups"})
    missing: bool = field(default=False, metadata={"help": "also time the missing rows of an unfinished job"})
    sync: str | None = field(default=None, metadata={"help": "rendezvous path prefix of a pair of readers"})


def reader_main(argv=None) -> None:
    """One reader process: open the store, look keys up, report JSON on stdout (see `run_reader`)."""
    from train.cli import parse
    from train.ecr_store import ECRStore

    (args,) = parse((ReaderArguments,), "eval.bench_scale (reader)", None, argv)

    report = {"rss_before_mib": _vm_mib("VmRSS")}
    start = time.perf_counter()
    store = DictECRStore(args.ecr_store) if args.kind == "dict" else ECRStore(args.ecr_store)
    report["open_s"] = time.perf_counter() - start
    _rendezvous(args.sync, "open")
    if args.lookups:
        report["lookups_per_s"] = _lookups(store, args.records, args.lookups, args.seed)
    report["peak_mib"] = _vm_mib("VmHWM")
    _rendezvous(args.sync, "done")  # both hold all they have read until the other is done too
    if args.missing:
        report.update(_missing_job(store, args.kind, args.records))
    print(json.dumps(report), flush=True)


def run_readers(kind: str, store: Path, args, count: int = 1, lookups: int = 0, missing: bool = False) -> list[dict]:
    """Start `count` reader processes at once (a pair meets after opening and before exiting); their reports."""
    sync = str(store.parent / f"sync-{kind}-{time.monotonic_ns()}") if count > 1 else None
    command = [sys.executable, "-c", "from eval.bench_scale import reader_main; reader_main()", "--kind", kind,
               "--ecr_store", str(store),
               "--records", str(args.records), "--lookups", str(lookups), "--seed", str(args.seed)]
    command += (["--missing"] if missing else []) + (["--sync", sync] if sync else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} reader failed ({proc.returncode}):\n{err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for leftover in store.parent.glob(f"{Path(sync).name}.*") if sync else []:
        leftover.unlink()
    return reports


# ------------------------------------------------------------------------------------------------ the two halves
def bench_store(args, folder: Path) -> dict:
    """Write the store, then run the dict readers (unless too large) and the indexed readers."""
    store = folder / "store"
    start = time.perf_counter()
    part_bytes = write_store(store, args.records, args.parts, args.ecr_bytes, args.seed)
    results = {"records": args.records, "parts": args.parts, "part_mib": part_bytes / 2**20,
               "write_s": time.perf_counter() - start}
    lookups = min(args.lookups, args.records)
    if args.records <= args.dict_max_records:
        single = run_readers("dict", store, args, lookups=lookups, missing=True)[0]
        pair = run_readers("dict", store, args, count=2, lookups=lookups)
        results["dict"] = {**single, "first_open_s": single["open_s"], "indexing_peak_mib": single["peak_mib"],
                           "second_open_s": single["open_s"], "concurrent_open_s": pair[1]["open_s"],
                           "concurrent_peak_mib": pair[1]["peak_mib"]}
    first = run_readers("index", store, args)[0]
    index_mib = sum(p.stat().st_size for p in store.glob(".index.sqlite*")) / 2**20
    single = run_readers("index", store, args, lookups=lookups, missing=True)[0]
    pair = run_readers("index", store, args, count=2, lookups=lookups)
    results["index"] = {**single, "first_open_s": first["open_s"], "second_open_s": single["open_s"],
                        "indexing_peak_mib": first["peak_mib"], "concurrent_open_s": pair[1]["open_s"],
                        "concurrent_peak_mib": pair[1]["peak_mib"],
                        "index_mib": index_mib}
    return results  # (the dict store has no index: its "first open" is a full read like every other)


def encoder_rows(args) -> list[dict] | None:
    """The encoder half of the scale benchmark (`eval.bench_encoder.run(args) -> list[dict]`, table rows), or `None`
    when that module is not there. Its own arguments come from `--encoder_args` when it has a `parse_args`."""
    try:
        module = importlib.import_module("eval.bench_encoder")
    except ModuleNotFoundError as error:
        if error.name != "eval.bench_encoder":
            raise
        return None
    encoder_args = module.parse_args(shlex.split(args.encoder_args)) if hasattr(module, "parse_args") else args
    return module.run(encoder_args)


# ------------------------------------------------------------------------------------------------ the table
def _row(name: str, baseline: float | None, fast: float, higher_is_better: bool, fmt: str) -> str:
    if baseline is None:
        shown, ratio = "not run", "-"
    else:
        shown = format(baseline, fmt)
        ratio = f"**{(fast / baseline if higher_is_better else baseline / fast):.1f}x**" if fast else "-"
    target = TARGETS.get(name)
    met = ""
    if target:
        op, bound = target
        met = f"{op} {bound:g} {'yes' if (fast <= bound if op == '<=' else fast >= bound) else 'NO'}"
    return f"| {name} | {shown} | {format(fast, fmt)} | {ratio} | {met} |"


def table(results: dict) -> str:
    """The store half as a markdown table: dict store (today's reader) / indexed store, ratio, target."""
    d, x = results.get("dict"), results["index"]

    def base(name):
        return d[name] if d else None

    lines = [f"| {results['records']:,} traces ({results['part_mib']:,.0f} MiB in {results['parts']} parts) | "
             "dict store (baseline) | indexed store | ratio | target |", "|---|---|---|---|---|",
             _row("open, first (s)", base("first_open_s"), x["first_open_s"], False, ".2f"),
             _row("open, second (s)", base("second_open_s"), x["second_open_s"], False, ".3f"),
             _row("reader peak RSS (MiB)", base("peak_mib"), x["peak_mib"], False, ".0f"),
             _row("first-open peak RSS (MiB)", base("indexing_peak_mib"), x["indexing_peak_mib"], False, ".0f"),
             _row("random lookups/s", base("lookups_per_s"), x["lookups_per_s"], True, ",.0f"),
             _row("open, two readers at once (s, the second)", base("concurrent_open_s"), x["concurrent_open_s"],
                  False, ".3f"),
             _row("second concurrent reader peak RSS (MiB)", base("concurrent_peak_mib"), x["concurrent_peak_mib"],
                  False, ".0f"),
             _row(f"missing rows of a 10%-unfinished job of {x['job_rows']:,} rows (s)", base("missing_s"),
                  x["missing_s"], False, ".2f"),
             f"| index file (MiB) | - | {x['index_mib']:,.0f} | - | |"]
    return "\n".join(lines)


def encoder_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(name for row in rows for name in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(name, "")) for name in columns) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class BenchScaleArguments:
    """Options of `python -m eval.bench_scale`."""

    records: int = field(default=1_000_000, metadata={"help": "synthetic traces (the paper: ~4,000,000)"})
    parts: int = field(default=8, metadata={"help": "part files (writers) the traces are spread over"})
    ecr_bytes: int = field(default=1900, metadata={"help": "length of each trace's ECR text"})
    lookups: int = field(default=200_000, metadata={"help": "random lookups per reader"})
    dict_max_records: int = field(default=1_500_000, metadata={
        "help": "run the dict baseline only up to this size (it needs ~2.4 GiB per 1M traces, twice)"})
    dir: str | None = field(default=None, metadata={"help": "where the temp store goes (default: system temp)"})
    skip_encoder: bool = field(default=False, metadata={"help": "leave out the encoder half"})
    encoder_args: str = field(default="", metadata={"help": "options of eval.bench_encoder (one string)"})
    seed: int = field(default=0, metadata={"help": "seed of the traces and lookups"})
    json: str = field(default="bench_scale.json", metadata={"help": "where to write all numbers"})


def parse_args(argv=None) -> BenchScaleArguments:
    from train.cli import parse

    return parse((BenchScaleArguments,), "eval.bench_scale", __doc__, argv)[0]


def main(argv=None) -> dict:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: still remove the temp store (GBs)
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="tte-bench-scale-", dir=args.dir) as scratch:
        results = {"settings": asdict(args), "machine": machine, "store": bench_store(args, Path(scratch))}
    print(f"ECR store at scale: {args.records:,} traces of ~{args.ecr_bytes} B ECR in {args.parts} parts, "
          f"{os.cpu_count()} cores; each reader a fresh process; peak RSS = VmHWM")
    print(table(results["store"]))
    if not args.skip_encoder:
        rows = encoder_rows(args)
        if rows is None:
            print("encoder half not available (eval/bench_encoder.py is not there): store half only")
        else:
            results["encoder"] = rows
            print(encoder_table(rows))
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()

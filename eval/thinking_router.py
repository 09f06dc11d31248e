"""The think router's cost/quality rows and the per-query latency of the thinking variants (`eval.bench_thinking`).

Quality: the router (`train.train_router`, in a unified model) reads each test query's reasoner prompt, and the
MMEB harness scores the model with the student's ECR for the queries it thinks about and an empty ECR for the rest
(candidates keep theirs: they are embedded offline). Latency: seconds per query of no-ECR embedding, TTE_s
(student generation, then the embedder) and TTE_u single pass (`generate_and_embed` with `think=True`, `"auto"`
and `False`), on the same queries in one process.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from statistics import mean

import torch

from eval.mmeb import load_task
from eval.tasks import all_tasks
from train.ecr_store import ECRStore


def build_router(run: Path, out: Path, seed: int, ecr_dropout: float = 0.5, head_steps: int | None = None,
                 max_new_tokens: int | None = None, head: str = "self_init") -> Path:
    """A routed TTE_u model for a demo seed folder (each step skipped when its output exists): a unified `head` on
    the run's student trained with `--ecr_dropout` (so it embeds with and without ECR; `head_steps` and the ECR
    length `max_new_tokens` default to the demo's), the student's own ECR of the
    training rows (`train.generate_ecr`), and the router fitted on them (`train.train_router`). The student is the
    unified model's backbone, asked with the prompts saved with it, so these are the model's own traces."""
    import json

    from eval.demo import DemoSettings, train_embedder, training_datasets
    from train.generate_ecr import main as generate_ecr
    from train.train_router import main as train_router

    s, data = DemoSettings(), run / "data"
    s = dataclasses.replace(s, head_steps=head_steps or s.head_steps, max_new_tokens=max_new_tokens or s.max_new_tokens)
    name = f"unified-{head}-dropout{ecr_dropout:g}"
    model = train_embedder(run / "student", data, out / name, s, seed, "full", "unified", head, -1, "--ecr_dropout",
                           str(ecr_dropout))
    datasets = [json.dumps(d) for d in training_datasets(data)]
    store, routed = out / "ecr-train-student", out / f"{name}-routed"
    generate_ecr(["--model_name_or_path", str(run / "student"), "--ecr_store", str(store), "--datasets", *datasets,
                  "--image_root", str(data / "train"), "--max_new_tokens", str(s.max_new_tokens), "--dtype", "float32",
                  "--batch_size", "64", "--show_progress", "false"])  # resumes: a finished store is only read
    if not (routed / "config.json").is_file():
        train_router(["--model_name_or_path", str(model), "--ecr_store", str(store), "--datasets", *datasets,
                      "--image_root", str(data / "train"), "--output_dir", str(routed), "--batch_size", "64",
                      "--seed", str(seed)])
    return routed


def synthetic_test_tasks(data: Path):
    """`(task spec, loaded task)` of every synthetic test task."""
    from eval.demo import synthetic_source

    return [(spec, load_task(spec, synthetic_source(data))) for spec in all_tasks("synthetic").values()]


def batches(items: list, size: int):
    return (items[start:start + size] for start in range(0, len(items), size))


@torch.no_grad()
def query_probabilities(model, processor, data: Path, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Per test task, the router's think probability of each query (row id -> probability), from its prompt."""
    result = {}
    for spec, task in synthetic_test_tasks(data):
        result[spec.name] = {}
        for chunk in batches(task.queries, batch_size):
            inputs = processor.process_reasoner_inputs([q.row for q in chunk], spec.task_type, "query",
                                                       dataset=spec.name)
            probability = model.think_probability(**inputs).tolist()
            result[spec.name].update(zip([q.row_id for q in chunk], probability, strict=True))
    return result


def routed_store(source: Path, skipped: set[tuple[str, str]], out: Path) -> Path:
    """A fresh copy of the ECR store `source` in which every query `(dataset, row_id)` in `skipped` has an empty ECR
    (it is embedded without thinking); targets keep theirs."""
    shutil.rmtree(out, ignore_errors=True)
    ECRStore(out).add(dataclasses.replace(r, ecr="", answer=None)
                      if r.side == "query" and (r.dataset, r.row_id) in skipped else r for r in ECRStore(source))
    return out


def router_rows(model_path: Path, run: Path, out: Path, thresholds: list[float]) -> list[dict]:
    """Hit@1 per task, think fraction and ECR tokens per query of the routed unified model at each threshold, plus
    its always- and never-thinking ends."""
    from eval.bench_thinking import mean_ecr_tokens
    from eval.demo import evaluate
    from eval.harness import load_model

    model, processor = load_model(model_path)
    probabilities = query_probabilities(model, processor, run / "data")
    settings = [("always", 0.0), *(("router", t) for t in sorted(thresholds)), ("never", float("inf"))]
    rows = []
    for name, threshold in settings:
        slug = f"{name}-{threshold:g}" if name == "router" else name
        skipped = {(task, row) for task, rows in probabilities.items() for row, p in rows.items() if p < threshold}
        store = routed_store(run / "ecr-student", skipped, out / f"ecr-routed-{slug}")
        scores = evaluate(model_path, run / "data", out / "eval" / f"routed-{slug}", store, "full")
        thinks = [p >= threshold for task in probabilities.values() for p in task.values()]
        rows.append({"variant": f"TTE_u {name}", "threshold": None if name != "router" else threshold,
                     "think_fraction": mean(thinks),
                     "query_tokens": mean_ecr_tokens(store, processor.tokenizer, "query"),
                     "scores": scores, "overall": mean(scores.values())})
    return rows


def _timed(function, spec, rows: list, batch_size: int) -> tuple[float, float]:
    """Seconds per row and generated tokens per row of `function(spec, batch) -> tokens generated` over `rows`."""
    function(spec, rows[:batch_size])  # warm-up
    start, tokens = time.perf_counter(), 0
    for chunk in batches(rows, batch_size):
        tokens += function(spec, chunk)
    return (time.perf_counter() - start) / len(rows), tokens / len(rows)


@torch.no_grad()
def latency_rows(run: Path, router_model: Path, thresholds: list[float], max_new_tokens: int, per_task: int = 16,
                 batch_size: int = 16) -> list[dict]:
    """Seconds and generated tokens per query of each variant (TTE_u single pass: always, routed at each of
    `thresholds`, never), on the first `per_task` queries of every test task (batches of one task, `batch_size`
    rows), one after the other in this process."""
    from eval.harness import load_model
    from train.generate_ecr import LocalBackend
    from train.reasoner_backends import ECRRequest

    tasks = [(spec, [q.row for q in task.queries[:per_task]]) for spec, task in synthetic_test_tasks(run / "data")]
    embedder = {"embed-none": load_model(run / "embed-none", "none"), "embed-full": load_model(run / "embed-full")}
    unified, unified_processor = load_model(router_model)
    backend = LocalBackend(str(run / "student"), max_new_tokens=max_new_tokens, device="cpu", dtype="float32")
    backend.check()

    def no_ecr(spec, rows):
        model, processor = embedder["embed-none"]
        model(**processor.process_queries(rows))
        return 0

    def two_model(spec, rows):
        requests = [ECRRequest(spec.name, str(i), "query", row, spec.task_type) for i, row in enumerate(rows)]
        outputs = backend.generate(requests)
        model, processor = embedder["embed-full"]
        model(**processor.process_queries([{**row, "ecr": o.text} for row, o in zip(rows, outputs, strict=True)]))
        return sum(o.num_tokens for o in outputs)

    def single_pass(think, threshold=None):
        def run_batch(spec, rows):
            inputs = unified_processor.process_reasoner_inputs(rows, spec.task_type, "query", dataset=spec.name)
            output = unified.generate_and_embed(**inputs, max_new_tokens=max_new_tokens, think=think,
                                                router_threshold=threshold)
            return int(output.attention_mask[:, inputs["input_ids"].shape[1]:].sum() - len(rows))  # minus eos
        return run_batch

    variants = [("no ECR (embedder)", no_ecr), ("TTE_s two-model", two_model), ("TTE_u always", single_pass(True)),
                *((f"TTE_u router @ {t:g}", single_pass("auto", t)) for t in sorted(thresholds)),
                ("TTE_u never", single_pass(False))]
    rows = []
    for name, function in variants:
        timings = [_timed(function, spec, task_rows, batch_size) for spec, task_rows in tasks]
        weights = [len(task_rows) for _, task_rows in tasks]
        total = sum(weights)
        rows.append({"variant": name,
                     "seconds_per_query": sum(s * w for (s, _), w in zip(timings, weights, strict=True)) / total,
                     "tokens_per_query": sum(t * w for (_, t), w in zip(timings, weights, strict=True)) / total})
    return rows

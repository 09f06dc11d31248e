"""What each token of thinking buys: Hit@1 of a demo run's TTE_s pair against the student's thinking budget, and of
a routed TTE_u model against its router's threshold, with the latency per query of every variant.

    python -m eval.bench_thinking --run_dir runs/demo/seed0 --seed 0 --output_dir runs/thinking

For every budget (`--budgets`, in generated tokens; 0 is no thinking) the run's student writes the ECR of every test
query and candidate with at most that many tokens, either cut at the budget (`cut`) or closed with a forced answer
(`forced`: `</think> Answer:` and at most `--force_answer_tokens` more, `LocalBackend(force_answer_tokens=...)`), and
the run's TTE_t/TTE_s embedder (`embed-full`) is evaluated with it by the MMEB harness. Budget 0 evaluates the same
embedder with no ECR, beside the run's dedicated no-ECR embedder. Reports Hit@1 per task and overall, the mean
tokens per trace and the generation seconds per row, as JSON (`thinking.json`), markdown and a PNG curve.

With `--router` (the default), `eval.thinking_router.build_router` trains a TTE_u head on the run's student with
`--ecr_dropout`, logs its outcomes on the training rows and fits its think router (`train.train_router`); the
report adds its Hit@1, think fraction and ECR tokens per query at each of `--thresholds` (with its always- and
never-thinking ends), and the seconds per query of no-ECR embedding, TTE_s (student generation, then the embedder)
and TTE_u single pass (`generate_and_embed`, always, routed at each threshold, never) on the first
`--latency_queries` queries of each task, measured one after the other in this process (`router.png`: Hit@1
against tokens and against seconds per query).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import mean

from eval.demo_report import plot_axes


@dataclass
class BenchThinkingArguments:
    """Options of `python -m eval.bench_thinking`."""

    run_dir: str = field(metadata={"help": "a demo seed folder (student/, embed-full/, embed-none/, data/)"})
    output_dir: str = field(default="runs/thinking", metadata={"help": "where the stores and the report go"})
    budgets: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64, 96], metadata={
        "help": "thinking budgets in generated tokens (0: no ECR; the demo's full budget is 96)"})
    force_answer_tokens: int = field(default=24, metadata={"help": "tokens the forced answer may take"})
    seed: int = field(default=0, metadata={"help": "the run's seed (training seed of the router stages)"})
    router: bool = field(default=True, metadata={"help": "also the routed TTE_u rows and the latency table"})
    thresholds: list[float] = field(default_factory=lambda: [0.5, 0.55, 0.6, 0.65, 0.7], metadata={
        "help": "router thresholds (think when its probability is at least this)"})
    ecr_dropout: float = field(default=0.5, metadata={"help": "ecr_dropout of the routed TTE_u head"})
    head_steps: int = field(default=500, metadata={"help": "training steps of the routed TTE_u head (the demo's)"})
    latency_queries: int = field(default=16, metadata={"help": "queries per task timed for the latency table"})


def mean_ecr_tokens(store_path: Path, tokenizer, side: str | None = None) -> float:
    """Mean ECR tokens per record of the store (of `side` only, when given); an empty ECR counts 0."""
    from train.ecr_store import ECRStore

    counts = [len(tokenizer(r.ecr, add_special_tokens=False)["input_ids"]) for r in ECRStore(store_path)
              if side is None or r.side == side]
    return mean(counts) if counts else 0.0


def measure(run: Path, out: Path, budget: int, style: str, force_tokens: int, tokenizer) -> dict:
    """Hit@1 of `embed-full` with the student's ECR at `budget` tokens (`style` `cut` or `forced`)."""
    from eval.demo import DemoSettings, evaluate, student_ecr
    from train.generate_ecr import LocalBackend

    data = run / "data"
    if budget == 0:
        scores = evaluate(run / "embed-full", data, out / "eval" / "budget-0", None, "none")
        return {"budget": 0, "style": "none", "scores": scores, "tokens": 0.0, "seconds_per_row": 0.0}
    store = out / f"ecr-{style}-{budget}"
    shutil.rmtree(store, ignore_errors=True)  # always generated here: its seconds are measured, never reused
    backend = LocalBackend(str(run / "student"), max_new_tokens=budget, device="cpu", dtype="float32",
                           force_answer_tokens=force_tokens if style == "forced" else 0)
    start = time.perf_counter()
    accuracy = student_ecr(None, data, store, replace(DemoSettings(), max_new_tokens=budget), backend=backend)
    seconds = time.perf_counter() - start
    scores = evaluate(run / "embed-full", data, out / "eval" / store.name, store, "full")
    return {"budget": budget, "style": style, "scores": scores, "answer_accuracy": accuracy,
            "tokens": mean_ecr_tokens(store, tokenizer), "seconds_per_row": seconds / max(backend.generated_rows, 1)}


def curve(path: Path, rows: list[dict], baseline: float, width: int = 640, height: int = 400) -> None:
    """Overall Hit@1 against mean tokens per trace, one line per style, the no-ECR embedder dashed."""
    image, draw, (left, right, top, bottom) = plot_axes(width, height,
                                                        "TTE_s overall Hit@1 (%) vs mean ECR tokens per trace")
    most = max([r["tokens"] for r in rows] + [1.0])
    y_base = bottom - (bottom - top) * baseline
    draw.line([left, y_base, right, y_base], fill="#7f7f7f")
    draw.text((right - 90, y_base - 14), "no-ECR embedder", fill="#7f7f7f")
    for style, colour in (("cut", "#1f77b4"), ("forced", "#d62728")):
        points = [r for r in rows if r["style"] in (style, "none")]
        xy = [(left + (right - left) * r["tokens"] / most, bottom - (bottom - top) * r["overall"]) for r in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for (x, y), r in zip(xy, points, strict=True):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            draw.text((x + 4, y - 14), f"{100 * r['overall']:.0f}", fill=colour)
        draw.text((left + 10, top + (12 if style == "cut" else 26)), style, fill=colour)
    image.save(path)


def report(rows: list[dict], baseline: dict) -> str:
    tasks = list(baseline)
    lines = ["| budget | style | tokens/trace | s/row generated | " + " | ".join(tasks) + " | Overall |",
             "|---:|---|---:|---:|" + "---:|" * (len(tasks) + 1),
             "| - | no-ECR embedder | 0 | 0 | " + " | ".join(f"{100 * baseline[t]:.1f}" for t in tasks)
             + f" | {100 * mean(baseline.values()):.1f} |"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['style']} | {r['tokens']:.1f} | {r['seconds_per_row']:.4f} | "
                     + " | ".join(f"{100 * r['scores'][t]:.1f}" for t in tasks) + f" | {100 * r['overall']:.1f} |")
    return "\n".join(lines) + "\n"


def router_report(rows: list[dict], latency: list[dict]) -> str:
    """Markdown of the routed TTE_u rows and of the latency per query."""
    tasks = list(rows[0]["scores"])
    seconds = {r["variant"]: r["seconds_per_query"] for r in latency}
    lines = ["| TTE_u | think fraction | ECR tokens/query | s/query (single pass) | " + " | ".join(tasks)
             + " | Overall |", "|---|---:|---:|---:|" + "---:|" * (len(tasks) + 1)]
    for r in rows:
        lines.append(f"| {r['label']} | {r['think_fraction']:.2f} | {r['query_tokens']:.1f} | "
                     f"{seconds.get(r['label'], float('nan')):.4f} | "
                     + " | ".join(f"{100 * r['scores'][t]:.1f}" for t in tasks) + f" | {100 * r['overall']:.1f} |")
    lines += ["", "| variant | s/query | generated tokens/query |", "|---|---:|---:|"]
    lines += [f"| {r['variant']} | {r['seconds_per_query']:.4f} | {r['tokens_per_query']:.1f} |" for r in latency]
    return "\n".join(lines) + "\n"


def router_curve(path: Path, rows: list[dict], latency: list[dict], width: int = 640, height: int = 400) -> None:
    """Overall Hit@1 of the routed TTE_u against ECR tokens per query (left) and seconds per query (right)."""
    from PIL import Image

    seconds = {r["variant"]: r["seconds_per_query"] for r in latency}
    panels = []
    for title, x_of in (("tokens / query", lambda r: r["query_tokens"]),
                        ("s / query", lambda r: seconds.get(r["label"], 0.0))):
        image, draw, (left, right, top, bottom) = plot_axes(width, height, f"TTE_u overall Hit@1 (%) vs {title}")
        most = max([x_of(r) for r in rows] + [1e-9])
        points = sorted(rows, key=x_of)
        xy = [(left + (right - left) * x_of(r) / most, bottom - (bottom - top) * r["overall"]) for r in points]
        draw.line(xy, fill="#2ca02c", width=2)
        for (x, y), r in zip(xy, points, strict=True):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="#2ca02c")
            label = f"{r['label'].split()[-1]}: {100 * r['overall']:.0f}"
            draw.text((x - 70 if x > right - 70 else x + 4, y - 14), label, fill="black")
        draw.text((right - 80, bottom + 8), f"max {most:.3g}", fill="black")
        panels.append(image)
    joined = Image.new("RGB", (2 * width, height), "white")
    for index, panel in enumerate(panels):
        joined.paste(panel, (index * width, 0))
    joined.save(path)


def main(argv=None) -> list[dict]:
    import torch

    from eval.demo import evaluate
    from processing_tte import TTEProcessor
    from train.cli import parse

    (args,) = parse((BenchThinkingArguments,), "eval.bench_thinking", __doc__, argv)
    torch.set_num_threads(1)
    run, out = Path(args.run_dir), Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = TTEProcessor.from_backbone(str(run / "student")).tokenizer
    rows = []
    for budget in sorted(set(args.budgets)):
        for style in (("cut", "forced") if budget else ("none",)):
            row = measure(run, out, budget, style, args.force_answer_tokens, tokenizer)
            row["overall"] = mean(row["scores"].values())
            rows.append(row)
    baseline = evaluate(run / "embed-none", run / "data", out / "eval" / "no-ecr-embedder", None, "none")
    table = report(rows, baseline)
    result = {"run_dir": str(run), "rows": rows, "no_ecr_embedder": baseline}
    if args.router:
        result.update(routed(run, out, args))
        table += "\n" + router_report(result["router"], result["latency"])
        router_curve(out / "router.png", result["router"], result["latency"])
    (out / "thinking.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "thinking.md").write_text(table, encoding="utf-8")
    curve(out / "thinking.png", rows, mean(baseline.values()))
    print(table)
    return rows


def routed(run: Path, out: Path, args: BenchThinkingArguments) -> dict:
    """The routed TTE_u rows (labelled like the latency variants), the latency table and the router's log."""
    from eval.thinking_router import build_router, latency_rows, router_rows

    model = build_router(run, out, args.seed, args.ecr_dropout, args.head_steps, max(args.budgets))
    rows = router_rows(model, run, out, args.thresholds)
    for r in rows:
        r["label"] = r["variant"] if r["threshold"] is None else f"TTE_u router @ {r['threshold']:g}"
    latency = latency_rows(run, model, args.thresholds, max(args.budgets), per_task=args.latency_queries)
    return {"router": rows, "latency": latency,
            "router_log": json.loads((model / "router_log.json").read_text(encoding="utf-8"))}


if __name__ == "__main__":
    main()

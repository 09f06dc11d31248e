"""What each token of thinking buys: Hit@1 of a demo run's TTE_s pair against the student's thinking budget.

    python -m eval.bench_thinking --run_dir runs/demo/seed0 --output_dir runs/thinking

For every budget (`--budgets`, in generated tokens; 0 is no thinking) the run's student writes the ECR of every test
query and candidate with at most that many tokens, either cut at the budget (`cut`) or closed with a forced answer
(`forced`: `</think> Answer:` and at most `--force_answer_tokens` more, `LocalBackend(force_answer_tokens=...)`), and
the run's TTE_t/TTE_s embedder (`embed-full`) is evaluated with it by the MMEB harness. Budget 0 evaluates the same
embedder with no ECR, beside the run's dedicated no-ECR embedder. Reports Hit@1 per task and overall, the mean
tokens per trace and the generation seconds per row, as JSON (`thinking.json`), markdown and a PNG curve.
"""

from __future__ import annotations

import json
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


def _tokens(store_path: Path, tokenizer) -> float:
    from train.ecr_store import ECRStore

    records = list(ECRStore(store_path))
    return mean(len(tokenizer(r.ecr, add_special_tokens=False)["input_ids"]) for r in records) if records else 0.0


def measure(run: Path, out: Path, budget: int, style: str, force_tokens: int, tokenizer) -> dict:
    """Hit@1 of `embed-full` with the student's ECR at `budget` tokens (`style` `cut` or `forced`)."""
    from eval.demo import DemoSettings, evaluate, student_ecr
    from train.generate_ecr import LocalBackend

    data = run / "data"
    if budget == 0:
        scores = evaluate(run / "embed-full", data, out / "eval" / "budget-0", None, "none")
        return {"budget": 0, "style": "none", "scores": scores, "tokens": 0.0, "seconds_per_row": 0.0}
    store = out / f"ecr-{style}-{budget}"
    backend = LocalBackend(str(run / "student"), max_new_tokens=budget, device="cpu", dtype="float32",
                           force_answer_tokens=force_tokens if style == "forced" else 0)
    start = time.perf_counter()
    accuracy = student_ecr(None, data, store, replace(DemoSettings(), max_new_tokens=budget), backend=backend)
    seconds = time.perf_counter() - start
    scores = evaluate(run / "embed-full", data, out / "eval" / store.name, store, "full")
    return {"budget": budget, "style": style, "scores": scores, "answer_accuracy": accuracy,
            "tokens": _tokens(store, tokenizer), "seconds_per_row": seconds / max(backend.generated_rows, 1)}


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
    (out / "thinking.json").write_text(json.dumps({"run_dir": str(run), "rows": rows, "no_ecr_embedder": baseline},
                                                  indent=2) + "\n", encoding="utf-8")
    table = report(rows, baseline)
    (out / "thinking.md").write_text(table, encoding="utf-8")
    curve(out / "thinking.png", rows, mean(baseline.values()))
    print(table)
    return rows


if __name__ == "__main__":
    main()

"""The demo's report: per-task, per-category and overall Hit@1 of every variant (mean over seeds), the students'
answer accuracy and the wall time of each stage, as JSON, markdown and PNG charts (with `--ablations`, also the
ECR-noise curve; with `--rl`, the GRPO reward curve).

    python -m eval.demo_report --results runs/demo/results.json   # rewrite results.md and the PNGs from the JSON
    python -m eval.demo_report --results runs/s0/results.json runs/s1/results.json --output_dir runs/demo
                                                                  # seeds run separately, reported together
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from PIL import Image, ImageDraw

from eval.tasks import all_tasks


def summarise(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Variant -> {task, category, "Overall"} -> Hit@1 averaged over seeds (tasks averaged into categories)."""
    specs = all_tasks("synthetic")
    table = {}
    for variant in runs[0]["scores"]:
        per_task = {task: mean(run["scores"][variant][task] for run in runs) for task in specs}
        row = dict(per_task)
        for category in dict.fromkeys(spec.category for spec in specs.values()):
            row[category] = mean(per_task[t] for t, spec in specs.items() if spec.category == category)
        row["Overall"] = mean(per_task.values())
        table[variant] = row
    return table


def markdown(results: dict, table: dict) -> str:
    specs = all_tasks("synthetic")
    categories = list(dict.fromkeys(spec.category for spec in specs.values()))
    seeds = [run["seed"] for run in results["runs"]]
    columns = list(specs) + categories + ["Overall"]
    lines = [f"Hit@1 (%) on the synthetic benchmark, mean over seeds {seeds}"
             + (" (--quick: a smoke run, the scores mean nothing)" if results["quick"] else ""), "",
             "| variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {variant} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |"
              for variant, row in table.items()]
    lines += ["", "Student answer accuracy on the test queries (vs the oracle teacher), mean over seeds:", "",
              "| student | " + " | ".join(specs) + " |", "|---|" + "---:|" * len(specs)]
    for kind in results["runs"][0]["student_answer_accuracy"]:
        values = [mean(run["student_answer_accuracy"][kind][t] for run in results["runs"]) for t in specs]
        lines.append(f"| {kind} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |")
    lines += ["", "Wall time per stage (s, all seeds): "
              + ", ".join(f"{k} {v:.0f}" for k, v in results["stage_seconds"].items())
              + f"; total {results['total_seconds']:.0f} s on {results['machine']}."]
    return "\n".join(lines) + "\n"


def chart(path: Path, table: dict, width: int = 1000) -> None:
    """Overall Hit@1 per variant as horizontal bars."""
    height = 60 + 26 * len(table)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top = 300, width - 60, 40
    draw.text((10, 10), "Overall Hit@1 (%), synthetic benchmark", fill="black")
    step = (height - top - 20) / max(len(table), 1)
    for i, (variant, row) in enumerate(table.items()):
        y = top + i * step
        x = left + (right - left) * max(0.0, min(row["Overall"], 1.0))
        colour = "#2ca02c" if variant.startswith("TTE_u") else "#1f77b4"
        draw.rectangle([left, y + 4, x, y + step - 4], fill="#7f7f7f" if variant == "No ECR" else colour)
        draw.text((10, y + step / 2 - 6), variant, fill="black")
        draw.text((x + 6, y + step / 2 - 6), f"{100 * row['Overall']:.1f}", fill="black")
    image.save(path)


def plot_axes(width: int, height: int, title: str):
    """A white chart with its title and x/y axes: `(image, draw, (left, right, top, bottom))` of the plot area."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    box = left, right, top, bottom = 60, width - 30, 40, height - 50
    draw.text((10, 10), title, fill="black")
    draw.line([left, bottom, right, bottom], fill="black")
    draw.line([left, top, left, bottom], fill="black")
    return image, draw, box


def noise_curve(path: Path, table: dict, width: int = 640, height: int = 400) -> bool:
    """Overall Hit@1 of the TTE_t embedder against the rate of wrong answers in its ECR (the ablations' rows);
    returns whether there was a curve to draw."""
    from eval.demo_ablations import NOISE_RATES, noise_variant

    points = [(rate, table[noise_variant(rate)]["Overall"]) for rate in NOISE_RATES if noise_variant(rate) in table]
    if not points:
        return False
    image, draw, (left, right, top, bottom) = plot_axes(
        width, height, "TTE_t embedder: overall Hit@1 (%) vs wrong answers in the ECR")
    xy = [(left + (right - left) * rate, bottom - (bottom - top) * score) for rate, score in points]
    draw.line(xy, fill="#d62728", width=2)
    for (rate, score), (x, y) in zip(points, xy, strict=True):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="#d62728")
        draw.text((x - 12, y - 18), f"{100 * score:.1f}", fill="black")
        draw.text((x - 10, bottom + 8), f"{100 * rate:.0f}%", fill="black")
    image.save(path)
    return True


def reward_chart(path: Path, runs: list[dict], width: int = 640, height: int = 400) -> bool:
    """The mean GRPO reward per logging step of each seed's RL stage (`--rl`); returns whether there was one."""
    curves = [(run["seed"], run["rl_reward"]) for run in runs if run.get("rl_reward")]
    if not curves:
        return False
    image, draw, (left, right, top, bottom) = plot_axes(width, height, "GRPO: mean reward per logging step")
    last = max(step for _, curve in curves for step, _ in curve)
    high = max(1.0, max(reward for _, curve in curves for _, reward in curve))
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    for index, (seed, curve) in enumerate(curves):
        colour = colours[index % len(colours)]
        xy = [(left + (right - left) * step / last, bottom - (bottom - top) * reward / high) for step, reward in curve]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        else:
            draw.point(xy, fill=colour)
        draw.text((right - 70, top + 14 * index), f"seed {seed}", fill=colour)
    draw.text((left - 30, top - 6), f"{high:.2f}", fill="black")
    draw.text((left - 12, bottom - 6), "0", fill="black")
    draw.text((right - 40, bottom + 8), f"step {last}", fill="black")
    image.save(path)
    return True


def write_report(out, results: dict) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(results["runs"])
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "results.png"}
    paths["json"].write_text(json.dumps({**results, "table": table}, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(results, table), encoding="utf-8")
    chart(paths["chart"], table)
    if noise_curve(out / "noise.png", table):
        paths["noise"] = out / "noise.png"
    if reward_chart(out / "rl_reward.png", results["runs"]):
        paths["rl_reward"] = out / "rl_reward.png"
    return paths


def merge_results(parts: list[dict]) -> dict:
    """One demo result from runs of other seeds made separately (e.g. side by side): their runs in order, stage
    times and totals summed. The runs must share their settings."""
    first = parts[0]
    for part in parts[1:]:
        flags = [(r["settings"], r["quick"], r.get("ablations"), r.get("rl")) for r in (part, first)]
        if flags[0] != flags[1]:
            raise ValueError("the results to merge were run with different settings (or --quick / --ablations / --rl)")
    seconds: dict[str, float] = {}
    for part in parts:
        for name, value in part["stage_seconds"].items():
            seconds[name] = round(seconds.get(name, 0.0) + value, 1)
    runs = [run for part in parts for run in part["runs"]]
    if len({run["seed"] for run in runs}) != len(runs):
        raise ValueError(f"a seed appears twice among the results to merge: {[run['seed'] for run in runs]}")
    return {**{k: v for k, v in first.items() if k != "table"}, "runs": runs, "stage_seconds": seconds,
            "total_seconds": round(sum(part["total_seconds"] for part in parts), 1)}


@dataclass
class ReportArguments:
    """Options of `python -m eval.demo_report`."""

    results: list[str] = field(metadata={"help": "a demo's results.json (several: their seeds merged)"})
    output_dir: str | None = field(default=None, metadata={"help": "where the report goes (default: beside the "
                                                                   "first results.json)"})


def main(argv=None) -> dict[str, Path]:
    from train.cli import parse

    (args,) = parse((ReportArguments,), "eval.demo_report", __doc__, argv)
    parts = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.results]
    results = merge_results(parts)
    paths = write_report(Path(args.output_dir or Path(args.results[0]).parent), results)
    print(paths["markdown"].read_text())
    return paths


if __name__ == "__main__":
    main()

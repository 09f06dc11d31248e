"""The demo's report: per-task, per-category and overall Hit@1 of every variant (mean over seeds), the students'
answer accuracy and the wall time of each stage, as JSON, markdown and a PNG chart."""

from __future__ import annotations

import json
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


def chart(path: Path, table: dict, width: int = 1000, height: int = 460) -> None:
    """Overall Hit@1 per variant as horizontal bars."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top = 190, width - 60, 40
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


def write_report(out, results: dict) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarise(results["runs"])
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "results.png"}
    paths["json"].write_text(json.dumps({**results, "table": table}, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(markdown(results, table), encoding="utf-8")
    chart(paths["chart"], table)
    return paths

"""Evaluation outputs: per-task score and prediction files, the leaderboard JSON, a markdown table of category
averages and a PNG bar chart by category (drawn with Pillow)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageDraw

from eval.tasks import TaskSpec, all_tasks, categories


def task_dir(out_dir, spec: TaskSpec) -> Path:
    """Where a task's files go: `out_dir/<benchmark>/<modality>/`."""
    return Path(out_dir) / spec.benchmark / spec.modality


def score_path(out_dir, spec: TaskSpec) -> Path:
    return task_dir(out_dir, spec) / f"{spec.name}_score.json"


def write_task_outputs(out_dir, spec: TaskSpec, scores: dict, predictions: list[dict],
                       provenance: dict | None = None) -> Path:
    """Write `{task}_pred.jsonl` and `{task}_provenance.json`, then `{task}_score.json` (last, atomically: its
    presence marks the task done)."""
    folder = task_dir(out_dir, spec)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{spec.name}_pred.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    if provenance is not None:
        (folder / f"{spec.name}_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n",
                                                             encoding="utf-8")
    path = score_path(out_dir, spec)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(scores, indent=4) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


LEADERBOARD_MODALITIES = ("image", "visdoc", "video")  # the reference report's order


def safe_file_name(name: str) -> str:
    """`name` as one file name (a hub id `me/tte-2b` becomes `me__tte-2b`); never a path outside the folder."""
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name).replace("/", "__")).strip("._")
    return stem or "model"


def collect_scores(out_dir, benchmark: str) -> dict[str, dict[str, dict]]:
    """Finished tasks' scores in the leaderboard layout: `{modality: {task: scores}}`, registry order."""
    metrics: dict[str, dict[str, dict]] = {}
    for spec in all_tasks(benchmark).values():
        path = score_path(out_dir, spec)
        if path.is_file():
            metrics.setdefault(spec.modality, {})[spec.name] = json.loads(path.read_text(encoding="utf-8"))
    return metrics


def leaderboard_metrics(out_dir, benchmark: str, found: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """The reference report's `metrics`: every task of every modality, its score dict or `"FILE_N/A"` (`"DIR_N/A"`
    when the modality's folder does not exist)."""
    tasks = list(all_tasks(benchmark).values())
    metrics = {}
    for modality in [m for m in LEADERBOARD_MODALITIES if any(t.modality == m for t in tasks)]:
        missing = "FILE_N/A" if (Path(out_dir) / benchmark / modality).is_dir() else "DIR_N/A"
        metrics[modality] = {t.name: found.get(modality, {}).get(t.name, missing) for t in tasks
                             if t.modality == modality}
    return metrics


def headline_table(metrics: dict, benchmark: str) -> tuple[list[tuple[str, int, float]], float | None]:
    """Per category `(category, #tasks, mean headline score)` and the overall mean over all tasks found."""
    tasks = all_tasks(benchmark)
    by_category: dict[str, list[float]] = {}
    for modality_scores in metrics.values():
        for name, scores in modality_scores.items():
            spec = tasks[name]
            by_category.setdefault(spec.category, []).append(scores[spec.headline])
    rows = [(c, len(by_category[c]), sum(by_category[c]) / len(by_category[c]))
            for c in categories(benchmark) if c in by_category]
    values = [v for vs in by_category.values() for v in vs]
    return rows, (sum(values) / len(values) if values else None)


def write_summary(out_dir, benchmark: str, model_name: str, metadata: dict | None = None) -> dict[str, Path]:
    """Write `<model_name>.json` (leaderboard layout), `summary.md` and `categories.png` under
    `out_dir/<benchmark>/`; returns their paths."""
    folder = Path(out_dir) / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    metrics = collect_scores(out_dir, benchmark)
    meta = {"model_name": model_name, **(metadata or {}), "report_generated_date": datetime.now().isoformat()}
    paths = {"json": folder / f"{safe_file_name(model_name)}.json", "markdown": folder / "summary.md",
             "chart": folder / "categories.png"}
    board = {"metadata": meta, "metrics": leaderboard_metrics(out_dir, benchmark, metrics)}
    paths["json"].write_text(json.dumps(board, indent=4) + "\n", encoding="utf-8")
    rows, overall = headline_table(metrics, benchmark)
    paths["markdown"].write_text(markdown_table(metrics, benchmark, model_name, rows, overall), encoding="utf-8")
    draw_bar_chart(paths["chart"], rows, overall, title=f"{model_name} - {benchmark}")
    return paths


def markdown_table(metrics: dict, benchmark: str, model_name: str, rows, overall) -> str:
    """Category averages, overall, and every task's headline score (in %)."""
    tasks = all_tasks(benchmark)
    lines = [f"# {model_name} on {benchmark}", "", "| Category | Tasks | Score |", "|---|---:|---:|"]
    lines += [f"| {c} | {n} | {100 * v:.2f} |" for c, n, v in rows]
    total = sum(n for _, n, _ in rows)
    lines.append(f"| **Overall** | {total} | {'' if overall is None else f'{100 * overall:.2f}'} |")
    lines += ["", "| Task | Category | Metric | Score |", "|---|---|---|---:|"]
    for modality_scores in metrics.values():
        for name, scores in modality_scores.items():
            spec = tasks[name]
            lines.append(f"| {name} | {spec.category} | {spec.headline} | {100 * scores[spec.headline]:.2f} |")
    return "\n".join(lines) + "\n"


def draw_bar_chart(path, rows, overall, title: str = "", width: int = 900, height: int = 420) -> Path:
    """A bar per category (plus overall), heights in % of 100."""
    bars = [(c, v) for c, _, v in rows] + ([("Overall", overall)] if overall is not None else [])
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 50, width - 20, 40, height - 70
    draw.text((left, 10), title, fill="black")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for tick in range(0, 101, 25):
        y = bottom - (bottom - top) * tick / 100
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((8, y - 6), f"{tick}", fill="black")
    slot = (right - left) / max(len(bars), 1)
    for i, (label, value) in enumerate(bars):
        x0, x1 = left + i * slot + slot * 0.15, left + (i + 1) * slot - slot * 0.15
        y = bottom - (bottom - top) * max(0.0, min(value, 1.0))
        draw.rectangle([x0, y, x1, bottom], fill="#d62728" if label == "Overall" else "#1f77b4")
        draw.text((x0, y - 14), f"{100 * value:.1f}", fill="black")
        draw.text((x0, bottom + 6 + 12 * (i % 2)), label[:14], fill="black")
    image.save(path)
    return Path(path)

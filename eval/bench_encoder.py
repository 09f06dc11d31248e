"""Encoder benchmark (the encoder half of `eval.bench_scale`): rows/s of `Encoder` with its preprocessing in 0, 1
and 2 `DataLoader` workers, against the model's own rate on pre-processed inputs, on realistic image sizes.

    python -m eval.bench_encoder                          # tiny random Qwen2-VL, 256 synthetic 640x480 JPEGs
    python -m eval.bench_encoder --workers 0 2 4 --model_name_or_path Qwen/Qwen2-VL-2B-Instruct --device cuda

The images are written to a temporary folder as JPEG files and read from there, so every measurement decodes,
resizes and normalises each image (the stock `Qwen2VLImageProcessor` settings: up to 28*28*1280 pixels, so a 640x480
image becomes ~300k pixels), tokenizes the prompt with a short ECR, pads length-sorted batches and embeds them.
Measured, in paired rounds (`eval.bench_speed.race`: a warm-up round, then `--repeats` rounds in alternating order;
ratios are medians over rounds of the two times of one round, rows/s from each one's best round):
- `model only`: `Encoder.embed_features` on rows processed beforehand (sorting, padding, forward): the ceiling;
- `preprocessing only`: the processor alone, in this process, one row at a time;
- `N workers`: `Encoder(num_workers=N).encode` of the rows from their files (workers start inside the timed call).
The default model is a tiny random Qwen2-VL with 28-pixel patches and a one-layer vision tower: the processor does
the full stock work on each image while the model sees ~100 image tokens, so preprocessing takes about three times
the model's time, as with Qwen2-VL-2B on a GPU (12 ms of CPU preprocessing against ~5 ms of H100 forward per image).
Wall clock for the rates: the workers' CPU time is not this process's, so a process clock would flatter them. The
CPU column adds this process's CPU time and its joined workers' (median of the timed rounds, per row): it does not
depend on how busy the machine is, and shows what the workers cost on top of the work itself.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval.bench_speed import race, ratio
from eval.encode import Encoder
from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor

STOCK_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}  # Qwen2VLImageProcessor's defaults
QUESTIONS = ["what is on the card?", "which shape is largest?", "describe the scene", "how many squares are there?"]
TARGETS = {"2 workers": 1.5}  # x the 0-worker rate, on the 2-core machine with the tiny model (issue 12)


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int) -> list[str]:
    """`count` JPEG files of `size` pixels (gradients, noise and rectangles: photo-like work for the decoder)."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for index in range(count):
        tint = rng.uniform(0, 255, 3)
        pixels = np.stack([x * 255 / width, y * 255 / height, np.full(x.shape, tint[2])], axis=-1) * 0.6
        pixels = pixels + tint * 0.4 + rng.normal(0, 18, (height, width, 3))
        for _ in range(4):
            left, top = rng.integers(0, width - 40), rng.integers(0, height - 40)
            pixels[top:top + rng.integers(20, 160), left:left + rng.integers(20, 200)] = rng.uniform(0, 255, 3)
        path = folder / f"image_{index:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def image_rows(paths: list[str], seed: int) -> list[dict]:
    """One query row per image file: the image, a question and a short ECR."""
    rng = random.Random(seed)
    return [{"image": path, "text": rng.choice(QUESTIONS),
             "ecr": f"<think>the card shows {rng.randint(1, 9)} shapes on a gradient</think> Answer: shapes"}
            for path in paths]


def tiny_model(folder: str, args) -> str:
    """A tiny random Qwen2-VL whose processor keeps the stock image sizes (see the module docstring)."""
    from train.tiny_backbone import write_tiny_backbone

    path = write_tiny_backbone(folder, "qwen2_vl", hidden_size=args.hidden_size, num_layers=args.num_layers,
                               patch_size=args.patch_size, vision_depth=args.vision_depth,
                               vision_width=args.vision_width)
    processor = TTEProcessor.from_backbone(str(path))
    processor.image_processor.size = dict(STOCK_PIXELS)
    processor.backbone.save_pretrained(path)
    return str(path)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the `DataLoader` workers, once joined)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _counting_cpu(function, spent: list):
    def run():
        start = _cpu_seconds()
        result = function()
        spent.append(_cpu_seconds() - start)
        return result

    return run


def _timed_runs(encoders: dict, rows: list[dict], features: list, model_only: Encoder, window: int,
                cpu: dict) -> dict:
    """name -> callable for `race`, each recording its CPU seconds (all processes) into `cpu[name]`."""
    processor = model_only.processor
    runs = {"model only": lambda: torch.cat([model_only.embed_features(features[start:start + window])
                                             for start in range(0, len(features), window)]),
            "preprocessing only": lambda: [processor.process_queries([row]) for row in rows]}
    runs.update({name: (lambda encoder=encoder: encoder.encode(rows, "query")) for name, encoder in encoders.items()})
    return {name: _counting_cpu(function, cpu.setdefault(name, [])) for name, function in runs.items()}


def _worker_name(count: int) -> str:
    return f"{count} worker{'' if count == 1 else 's'}"


def _records(results: dict, rows: int, workers: list[int], cpu: dict) -> list[dict]:
    """One table row per measurement; pipelines get their ratios to 0 workers and to the model alone."""
    records = []
    baseline = _worker_name(0) if 0 in workers else None
    reference = results[baseline]["result"] if baseline else None
    for name, entry in results.items():
        record = {"pipeline": name, "workers": next((w for w in workers if _worker_name(w) == name), None),
                  "rows": rows, "seconds": entry["seconds"], "rows_per_s": rows / entry["seconds"],
                  "times": entry["times"], "peak_mib": entry["peak_mib"],
                  "cpu_ms_per_row": 1000 * statistics.median(cpu[name][1:]) / rows}
        if baseline:
            record["x_0_workers"] = ratio(results, baseline, name)
        record["x_model_only"] = ratio(results, "model only", name)
        if record["workers"] is not None and reference is not None:
            record["max_abs_diff"] = (entry["result"] - reference).abs().max().item()
        if name in TARGETS and baseline:
            record["target"] = f">= {TARGETS[name]} x 0 workers"
            record["met"] = record["x_0_workers"] >= TARGETS[name]
        records.append(record)
    return records


def run(args: BenchEncoderArguments | None = None) -> list[dict]:
    """Run the benchmark (`args` from `parse_args`, defaults when `None`); returns one dict per table row
    (`pipeline`, `workers`, `rows`, `seconds`, `rows_per_s`, `x_0_workers`, `x_model_only`, `max_abs_diff`, ...)."""
    args = args or parse_args([])
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model_name_or_path or tiny_model(str(Path(scratch) / "model"), args)
        processor = TTEProcessor.from_backbone(path)
        model = TTEForEmbedding.from_backbone(path, dtype=dtype).to(device).eval()
        (Path(scratch) / "images").mkdir()
        rows = image_rows(write_images(Path(scratch) / "images", args.rows, args.size, args.seed), args.seed)
        settings = dict(batch_size=args.batch_size, window=args.window, device=device)
        encoders = {_worker_name(count): Encoder(model, processor, num_workers=count, **settings)
                    for count in args.workers}
        model_only = Encoder(model, processor, **settings)
        features = [processor.process_queries([row]) for row in rows]
        cpu = {}
        results = race(_timed_runs(encoders, rows, features, model_only, args.window, cpu), args.repeats, device)
    return _records(results, len(rows), args.workers, cpu)


def table(records: list[dict]) -> str:
    """The records as a markdown table."""
    lines = ["| pipeline | rows/s | x 0 workers | x model only | best s | CPU ms/row (all processes) | target | "
             "max diff |", "|---|---|---|---|---|---|---|---|"]
    for record in records:
        x0 = f"**{record['x_0_workers']:.2f}**" if "x_0_workers" in record else "-"
        target = f"{record['target']} {'yes' if record['met'] else 'NO'}" if "target" in record else ""
        diff = f"{record['max_abs_diff']:.1e}" if "max_abs_diff" in record else ""
        lines.append(f"| {record['pipeline']} | {record['rows_per_s']:.1f} | {x0} | {record['x_model_only']:.2f} | "
                     f"{record['seconds']:.3f} | {record['cpu_ms_per_row']:.1f} | {target} | {diff} |")
    return "\n".join(lines)


def describe(args, load_before: tuple, load_after: tuple) -> str:
    """The heading: model, machine and how loaded it was."""
    model = args.model_name_or_path or (f"tiny qwen2_vl (hidden {args.hidden_size}, {args.num_layers} layers, "
                                        f"{args.patch_size}-px patches, vision depth {args.vision_depth})")
    width, height = args.size
    return (f"{model} on {args.device}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads in the main process; {args.rows} rows of {width}x{height} "
            f"JPEG, batch {args.batch_size}, window {args.window}; {args.repeats} paired rounds, wall clock; "
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")


@dataclass
class BenchEncoderArguments:
    """Options of `python -m eval.bench_encoder`."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "a TTE-compatible backbone checkpoint; default: a tiny random Qwen2-VL"})
    rows: int = field(default=256, metadata={"help": "rows (one image file each)"})
    image_size: str = field(default="640x480", metadata={"help": "WIDTHxHEIGHT of the images"})
    workers: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "worker counts to time"})
    batch_size: int = field(default=8, metadata={"help": "rows per forward"})
    window: int = field(default=32, metadata={"help": "rows length-sorted together (Encoder window)"})
    repeats: int = field(default=3, metadata={"help": "timed rounds (best counts), after one warm-up"})
    hidden_size: int = field(default=64, metadata={"help": "tiny backbone width (without a model)"})
    num_layers: int = field(default=2, metadata={"help": "tiny backbone depth (without a model)"})
    patch_size: int = field(default=28, metadata={"help": "tiny vision patch size (without a model)"})
    vision_depth: int = field(default=1, metadata={"help": "tiny vision tower depth (without a model)"})
    vision_width: int = field(default=16, metadata={"help": "tiny vision tower width (without a model)"})
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu",
                        metadata={"help": "where the model runs"})
    dtype: str | None = field(default=None, metadata={"help": "model dtype (default: bfloat16 on CUDA, else float32)"})
    threads: int = field(default=1, metadata={"help": "torch threads of the main process (0: torch's own)"})
    seed: int = field(default=0, metadata={"help": "seed of the images and the tiny model"})
    json: str | None = field(default=None, metadata={"help": "also write the records (and heading) to this file"})

    def __post_init__(self):
        self.size  # noqa: B018 (a malformed image_size fails here, at parse time)

    @property
    def size(self) -> tuple[int, int]:
        """`image_size` as `(width, height)`."""
        try:
            width, height = (int(side) for side in self.image_size.lower().split("x"))
        except ValueError:
            raise ValueError(f"image_size must be WIDTHxHEIGHT, e.g. 640x480, got {self.image_size!r}") from None
        return width, height


def parse_args(argv=None) -> BenchEncoderArguments:
    from train.cli import parse

    return parse((BenchEncoderArguments,), "eval.bench_encoder", __doc__, argv)[0]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    load_before = os.getloadavg()
    start = time.perf_counter()
    records = run(args)
    heading = describe(args, load_before, os.getloadavg())
    print(heading)
    print(table(records))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"heading": heading, "settings": asdict(args), "records": records},
                                              indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return records


if __name__ == "__main__":
    main()

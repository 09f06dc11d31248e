"""The GPU benchmark in one command: absolute rows/s and peak memory on one accelerator, written to one folder.

    python -m eval.bench_gpu --output_dir runs/bench-gpu            # one H100/H200: about 8 minutes
    python -m eval.bench_gpu --output_dir /tmp/bench-gpu --dry_run  # argument check on any machine (CPU: minutes)

Runs, on `--device` (default CUDA):
1. `eval.bench_speed --preset 2b` (the Qwen2-VL-2B shape, random bf16 weights) once per attention kernel:
   `sdpa`, and `flash_attention_2` when the `flash_attn` package is installed (else reported as skipped):
   embedding (bucketed and naive), batched and sequential ECR generation with HF `generate`, and single-pass
   think-and-embed per head, each with rows/s and peak memory (`torch.cuda.max_memory_allocated`), and where one
   single pass per head spends its device time (`--profile`);
2. `eval.bench_encoder` (the MMEB `Encoder` on 640x480 JPEGs) with 0, 2 and 4 preprocessing workers, with the
   accelerator's utilisation sampled every 0.1 s while it runs (`torch.cuda.utilization`, which needs the
   `nvidia-ml-py` package; reported as not measured without it).
The served path (`transformers serve`, vLLM) is not timed here. Writes `speed_<kernel>.json`, `encoder.json` and
`summary.md` under `--output_dir`, and prints the summary.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class BenchGPUArguments:
    """Options of `python -m eval.bench_gpu`."""

    output_dir: str = field(default="runs/bench-gpu", metadata={"help": "folder of the JSON files and summary"})
    device: str = field(default="cuda", metadata={"help": "the accelerator"})
    dry_run: bool = field(default=False, metadata={
        "help": "one row per path, shallow 2b model (1 layer, 1 vision block), 8 encoder rows: an argument check"})
    encoder_rows: int = field(default=512, metadata={"help": "images of the encoder benchmark"})


def kernels() -> list[str]:
    """The attention kernels to time: `sdpa`, and `flash_attention_2` when `flash_attn` is importable."""
    return ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])


class UtilisationSampler:
    """Samples `torch.cuda.utilization(device)` every `interval` seconds in a thread (None where it cannot)."""

    def __init__(self, device: str, interval: float = 0.1):
        self.device, self.interval, self.samples, self.error = device, interval, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception as error:  # no NVML (nvidia-ml-py), or not a CUDA device
                self.error = f"{type(error).__name__}: {error}"
                return
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"utilisation": None, "why": self.error or "no samples"}
        return {"utilisation_mean": statistics.mean(self.samples), "utilisation_max": max(self.samples),
                "samples": len(self.samples)}


def run_speed(args: BenchGPUArguments, out: Path) -> dict:
    from eval import bench_speed

    results = {}
    for kernel in kernels():
        argv = ["--preset", "2b", "--device", args.device, "--attn_implementation", kernel, "--profile",
                "--json", str(out / f"speed_{kernel}.json")]
        argv += ["--dry_run", "--num_layers", "1", "--vision_depth", "1"] if args.dry_run else []
        results[kernel] = bench_speed.main(argv)
    if "flash_attention_2" not in results:
        results["flash_attention_2"] = {"skipped": "flash_attn is not installed"}
    return results


def run_encoder(args: BenchGPUArguments, out: Path) -> dict:
    from eval import bench_encoder

    rows = 8 if args.dry_run else args.encoder_rows
    argv = ["--device", args.device, "--rows", str(rows), "--workers", "0", "2", "4", "--repeats",
            "1" if args.dry_run else "3", "--json", str(out / "encoder.json")]
    with UtilisationSampler(args.device) as sampler:
        records = bench_encoder.main(argv)
    return {"records": records, **sampler.summary()}


def summary(speed: dict, encoder: dict) -> str:
    """The tables of both halves as markdown."""
    from eval.bench_encoder import table as encoder_table
    from eval.bench_speed import profile_table, table

    lines = ["# GPU benchmark", ""]
    for kernel, result in speed.items():
        lines.append(f"## eval.bench_speed --preset 2b, {kernel}")
        if "skipped" in result:
            lines += ["", f"skipped: {result['skipped']}", ""]
            continue
        lines += ["", result["heading"], "", table(result), "",
                  "one single pass per region (torch.profiler, device time):", "", profile_table(result), ""]
    utilisation = (f"accelerator utilisation while encoding: mean {encoder['utilisation_mean']:.0f}%, max "
                   f"{encoder['utilisation_max']}% ({encoder['samples']} samples)" if "utilisation_mean" in encoder
                   else f"accelerator utilisation: not measured ({encoder['why']})")
    lines += ["## eval.bench_encoder", "", encoder_table(encoder["records"]), "", utilisation, ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from train.cli import parse

    (args,) = parse((BenchGPUArguments,), "eval.bench_gpu", __doc__, argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    speed, encoder = run_speed(args, out), run_encoder(args, out)
    text = summary(speed, encoder)
    (out / "summary.md").write_text(text, encoding="utf-8")
    (out / "gpu.json").write_text(json.dumps({"speed": speed, "encoder": encoder}, indent=2, default=str) + "\n",
                                  encoding="utf-8")
    print(text)
    return {"speed": speed, "encoder": encoder}


if __name__ == "__main__":
    main()

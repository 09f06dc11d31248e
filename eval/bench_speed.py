"""Speed benchmark: each fast path against its baseline, in one process, on the same inputs; prints ratios.

    python -m eval.bench_speed                     # a tiny random backbone (hidden 128, 4 layers), built in a temp dir
    python -m eval.bench_speed --preset mid        # real proportions on a CPU (hidden 768, 12 layers), 13-23 min
    python -m eval.bench_speed --preset 2b --device cuda   # the Qwen2-VL-2B shape, random bf16 weights
    python -m eval.bench_speed --preset 2b --dry_run --num_layers 1 --vision_depth 1   # argument check, one row
    python -m eval.bench_speed --model_name_or_path Qwen/Qwen2-VL-2B-Instruct --device cuda --head self_init qformer

Each fast path and its baseline run in turns (`--repeats` rounds after a warm-up round, alternating which goes
first); a ratio is the median over rounds of the two times of one round (robust to a machine whose load changes),
and the seconds and rows/s columns use each one's best round. Measured:
1. think-and-embed, single pass (`generate_and_embed`) / generate only (the same `generate` call without the head:
   the physical floor is 1.0), per head type;
2. two pass (generate, then embed prompt + ECR) / single pass, at `--gen_tokens` generated tokens (forced: the end
   of turn is suppressed until then);
3. length-bucketed encoding (`Encoder`) / naive fixed-order batching, throughput on a mixed-length set (image,
   video and text rows with ECR of 20-500 tokens, in random order);
4. batched ECR generation (`LocalBackend`, `--gen_batch` rows per `generate`) / one row at a time, throughput;
5. rows/s and peak memory for each (CUDA: `torch.cuda.max_memory_allocated`; CPU: the process's peak RSS, reset
   before each run through `/proc/self/clear_refs`).
Each fast path is also checked against its baseline (largest embedding difference, equal ECR texts).
The table goes to stdout, all numbers to `--json`.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig

from configuration_tte import HEAD_TYPES
from eval.encode import Encoder
from modeling_tte import TTEForEmbedding, TTEGenerationOutput, ecr_from_generation, two_pass_inputs
from processing_tte import TTEProcessor
from train.generate_ecr import ECRRequest, LocalBackend

TARGETS = {"single/generate": ("<=", 1.10), "two-pass/single": (">=", 1.15), "bucketed/naive": (">=", 1.3),
           "batched/sequential": (">=", 3.0)}
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "brown"]
WORDS = ("the red circle is left of a blue square so the answer names the colour of the card above it and "
         "counts three shapes in the frame").split()


# ------------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def race(runs: dict, repeats: int, device: torch.device, clock=time.perf_counter,
         warmups: dict | None = None) -> dict[str, dict]:
    """Time each of `runs` (name -> callable) in `repeats` rounds after one warm-up round, in alternating order
    (forward, then backward), so that paired runs see the same machine load. The warm-up round calls `warmups`
    (name -> a smaller callable of the same path) where given. Per name: the time of each round (`times`), the best
    time (`seconds`), the peak memory in MiB and the last result."""
    results = {name: {"times": [], "peak_mib": 0.0, "result": None} for name in runs}
    names = list(runs)
    for round_index in range(repeats + 1):
        for name in names if round_index % 2 else names[::-1]:
            _sync(device)
            _reset_peak(device)
            start = clock()
            warming = round_index == 0 and repeats and warmups
            result = (warmups[name] if warming else runs[name])()
            _sync(device)
            seconds = clock() - start
            entry = results[name]
            entry["result"] = result
            if round_index or not repeats:  # round 0 warms up (and is all a dry run times)
                entry["times"].append(seconds)
                entry["peak_mib"] = max(entry["peak_mib"], _peak_mib(device))
    for entry in results.values():
        entry["seconds"] = min(entry["times"])
    return results


def ratio(results: dict, numerator: str, denominator: str) -> float:
    """The median over rounds of `numerator`'s time / `denominator`'s time in the same round."""
    pairs = zip(results[numerator]["times"], results[denominator]["times"], strict=True)
    return statistics.median(top / bottom for top, bottom in pairs)


# --------------------------------------------------------------------------------------------------- inputs
def reasoner_rows(count: int, rng: random.Random) -> list[dict]:
    """Generation prompts: images of several sizes, a short video, and text-only rows."""
    rows = []
    for index in range(count):
        colour = COLOURS[index % len(COLOURS)]
        kind = index % 4
        if kind == 3:
            rows.append({"text": f"a {colour} card " + " ".join(rng.choices(WORDS, k=rng.randint(3, 30)))})
        elif kind == 2:
            rows.append({"video": [Image.new("RGB", (112, 112), c) for c in COLOURS[:4]], "text": "what happens"})
        else:
            size = rng.choice([(224, 224), (224, 168), (168, 224), (192, 192)])
            rows.append({"image": Image.new("RGB", size, colour), "text": f"what is on the {colour} card?"})
    return rows


def encoding_rows(count: int, tokenizer, rng: random.Random) -> list[dict]:
    """Embedder rows (image, video, text) with ECR of 20-500 tokens, in random order."""
    rows = []
    for index, base in enumerate(reasoner_rows(count, rng)):
        length = rng.randint(20, 500)
        words = " ".join(rng.choices(WORDS, k=length))
        think = tokenizer.decode(tokenizer(words, add_special_tokens=False)["input_ids"][:length - 8])
        rows.append(dict(base, ecr=f"<think>{think}</think> Answer: {COLOURS[index % len(COLOURS)]}"))
    rng.shuffle(rows)
    return rows


def tiny_model(folder: str, args) -> str:
    """A random Qwen2-VL of the shape `args` gives (`SHAPE` fields), whose processor keeps images up to 28 x 28
    patches (196 tokens after merging, what Qwen2-VL-2B gives a 392 px image; the test checkpoints cap images at 16
    tokens)."""
    from train.tiny_backbone import write_tiny_backbone

    sizes = {name: getattr(args, name) for name in SHAPE}
    path = write_tiny_backbone(folder, "qwen2_vl", dtype=args.dtype, **sizes)
    processor = TTEProcessor.from_backbone(str(path))
    processor.image_processor.size = {"shortest_edge": 256, "longest_edge": (28 * args.patch_size) ** 2}
    processor.backbone.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------- benchmarks
def _throughput(rows: int, entry: dict) -> dict:
    return {"seconds": entry["seconds"], "times": entry["times"], "rows_per_s": rows / entry["seconds"],
            "peak_mib": entry["peak_mib"]}


def _load(args, dtype) -> dict:
    """Keyword arguments that load the backbone in `dtype` with `--attn_implementation`."""
    return {"dtype": dtype, **({"attn_implementation": args.attn_implementation} if args.attn_implementation else {})}


WARMUP_TOKENS = 4  # generated tokens of a think-and-embed warm-up call (it only has to run every path once)
PROFILED = ("tte.generate", "tte.final_decode_step", "tte.merge_states", "tte.head")  # regions of generate_and_embed


def profile_single_pass(model, batch: dict, tokens: dict, device: torch.device) -> dict:
    """Seconds of one `generate_and_embed` call in each of its named regions (`PROFILED`, under torch.profiler: CPU
    time, or device time on CUDA), the whole call, and the rest (the capture hooks' appends, ECR bookkeeping)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler, torch.profiler.record_function("tte.single_pass"):
        model.generate_and_embed(**batch, **tokens)
        _sync(device)
    field_name = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    totals = {event.key: getattr(event, field_name) / 1e6 for event in profiler.key_averages()}
    regions = {name.removeprefix("tte."): totals.get(name, 0.0) for name in PROFILED}
    whole = totals["tte.single_pass"] or sum(regions.values())
    return {**regions, "total": whole, "rest": max(0.0, whole - sum(regions.values()))}


def bench_think_and_embed(path: str, processor, args, device, dtype, clock) -> list[dict]:
    """Per head: generate only, single pass and two pass, on one left-padded batch of `args.batch` prompts (the
    warm-up round generates `WARMUP_TOKENS`); with `args.profile`, where one single pass spends its time."""
    rows = reasoner_rows(args.batch, random.Random(args.seed))
    batch = processor.process_reasoner_inputs(rows, task_type="vqa").to(device)
    prompt_length = batch["input_ids"].shape[1]
    tokens = {"max_new_tokens": args.gen_tokens, "min_new_tokens": args.gen_tokens, "do_sample": False}
    short = {**tokens, "max_new_tokens": WARMUP_TOKENS, "min_new_tokens": WARMUP_TOKENS}
    records = []
    for head in args.head:
        model = TTEForEmbedding.from_backbone(path, mode="unified", head_type=head,
                                              num_head_layers=args.num_head_layers,
                                              **_load(args, dtype)).to(device).eval()
        eos = model.vlm.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos)
        pad = model.vlm.generation_config.pad_token_id
        pad = eos[0] if pad is None else pad

        def two_pass(settings, model=model, eos=eos, pad=pad):
            sequences = model.vlm.generate(**batch, **settings)
            ecr_ids, ecr_mask = ecr_from_generation(sequences[:, prompt_length:], eos, pad)
            mask = torch.cat([batch["attention_mask"], ecr_mask.to(batch["attention_mask"].dtype)], dim=1)
            inputs = two_pass_inputs(batch, TTEGenerationOutput(ecr_ids=ecr_ids, attention_mask=mask))
            return model(**inputs).embeddings

        def paths(settings, model=model):
            return {"generate": lambda: model.vlm.generate(**batch, **settings),
                    "single": lambda: model.generate_and_embed(**batch, **settings).embeddings,
                    "two_pass": lambda: two_pass(settings)}

        with torch.inference_mode():
            result = race(paths(tokens), args.repeats, device, clock, warmups=paths(short))
            profiled = {"profile": profile_single_pass(model, batch, tokens, device)} if args.profile else {}
        diff = (result["single"]["result"].float() - result["two_pass"]["result"].float()).abs().max().item()
        records.append({"head": head, "max_abs_diff": diff,
                        **{name: _throughput(len(rows), entry) for name, entry in result.items()},
                        "single/generate": ratio(result, "single", "generate"),
                        "two-pass/single": ratio(result, "two_pass", "single"), **profiled})
        del model
    return records


def padded_tokens(lengths: list[int], batch_size: int) -> dict:
    """Token positions the language model runs over (rows x padded length), batched in order (`naive`) and as the
    `Encoder` buckets them, and their ratio: what bucketing can save in the decoder at most (the vision tower
    runs unpadded either way)."""
    from train.batching import length_sorted_batches

    naive = sum(len(chunk) * max(chunk) for chunk in (lengths[i:i + batch_size]
                                                      for i in range(0, len(lengths), batch_size)))
    bucketed = sum(len(batch) * max(lengths[i] for i in batch) for batch in length_sorted_batches(lengths, batch_size))
    return {"rows": sum(lengths), "naive": naive, "bucketed": bucketed, "naive/bucketed": naive / bucketed}


def bench_encoding(path: str, processor, args, device, dtype, clock) -> dict:
    """Bucketed against naive fixed-order batching, on `args.encode_rows` mixed-length embedder rows."""
    model = TTEForEmbedding.from_backbone(path, **_load(args, dtype)).to(device).eval()
    rows = encoding_rows(args.encode_rows, processor.tokenizer, random.Random(args.seed))
    lengths = [processor.process_queries([row])["input_ids"].shape[1] for row in rows]
    runs = {"naive": Encoder(model, processor, batch_size=args.encode_batch, device=device, bucket=False),
            "bucketed": Encoder(model, processor, batch_size=args.encode_batch, device=device)}

    def encodings(subset):
        return {name: lambda encoder=encoder: encoder.encode(subset, "query") for name, encoder in runs.items()}

    result = race(encodings(rows), args.repeats, device, clock, warmups=encodings(rows[:args.encode_batch]))
    diff = (result["bucketed"]["result"] - result["naive"]["result"]).abs().max().item()
    return {"rows": len(rows), "min_tokens": min(lengths), "max_tokens": max(lengths), "max_abs_diff": diff,
            "padded_tokens": padded_tokens(lengths, args.encode_batch),
            **{name: _throughput(len(rows), entry) for name, entry in result.items()},
            "bucketed/naive": ratio(result, "naive", "bucketed")}


def bench_generation(path: str, processor, args, device, dtype, clock) -> dict:
    """`LocalBackend` with `args.gen_batch` rows per `generate` against one row at a time."""
    from transformers import AutoModelForImageTextToText

    vlm = AutoModelForImageTextToText.from_pretrained(path, **_load(args, dtype)).to(device)
    backend = LocalBackend(vlm, processor, max_new_tokens=args.gen_tokens, batch_size=args.gen_batch)
    backend.check()
    rows = reasoner_rows(args.gen_batch, random.Random(args.seed + 1))
    requests = [ECRRequest("bench", str(index), "query", row, "vqa") for index, row in enumerate(rows)]
    def generations(subset):
        return {"sequential": lambda: [backend.generate([request])[0] for request in subset],
                "batched": lambda: backend.generate(subset)}

    result = race(generations(requests), args.repeats, device, clock, warmups=generations(requests[:2]))
    texts = [[out.text for out in result[name]["result"]] for name in result]
    return {"rows": len(rows), "ecr_tokens": [out.num_tokens for out in result["batched"]["result"]],
            "same_texts": texts[0] == texts[1],
            **{name: _throughput(len(rows), entry) for name, entry in result.items()},
            "batched/sequential": ratio(result, "sequential", "batched")}


# ------------------------------------------------------------------------------------------------- reporting
def _line(name: str, ratio_name: str, ratio: float, baseline: dict, fast: dict, check: str) -> str:
    op, target = TARGETS[ratio_name]
    met = ratio <= target if op == "<=" else ratio >= target
    return (f"| {name} | {ratio_name} | **{ratio:.2f}** | {op} {target} {'yes' if met else 'NO'} | "
            f"{baseline['seconds']:.3f} / {fast['seconds']:.3f} | {baseline['rows_per_s']:.1f} / "
            f"{fast['rows_per_s']:.1f} | {baseline['peak_mib']:.0f} / {fast['peak_mib']:.0f} | {check} |")


def table(results: dict) -> str:
    """The results as a markdown table (baseline / fast path in the time, rows/s and memory columns)."""
    lines = ["| measurement | ratio | value | target | seconds (baseline / fast) | rows/s (baseline / fast) | "
             "peak MiB (baseline / fast) | check |", "|---|---|---|---|---|---|---|---|"]
    for record in results["think_and_embed"]:
        check = f"max diff {record['max_abs_diff']:.1e}"
        lines.append(_line(f"think-and-embed `{record['head']}`", "single/generate", record["single/generate"],
                           record["generate"], record["single"], check))
    for record in results["think_and_embed"]:
        lines.append(_line(f"think-and-embed `{record['head']}`", "two-pass/single", record["two-pass/single"],
                           record["two_pass"], record["single"], f"max diff {record['max_abs_diff']:.1e}"))
    if "encoding" in results:
        enc = results["encoding"]
        lines.append(_line(f"encoding {enc['rows']} rows ({enc['min_tokens']}-{enc['max_tokens']} tokens)",
                           "bucketed/naive", enc["bucketed/naive"], enc["naive"], enc["bucketed"],
                           f"max diff {enc['max_abs_diff']:.1e}; padded tokens naive/bucketed "
                           f"{enc['padded_tokens']['naive/bucketed']:.2f}"))
    if "generation" in results:
        gen = results["generation"]
        lines.append(_line(f"ECR generation, {gen['rows']} rows", "batched/sequential", gen["batched/sequential"],
                           gen["sequential"], gen["batched"], f"same ECR: {gen['same_texts']}"))
    return "\n".join(lines)


def profile_table(results: dict) -> str:
    """Where one single pass spends its time, per head (from `--profile`): each region's share of the profiled call
    (the profiler slows every op, so shares, not its seconds, are reported), the head's own work (final decode step,
    state merge, head) in seconds of the timed single pass, and the second pass it replaces (two pass minus
    generate only, best rounds). Two-pass/single can reach at most (generate + second pass) / (generate + own)."""
    regions = ("generate", "final_decode_step", "merge_states", "head", "rest")
    lines = ["| head | " + " | ".join(f"{name} %" for name in regions) + " | own work, s | second pass it replaces, "
             "s | own / second pass |", "|---|" + "---:|" * (len(regions) + 3)]
    for record in results["think_and_embed"]:
        p = record["profile"]
        own = (p["final_decode_step"] + p["merge_states"] + p["head"]) / p["total"] * record["single"]["seconds"]
        second = record["two_pass"]["seconds"] - record["generate"]["seconds"]
        lines.append(f"| `{record['head']}` | " + " | ".join(f"{100 * p[name] / p['total']:.1f}" for name in regions)
                     + f" | {own:.3f} | {second:.3f} | {own / second if second > 0 else float('nan'):.2f} |")
    return "\n".join(lines)


SHAPE = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vision_depth",
         "vision_width", "vision_heads", "vision_mlp_ratio", "patch_size")  # of the random backbone
RUN = ("batch", "gen_tokens", "encode_rows", "encode_batch", "gen_batch", "repeats")
PRESETS = {  # backbone shape and run sizes; options given on the command line win
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256, vision_depth=2,
                 vision_width=32, vision_heads=2, vision_mlp_ratio=2, patch_size=8, batch=8, gen_tokens=128,
                 encode_rows=64, encode_batch=8, gen_batch=16, repeats=5),
    # real proportions that run on a 2-core CPU: the head is a small share of a forward, as in a real checkpoint
    "mid": dict(hidden_size=768, num_layers=12, num_heads=6, num_kv_heads=2, intermediate_size=2816,
                vision_depth=4, vision_width=256, vision_heads=4, vision_mlp_ratio=4, patch_size=14, batch=4,
                gen_tokens=128, encode_rows=64, encode_batch=8, gen_batch=8, repeats=2),
    # the Qwen2-VL-2B shape (random weights, bf16): for a GPU
    "2b": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
               vision_depth=32, vision_width=1280, vision_heads=16, vision_mlp_ratio=4, patch_size=14, batch=8,
               gen_tokens=128, encode_rows=64, encode_batch=8, gen_batch=16, repeats=3, dtype="bfloat16"),
}
DRY_RUN = dict(batch=1, gen_tokens=2, encode_rows=1, encode_batch=1, gen_batch=1, repeats=0)


@dataclass
class BenchSpeedArguments:
    """Options of `python -m eval.bench_speed`; `None` sizes come from `--preset`."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "a backbone VLM checkpoint (hub id or folder); default: a random one of the preset's shape"})
    preset: str = field(default="tiny", metadata={
        "choices": list(PRESETS), "help": "tiny (smoke), mid (real proportions on a CPU), 2b (Qwen2-VL-2B shape)"})
    dry_run: bool = field(default=False, metadata={
        "help": "build the model and inputs and run each path once on one row (argument check, not a speed run)"})
    hidden_size: int | None = field(default=None, metadata={"help": "backbone width (without a model)"})
    num_layers: int | None = field(default=None, metadata={"help": "backbone depth (without a model)"})
    num_heads: int | None = field(default=None, metadata={"help": "attention heads (without a model)"})
    num_kv_heads: int | None = field(default=None, metadata={"help": "key/value heads (without a model)"})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (without a model)"})
    vision_depth: int | None = field(default=None, metadata={"help": "vision tower depth (without a model)"})
    vision_width: int | None = field(default=None, metadata={"help": "vision tower width (without a model)"})
    vision_heads: int | None = field(default=None, metadata={"help": "vision attention heads (without a model)"})
    vision_mlp_ratio: int | None = field(default=None, metadata={"help": "vision MLP ratio (without a model)"})
    patch_size: int | None = field(default=None, metadata={"help": "vision patch size (without a model)"})
    head: list[str] = field(default_factory=lambda: list(HEAD_TYPES), metadata={
        "choices": list(HEAD_TYPES), "help": "heads to time"})
    num_head_layers: int | None = field(default=None, metadata={
        "help": "self_init copied layers; default: the paper's 8 of 28 scaled to the depth (>= 1)"})
    batch: int | None = field(default=None, metadata={"help": "prompts per think-and-embed batch"})
    gen_tokens: int | None = field(default=None, metadata={"help": "generated tokens (forced) / ECR cap"})
    encode_rows: int | None = field(default=None, metadata={"help": "rows of the mixed-length encoding set"})
    encode_batch: int | None = field(default=None, metadata={"help": "rows per encoding forward"})
    gen_batch: int | None = field(default=None, metadata={"help": "rows per batched ECR generate"})
    skip: list[str] = field(default_factory=list, metadata={
        "choices": ["think_and_embed", "encoding", "generation"], "help": "benchmarks to leave out"})
    repeats: int | None = field(default=None, metadata={"help": "timed rounds (best counts), after one warm-up"})
    profile: bool = field(default=False, metadata={
        "help": "also profile one single pass per head (torch.profiler): generate, final step, merge, head"})
    clock: str = field(default="wall", metadata={
        "choices": ["wall", "process"],
        "help": "wall-clock time, or this process's CPU time (CPU only: steadier on a shared machine)"})
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu",
                        metadata={"help": "where the model runs"})
    dtype: str | None = field(default=None, metadata={
        "help": "model dtype (default: the preset's, else bfloat16 on CUDA and float32 on CPU)"})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "attention kernel of the backbone: sdpa, eager, flash_attention_2 (default: transformers' choice)"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's own)"})
    seed: int = field(default=0, metadata={"help": "seed of the random model and the inputs"})
    json: str = field(default="bench_speed.json", metadata={"help": "where to write all numbers"})

    def __post_init__(self):
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.dry_run:
            for name, value in DRY_RUN.items():
                setattr(self, name, value)
        for name in SHAPE + RUN:
            if getattr(self, name) < (0 if name == "repeats" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")


def parse_args(argv=None) -> BenchSpeedArguments:
    from train.cli import parse

    return parse((BenchSpeedArguments,), "eval.bench_speed", __doc__, argv)[0]


def describe(args, depth: int, dtype: torch.dtype, device: torch.device) -> dict:
    """The settings and the machine, for the JSON record and the table's heading."""
    model = args.model_name_or_path or (f"random qwen2_vl, preset {args.preset} (hidden {args.hidden_size}, "
                                        f"{args.num_layers} layers, {args.num_heads} heads, MLP "
                                        f"{args.intermediate_size}; vision {args.vision_depth} x {args.vision_width})")
    settings = {**asdict(args), "model": model, "depth": depth, "dtype": str(dtype)}
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    heading = (f"{model} on {machine['device']} ({machine['torch_threads']} torch threads, {os.cpu_count()} cores), "
               f"{dtype}; self_init copies {args.num_head_layers} of {depth} layers; {args.gen_tokens} generated "
               f"tokens; think-and-embed batch {args.batch}; {args.repeats} paired rounds, {args.clock} clock"
               + ("; DRY RUN (one row, one untimed round each: not a speed measurement)" if args.dry_run else ""))
    return {"settings": settings, "machine": machine, "heading": heading}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "process" and device.type != "cpu":
        raise ValueError("--clock process measures CPU time: use it with --device cpu")
    clock = time.process_time if args.clock == "process" else time.perf_counter
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    benches = {"think_and_embed": bench_think_and_embed, "encoding": bench_encoding, "generation": bench_generation}
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model_name_or_path or tiny_model(scratch, args)
        processor = TTEProcessor.from_backbone(path)
        depth = AutoConfig.from_pretrained(path).get_text_config().num_hidden_layers
        args.num_head_layers = args.num_head_layers or max(1, round(depth * 8 / 28))
        results = {**describe(args, depth, dtype, device), "think_and_embed": []}
        for name, bench in benches.items():
            if name not in args.skip:
                results[name] = bench(path, processor, args, device, dtype, clock)
    print(results["heading"])
    print(table(results))
    if args.profile and results["think_and_embed"]:
        print("\nOne single pass per region (torch.profiler):")
        print(profile_table(results))
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()

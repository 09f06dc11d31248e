"""The main job: an offline, end-to-end Think-Then-Embed run that reproduces the paper's ablations in miniature.

    python -m eval.demo --output_dir runs/demo            # default run (about 21 minutes on a 2-core CPU, --jobs 2)
    python -m eval.demo --output_dir runs/demo-quick --quick   # about 40 seconds
    python -m eval.demo --output_dir runs/demo-seeds --seeds 0 1 2   # mean over seeds
    python -m eval.demo --output_dir runs/demo --ablations        # + joint training, ECR noise, head layers (25 min)
    python -m eval.demo --output_dir runs/demo --rl               # + the student trained further with GRPO

Every stage goes through the project's real code paths: a tiny Qwen2-VL written offline, the synthetic colour-card
benchmark (eval/synthetic) with its oracle teacher's ECR in an ECR store, a shared perception pretraining stage
(eval/synthetic/pretrain.py), student reasoners distilled with TRL's `SFTTrainer` (train.distill_reasoner),
student ECR written by the harness's generation seam (train.generate_ecr), embedders and unified heads trained
with the contrastive Trainer (train.train_embedder), and every variant scored by the MMEB harness (eval.harness).
Writes `results.json`, `results.md` and `results.png` (and `noise.png` with `--ablations`) under `--output_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from eval.demo_report import write_report
from eval.demo_stages import Stages
from eval.ecr import attach_ecr
from eval.harness import evaluate_model
from eval.mmeb import DataSource, load_task
from eval.synthetic.pretrain import write_pretraining
from eval.synthetic.tasks import TASKS
from eval.synthetic.write import train_dataset_name, write_benchmark
from eval.tasks import all_tasks
from processing_tte import answer_only, parse_ecr
from train.ecr_store import ECRRecord, ECRStore

logger = logging.getLogger(__name__)
HEADS = ("self_init", "qformer", "attention_pooler", "latent_attention", "last_token")  # the paper's order
PROMPTS = Path(__file__).parent / "synthetic" / "prompts.yaml"  # short reasoner prompts (see the file)


@dataclass
class DemoSettings:
    """Sizes and steps of a run; `QUICK` shrinks every stage for a smoke run."""

    num_train: int = 600
    num_test: int = 100
    pretrain_rows: int = 6000
    pretrain_steps: int = 600
    pretrain_lr: float = 1e-3
    hidden_size: int = 128
    num_layers: int = 2
    sft_steps: int = 800
    sft_batch: int = 16
    sft_lr: float = 1e-3  # 3e-3 (DEMO-FINDINGS, one task) plateaued at loss 0.58 on the six-task mix
    embed_steps: int = 200
    embed_batch: int = 32
    embed_lr: float = 1e-3
    head_steps: int = 500  # 200 left every head far from converged; at 3e-3 the longer runs fell apart
    head_lr: float = 1e-3
    rl_steps: int = 200  # --rl: GRPO steps on the SFT student (README: the settings tried)
    rl_batch: int = 32  # completions per step (rl_batch / rl_generations prompts)
    rl_generations: int = 16  # 8 gained less on seed 0
    rl_lr: float = 5e-5
    rl_beta: float = 0.1  # KL to the SFT student; at 0 the query-side training drifted its target-side ECR more
    rl_sides: tuple[str, ...] = ("query",)
    rl_temperature: float = 1.0  # sampling temperature of the GRPO generations
    rl_log_every: int = 5  # GRPO logging steps (the reward curve's points)
    rl_scale_rewards: str = "group"  # TRL's: advantages divided by the group's reward std ("none": not)
    joint_sft_weight: float = 1.0  # --ablations: weight of the ECR language-model loss in joint training
    temperature: float = 0.05
    max_new_tokens: int = 96
    heads: tuple[str, ...] = HEADS
    stage_seconds: dict = field(default_factory=dict)


@dataclass
class DemoArguments:
    """Options of `python -m eval.demo`."""

    output_dir: str = field(default="runs/demo", metadata={"help": "folder of the run and its report"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds to run (the report: their mean)"})
    quick: bool = field(default=False, metadata={"help": "a smoke run of every stage (about 40 seconds on 2 cores)"})
    ablations: bool = field(default=False, metadata={
        "help": "also joint training, the ECR-noise curve and the head-layer ablation (eval.demo_ablations)"})
    rl: bool = field(default=False, metadata={
        "help": "also the SFT student trained further with GRPO, the embedder as its reward (eval.demo_rl)"})
    jobs: int = field(default_factory=lambda: min(4, os.cpu_count() or 1), metadata={
        "help": "worker processes for the trainings that do not wait on each other (1: all in this process)"})


QUICK = dict(num_train=48, num_test=12, pretrain_rows=32, pretrain_steps=4, sft_steps=6, sft_batch=8, embed_steps=4,
             head_steps=4, embed_batch=8, max_new_tokens=24, rl_steps=2, rl_batch=8, rl_generations=4, rl_log_every=1)


def training_datasets(data: Path) -> list[dict]:
    return [{"name": train_dataset_name(name), "path": str(data / "train" / f"{name}.jsonl"),
             "task_type": task.task_type} for name, task in TASKS.items()]


def answer_only_store(teacher: Path, out: Path) -> Path:
    """The teacher's ECR reduced to its answer line: what an 'ECR without CoT' student learns to write."""
    store = ECRStore(out)
    if not len(store):
        store.add(ECRRecord(r.dataset, r.row_id, r.side, answer_only(r.ecr), r.answer, r.reasoner, r.prompt_hash)
                  for r in ECRStore(teacher))
    return out


def distill(backbone: Path, store: Path, datasets: list[dict], image_root: Path, out: Path, steps: int, lr: float,
            batch: int, seed: int, *extra: str) -> Path:
    """A student (or the pretrained backbone) trained by `train.distill_reasoner` (TRL `SFTTrainer`)."""
    from train.distill_reasoner import main as run

    if (out / "config.json").is_file():
        return out
    argv = ["--config", str(Path(__file__).parents[1] / "train" / "recipes" / "distill_tiny_cpu.yaml"),
            "--model_name_or_path", str(backbone), "--ecr_store", str(store), "--image_root", str(image_root),
            "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", str(batch),
            "--learning_rate", str(lr), "--seed", str(seed), "--logging_steps", "50", "--disable_tqdm", "true",
            "--prompts", str(PROMPTS), *extra, "--datasets", *[json.dumps(d) for d in datasets]]
    return run(argv)


def pretrain_backbone(backbone: Path, data: Path, out: Path, s: DemoSettings, seed: int) -> Path:
    """The shared perception stage (eval.synthetic.pretrain): the random backbone learns to caption scenes, vision
    tower included; every student, embedder and head of the run starts from it."""
    entry = write_pretraining(data, s.pretrain_rows, seed)
    return distill(backbone, data / "ecr-pretrain", [entry], data / "train", out, s.pretrain_steps, s.pretrain_lr,
                   s.sft_batch, seed, "--freeze_vision_tower", "false", "--sides", "query",
                   "--lr_scheduler_type", "constant_with_warmup")


def distill_student(backbone: Path, data: Path, store: Path, out: Path, s: DemoSettings, seed: int) -> Path:
    return distill(backbone, store, training_datasets(data), data / "train", out, s.sft_steps, s.sft_lr, s.sft_batch,
                   seed)


def synthetic_source(data: Path) -> DataSource:
    """The synthetic test tasks: `<task>.jsonl` files with media paths relative to the same folder."""
    return DataSource(data_root=data / "eval", mmeb_root=data / "eval")


def student_ecr(student: Path | None, data: Path, store: Path, s: DemoSettings, backend=None) -> dict[str, float]:
    """Generate the student's ECR (or `backend`'s) for every test query and candidate (the harness's generation
    seam) and return its answer accuracy per task against the oracle teacher."""
    from train.generate_ecr import LocalBackend

    backend = backend or LocalBackend(str(student), max_new_tokens=s.max_new_tokens, device="cpu", dtype="float32")
    teacher, students = ECRStore(data / "ecr-teacher"), ECRStore(store, part="student")
    accuracy = {}
    for spec in all_tasks("synthetic").values():
        task = load_task(spec, synthetic_source(data))
        attach_ecr(task, students, "full", backend=backend, batch_size=64)
        hits = [parse_ecr(q.row["ecr"]).answer == teacher.get(spec.name, q.row_id, "query").answer
                for q in task.queries]
        accuracy[spec.name] = sum(hits) / len(hits)
    return accuracy


def train_embedder(model: Path, data: Path, out: Path, s: DemoSettings, seed: int, ecr_mode: str,
                   mode: str = "embedder", head_type: str = "last_token", head_layer: int = -1,
                   *extra: str) -> Path:
    """An embedder (full fine-tune) or a unified head (on the frozen `model`) trained by `train.train_embedder` on
    the teacher's ECR; `extra` are more of its options (e.g. `--sft_loss_weight` for joint training)."""
    from train.train_embedder import main as train

    if (out / "config.json").is_file():
        return out
    copied = self_init_layers(s.num_layers)
    if mode == "unified" and head_type == "last_token":  # a head without parameters: the frozen reasoner as it is
        from modeling_tte import TTEForEmbedding
        from processing_tte import TTEProcessor

        TTEForEmbedding.from_backbone(str(model), mode=mode, head_type=head_type,
                                      head_layer=head_layer).save_pretrained(out)
        TTEProcessor.from_backbone(str(model)).save_pretrained(out)
        return out
    argv = ["--model_name_or_path", str(model), "--mode", mode, "--head_type", head_type,
            "--head_layer", str(head_layer), "--num_head_layers", str(copied), *extra,
            "--tuning", "head" if mode == "unified" else "full", "--dtype", "float32", "--ecr_mode", ecr_mode,
            "--datasets", *[json.dumps({"name": d["name"], "path": d["path"]}) for d in training_datasets(data)],
            "--image_root", str(data / "train"),
            "--ecr_store", str(data / "ecr-teacher"), "--output_dir", str(out), "--use_cpu", "true",
            "--per_device_train_batch_size", str(s.embed_batch),
            "--max_steps", str(s.head_steps if mode == "unified" else s.embed_steps),
            "--learning_rate", str(s.head_lr if mode == "unified" else s.embed_lr),
            "--loss_temperature", str(s.temperature),
            "--warmup_steps", "0.05", "--lr_scheduler_type", "cosine", "--homogeneous_batches", "true",
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", "50", "--seed", str(seed),
            "--disable_tqdm", "true"]
    train(argv)
    return out


def self_init_layers(depth: int) -> int:
    """Decoder layers the self_init head copies: the paper's 8 of 28, scaled to `depth` (at least one)."""
    return max(1, round(depth * 8 / 28))


def evaluate(model: Path, data: Path, out: Path, store: Path | None, ecr_mode: str) -> dict[str, float]:
    """Hit@1 per task of one variant, scored by the MMEB harness."""
    tasks = list(all_tasks("synthetic").values())
    scores = evaluate_model(model, tasks, out, ecr_mode=ecr_mode, batch_size=64, source=synthetic_source(data),
                            ecr_store=ECRStore(store) if store else None, cache_dir=out.parent / "embedding-cache")
    return {name: result["hit@1"] for name, result in scores.items()}


def variants(out: Path, data: Path, heads) -> list[tuple[str, Path, Path | None, str]]:
    """`(name, model, ECR store, ecr_mode)` of every evaluated variant."""
    rows = [("No ECR", out / "embed-none", None, "none"),
            ("TTE_t (teacher ECR)", out / "embed-full", data / "ecr-teacher", "full"),
            ("TTE_s (student ECR)", out / "embed-full", out / "ecr-student", "full"),
            ("Answer-only (student)", out / "embed-answer", out / "ecr-student-answer", "answer_only")]
    return rows + [(f"TTE_u {head}", out / f"unified-{head}", out / "ecr-student", "full") for head in heads]


def run_seed(out: Path, seed: int, s: DemoSettings, ablations: bool = False, rl: bool = False, jobs: int = 1) -> dict:
    """Every stage for one seed (a rerun skips finished stages' outputs), the independent trainings in `jobs` worker
    processes; returns scores and student accuracy."""
    with Stages(s.stage_seconds, jobs) as stage:
        return _run_seed(stage, out, seed, s, ablations, rl)


def _run_seed(stage: Stages, out: Path, seed: int, s: DemoSettings, ablations: bool, rl: bool) -> dict:
    from train.tiny_backbone import write_tiny_backbone

    data, backbone = out / "data", out / "backbone"
    if not (backbone / "config.json").is_file():
        stage("backbone", write_tiny_backbone, backbone, "qwen2_vl", seed=seed, hidden_size=s.hidden_size,
              num_layers=s.num_layers, vision_depth=2, vision_width=64)
    if not (data / "ecr-teacher").is_dir():
        stage("data + teacher ECR", write_benchmark, data, s.num_train, s.num_test, seed)
    teacher = data / "ecr-teacher"
    backbone = stage("perception pretraining", pretrain_backbone, backbone, data, out / "pretrained", s, seed)
    # everything below needs only the pretrained backbone and the students: submitted longest chain first
    student = stage.submit("student SFT", distill_student, backbone, data, teacher, out / "student", s, seed)
    short = answer_only_store(teacher, out / "ecr-teacher-answer")
    student_short = stage.submit("answer-only student SFT", distill_student, backbone, data, short,
                                 out / "student-answer", s, seed)
    heads = [stage.submit("TTE_u heads", train_embedder, student, data, out / f"unified-{head}", s, seed, "full",
                          mode="unified", head_type=head) for head in s.heads]
    accuracy = {"full": stage.submit("student ECR", student_ecr, student, data, out / "ecr-student", s),
                "answer_only": stage.submit("answer-only student ECR", student_ecr, student_short, data,
                                            out / "ecr-student-answer", s)}
    embedders = [stage.submit("embedders", train_embedder, backbone, data, out / f"embed-{name}", s, seed, ecr_mode)
                 for name, ecr_mode in (("none", "none"), ("full", "full"), ("answer", "answer_only"))]
    for future in (*heads, *embedders):
        future.result()
    student, accuracy = student.result(), {name: future.result() for name, future in accuracy.items()}
    scores = {}
    for name, model, store, ecr_mode in variants(out, data, s.heads):
        slug = name.split(" (")[0].replace(" ", "-").lower()
        scores[name] = stage("evaluation", evaluate, model, data, out / "eval" / slug, store, ecr_mode)
    if ablations:
        from eval.demo_ablations import run_ablations

        more, accuracy["joint"] = run_ablations(out, data, backbone, student, s, seed, stage)
        scores.update(more)
    result = {"seed": seed, "scores": scores, "student_answer_accuracy": accuracy}
    if rl:
        from eval.demo_rl import run_rl

        more, accuracy["rl"], result["rl_reward"] = run_rl(out, data, student, s, seed, stage)
        scores.update(more)
    return result


def main(argv=None) -> dict:
    from train.cli import parse

    (args,) = parse((DemoArguments,), "eval.demo", __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # 2 threads on 2 shared cores was several times slower (DEMO-FINDINGS)
    settings = replace(DemoSettings(), **QUICK) if args.quick else DemoSettings()
    out, start = Path(args.output_dir), time.perf_counter()
    runs = [run_seed(out / f"seed{seed}", seed, settings, args.ablations, args.rl, args.jobs) for seed in args.seeds]
    results = {"settings": {k: v for k, v in asdict(settings).items() if k != "stage_seconds"},
               "quick": args.quick, "ablations": args.ablations, "rl": args.rl, "runs": runs,
               "stage_seconds": settings.stage_seconds, "total_seconds": round(time.perf_counter() - start, 1),
               "machine": machine()}
    paths = write_report(out, results)
    print(paths["markdown"].read_text())
    return results


def machine() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


if __name__ == "__main__":
    main()

"""The demo's RL stage (`python -m eval.demo --rl`): the SFT student trained further with GRPO
(`train.rl_reasoner`), the TTE_t embedder frozen as its reward, then its ECR through the harness as the row
"TTE_s + RL" beside "TTE_s", and its answer accuracy per task beside the SFT student's.
"""

from __future__ import annotations

import json
from pathlib import Path

RL_VARIANT = "TTE_s + RL (GRPO student ECR)"


def rl_student(student: Path, embedder: Path, data: Path, out: Path, s, seed: int) -> Path:
    """The student after `s.rl_steps` GRPO steps on the synthetic training queries (a finished one is kept)."""
    from eval.demo import PROMPTS, training_datasets
    from train.rl_reasoner import main as run

    if (out / "config.json").is_file():
        return out
    argv = ["--model_name_or_path", str(student), "--embedder", str(embedder),
            "--ecr_store", str(data / "ecr-teacher"), "--image_root", str(data / "train"), "--output_dir", str(out),
            "--prompts", str(PROMPTS), "--reward_temperature", str(s.temperature), "--sides", *s.rl_sides,
            "--max_steps", str(s.rl_steps), "--per_device_train_batch_size", str(s.rl_batch),
            "--num_generations", str(s.rl_generations), "--max_completion_length", str(s.max_new_tokens),
            "--learning_rate", str(s.rl_lr), "--beta", str(s.rl_beta), "--temperature", str(s.rl_temperature),
            "--scale_rewards", s.rl_scale_rewards, "--lr_scheduler_type", "constant",
            "--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--gradient_checkpointing", "false",
            "--logging_steps", str(s.rl_log_every), "--save_strategy", "no", "--report_to", "none", "--seed", str(seed),
            "--disable_tqdm", "true", "--log_completions", "false",
            "--datasets", *[json.dumps(d) for d in training_datasets(data)]]
    return run(argv)


def reward_curve(folder: Path) -> list[tuple[int, float]]:
    """`(step, mean total reward)` of each logging step of an RL run (its `reward_log.json`)."""
    log = json.loads((folder / "reward_log.json").read_text())
    return [(entry["step"], entry["reward"]) for entry in log if "reward" in entry]


def run_rl(out: Path, data: Path, student: Path, s, seed: int, stage) -> tuple[dict, dict, list]:
    """GRPO, the RL student's ECR and its evaluation for one seed; returns `(scores, answer accuracy per task,
    reward curve)`."""
    from eval.demo import evaluate, student_ecr

    folder = stage("RL (GRPO)", rl_student, student, out / "embed-full", data, out / "student-rl", s, seed)
    accuracy = stage("RL student ECR", student_ecr, folder, data, out / "ecr-student-rl", s)
    scores = {RL_VARIANT: stage("evaluation", evaluate, out / "embed-full", data, out / "eval" / "tte_s-rl",
                                out / "ecr-student-rl", "full")}
    return scores, accuracy, reward_curve(folder)

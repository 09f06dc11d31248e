"""The demo's ablations (`python -m eval.demo --ablations`): the paper's Appendix B and its open question 3 as
measured rows, on the same seed folders as the core run.

1. **Joint training** (Appendix B): one backbone trained with InfoNCE plus the language-model loss of the teacher's
   ECR on the same sequences (`--sft_loss_weight`), then asked for its own ECR (with the row alone, the prompt it
   learnt to continue) and evaluated with it; against the two-stage TTE_s.
2. **ECR noise** (open question 3): the TTE_t embedder with teacher ECR whose answers are swapped for another answer
   of the same task at `NOISE_RATES`, and with a structurally different reasoner's ECR (the answer-only student's).
3. **Head layer**: the attention pooler and last-token heads reading the final layer versus the 8th-from-last
   scaled to the backbone's depth (the paper's self_init boundary).
"""

from __future__ import annotations

from pathlib import Path

from eval.ecr_noise import write_noisy_store
from eval.tasks import all_tasks
from prompts_tte import PromptRegistry
from train.ecr_store import ECRStore

NOISE_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)
LAYER_HEADS = ("attention_pooler", "last_token")


def noise_variant(rate: float) -> str:
    return f"TTE_t, {100 * rate:.0f}% wrong answers"


def layer_variant(head: str, layer: int) -> str:
    return f"TTE_u {head}, hidden state {layer}"


def plain_prompts() -> PromptRegistry:
    """Prompts that ask with the row alone, as the embedder sees it: what a jointly trained model continues."""
    names = [n for task in all_tasks("synthetic") for n in (task, f"{task}.train")]
    return PromptRegistry({"name": "embedder-prompt", "version": 1, "format": "",
                           "families": {"none": {"query": "", "target": ""}}, "datasets": dict.fromkeys(names, "none")})


def joint_backend(folder: Path, max_new_tokens: int):
    """A reasoner backend generating with a jointly trained embedder's own backbone."""
    from modeling_tte import TTEForEmbedding
    from processing_tte import TTEProcessor
    from train.generate_ecr import LocalBackend

    model = TTEForEmbedding.from_pretrained(folder)
    processor = TTEProcessor.from_pretrained(folder, prompts=plain_prompts())
    return LocalBackend(model.vlm, processor, name=f"joint:{folder}", max_new_tokens=max_new_tokens, device="cpu",
                        dtype="float32", prompts=processor.prompts)


def run_ablations(out: Path, data: Path, pretrained: Path, student: Path, s, seed: int, stage) -> tuple[dict, dict]:
    """Train and evaluate every ablation of one seed; returns `(scores per variant, joint model answer accuracy)`."""
    from eval.demo import evaluate, self_init_layers, student_ecr, train_embedder

    deep = -1 - self_init_layers(s.num_layers)  # the hidden state entering the layers self_init copies
    folders = {(head, layer): out / f"unified-{head}" if layer == -1 else out / f"unified-{head}-layer{layer}"
               for head in LAYER_HEADS for layer in (-1, deep)}
    # the trainings first (in the stage workers, side by side), then generation and evaluation here
    joint = stage.submit("joint SFT + InfoNCE", train_embedder, pretrained, data, out / "embed-joint", s, seed,
                         "full", "embedder", "last_token", -1, "--sft_loss_weight", str(s.joint_sft_weight))
    models = {key: stage.submit("TTE_u heads", train_embedder, student, data, folder, s, seed, "full", "unified",
                                key[0], key[1]) for key, folder in folders.items()}
    scores, joint = {}, joint.result()
    accuracy = stage("joint ECR", student_ecr, None, data, out / "ecr-joint", s,
                     backend=joint_backend(joint, s.max_new_tokens))
    scores["Joint SFT + InfoNCE (own ECR)"] = stage("evaluation", evaluate, joint, data, out / "eval" / "joint",
                                                    out / "ecr-joint", "full")
    tasks, teacher = list(all_tasks("synthetic")), ECRStore(data / "ecr-teacher")
    for rate in NOISE_RATES:
        store = write_noisy_store(teacher, out / f"ecr-noise-{rate:g}", rate, tasks, seed)
        scores[noise_variant(rate)] = stage("evaluation", evaluate, out / "embed-full", data,
                                            out / "eval" / f"noise-{rate:g}", store, "full")
    scores["TTE_t embedder, answer-only student ECR"] = stage(
        "evaluation", evaluate, out / "embed-full", data, out / "eval" / "full-with-answer-ecr",
        out / "ecr-student-answer", "full")
    for (head, layer), model in models.items():
        scores[layer_variant(head, layer)] = stage("evaluation", evaluate, model, data,
                                                   out / "eval" / f"{folders[head, layer].name}", out / "ecr-student",
                                                   "full")
    return scores, accuracy

"""Student reasoner distillation: TRL `SFTTrainer` teaches a small VLM to write the teacher's ECR.

Each training example is the reasoner prompt of a row (exactly what `train.generate_ecr` sends, without the teacher's
hint) and, as completion, the teacher's ECR from the ECR store; the loss covers only the completion. The vision
tower is frozen by default; full fine-tuning or LoRA (`--use_peft true`, merged into the weights at the end). The
output folder is a normal checkpoint: `LocalBackend(folder)` generates with it, and it can be pushed to the Hub.

Paper recipe (Qwen2-VL-2B student, full fine-tune, lr 2e-5, global batch 128, 1 epoch) on 8 GPUs:

    accelerate launch --num_processes 8 -m train.distill_reasoner --config train/recipes/distill_qwen2vl_2b.yaml \
        --ecr_store ecr/teacher --image_root /data/MMEB-train --output_dir runs/student-2b

Tiny CPU demo (a random tiny backbone; the store written by `train.generate_ecr` with `tiny_ecr.yaml`):

    python -m train.distill_reasoner --config train/recipes/distill_tiny_cpu.yaml --model_name_or_path /tmp/tiny \
        --ecr_store /tmp/ecr --datasets '{"name": "demo", "path": "demo.jsonl", "task_type": "vqa"}'
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from processing_tte import TTEProcessor, as_registry
from prompts_tte import REGISTRY_FILE
from train.ecr_store import ECRStore
from train.mmeb_data import MMEBPair, dataset_configs, load_mmeb_pairs

logger = logging.getLogger(__name__)

VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")


@dataclass
class DistillArguments:
    r"""
    Data and freezing options of `python -m train.distill_reasoner` (alongside TRL's `SFTConfig` and `ModelConfig`).

    Args:
        ecr_store (`str`): the teacher's ECR store.
        datasets (`list`): MMEB-format datasets (mappings in YAML, JSON objects or recipe files), as for
            `train.generate_ecr`; each row's query and target become examples when the store has their ECR.
        image_root (`str`, *optional*): folder the image paths are relative to.
        sides (`list[str]`, defaults to query and target): which sides' ECR to learn.
        teacher (`str`, *optional*): use only records written by this reasoner (default: any).
        freeze_vision_tower (`bool`, defaults to `True`): keep the vision tower (and its merger) fixed.
        merge_lora (`bool`, defaults to `True`): with LoRA, save the merged weights (a plain checkpoint).
        prompts (`str`, *optional*): a reasoner prompt registry file read over the shipped one
            (`prompts_tte.PromptRegistry`); the student learns each dataset's prompt from it, and it is saved with
            the student (`reasoner_prompts.yaml`), which `LocalBackend` then asks with.
    """

    ecr_store: str = field(metadata={"help": "the teacher's ECR store"})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "MMEB-format datasets: JSON objects or recipe files (mappings in YAML; MMEBDatasetConfig)"})
    image_root: str | None = field(default=None, metadata={"help": "image paths are relative to this folder"})
    sides: list[str] = field(default_factory=lambda: ["query", "target"], metadata={"help": "query and/or target"})
    teacher: str | None = field(default=None, metadata={"help": "only records by this reasoner"})
    freeze_vision_tower: bool = field(default=True, metadata={"help": "freeze the vision tower"})
    merge_lora: bool = field(default=True, metadata={"help": "merge LoRA weights into the saved checkpoint"})
    prompts: str | None = field(default=None, metadata={"help": "reasoner prompt registry YAML (default: shipped)"})

    def __post_init__(self):
        self.datasets = dataset_configs(self.datasets)
        if not self.datasets:
            raise ValueError("distill_reasoner needs at least one entry in `datasets`")
        if set(self.sides) - {"query", "target"} or not self.sides:
            raise ValueError(f"sides must be a non-empty subset of ['query', 'target'], got {self.sides}")


def vision_tower(model) -> tuple[str, object]:
    """The qualified name and module of a VLM's vision tower (`visual` in Qwen-VL, `vision_tower` in LLaVA...)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES:
            return name, module
    raise ValueError(f"{type(model).__name__} has no vision tower named one of {list(VISION_TOWER_NAMES)}")


def prompt_example(processor: TTEProcessor, pair: MMEBPair, side: str, task_type: str) -> dict:
    """The TRL prompt of one row's side: the generation prompt of its dataset and side (never the teacher's hint),
    with its image (`prompt` and `images` columns, as TRL's trainers read them)."""
    row, where = getattr(pair, side), f"{pair.dataset}/{pair.row_id}/{side}"
    if row.get("video") is not None:
        raise ValueError(f"{where}: video rows are not supported by reasoner distillation or RL (TRL collates images "
                         f"only)")
    messages, _ = processor.reasoner_messages(row, task_type, side, where=where, dataset=pair.dataset)
    content = [{"type": part["type"], "text": part.get("text")} for part in messages[0]["content"]]
    image = row.get("image")
    return {"prompt": [{"role": "user", "content": content}], "images": [image] if image is not None else []}


def _example(processor: TTEProcessor, pair: MMEBPair, side: str, task_type: str, ecr: str) -> dict:
    """One prompt-completion example: `prompt_example` and, as completion, the ECR."""
    return {**prompt_example(processor, pair, side, task_type),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": ecr}]}]}


def distillation_dataset(args: DistillArguments, processor: TTEProcessor):
    """A `datasets.Dataset` of prompt-completion examples (images decoded lazily) for rows with a teacher ECR."""
    from datasets import Dataset, Image, Sequence

    store, examples, missing = ECRStore(args.ecr_store), [], 0
    for config in args.datasets:
        for pair in load_mmeb_pairs(config, image_root=args.image_root):
            for side in args.sides:
                record = store.get(pair.dataset, pair.row_id, side, content=getattr(pair, side))
                if record is None or (args.teacher is not None and record.reasoner != args.teacher):
                    missing += 1
                    continue
                examples.append(_example(processor, pair, side, config.task_type, record.ecr))
    if missing:
        logger.warning(f"{missing} rows have no teacher ECR in {args.ecr_store} and are left out")
    if not examples:
        raise ValueError(f"no training example: the store {args.ecr_store} has no ECR for the given datasets/sides")
    return Dataset.from_list(examples).cast_column("images", Sequence(Image()))


def _peft_config(model_args, model, freeze_vision: bool):
    from trl import get_peft_config

    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    if peft_config.target_modules is None:
        peft_config.target_modules = "all-linear"
    if freeze_vision:
        peft_config.exclude_modules = rf"^{re.escape(vision_tower(model)[0])}\..*"
    return peft_config


def load_reasoner(model_args, freeze_vision_tower: bool):
    """The reasoner a TRL trainer trains, its processor and its LoRA config (`None` for full fine-tuning); the vision
    tower is frozen (left out of LoRA, or its weights fixed) when `freeze_vision_tower`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path,
                                                        dtype=model_args.dtype or "auto",
                                                        revision=model_args.model_revision)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    peft_config = _peft_config(model_args, model, freeze_vision_tower)
    if freeze_vision_tower and peft_config is None:
        vision_tower(model)[1].requires_grad_(False)
    return model, processor, peft_config


def build_trainer(args: DistillArguments, training_args, model_args):
    r"""
    A configured (not subclassed) TRL `SFTTrainer` for the student.

    Args:
        args (`DistillArguments`): data and freezing options.
        training_args (`trl.SFTConfig`): optimisation; `completion_only_loss` is forced on.
        model_args (`trl.ModelConfig`): the student checkpoint (`model_name_or_path`, `dtype`) and LoRA settings.
    """
    from trl import SFTTrainer

    if not model_args.model_name_or_path:
        raise ValueError("distill_reasoner needs --model_name_or_path (the student's base checkpoint)")
    training_args.completion_only_loss = True
    training_args.remove_unused_columns = False
    model, processor, peft_config = load_reasoner(model_args, args.freeze_vision_tower)
    dataset = distillation_dataset(args, TTEProcessor.from_backbone(model_args.model_name_or_path,
                                                                    prompts=args.prompts))
    return SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=processor,
                      peft_config=peft_config)


def save_student(trainer, output_dir: str | None = None, merge_lora: bool = True, prompts=None) -> Path:
    """Save the student as a plain checkpoint (LoRA merged when `merge_lora`) with its processor and the prompt
    registry it learnt (`prompts`, default the shipped one); push it to the Hub when `push_to_hub` is set in the
    training arguments. Returns the folder."""
    output_dir = Path(output_dir or trainer.args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.is_world_process_zero():
        model.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
        as_registry(prompts).save(output_dir)
        if trainer.args.push_to_hub:
            from huggingface_hub import upload_file

            repo_id = trainer.args.hub_model_id or output_dir.name
            model.push_to_hub(repo_id, token=trainer.args.hub_token, private=trainer.args.hub_private_repo)
            trainer.processing_class.push_to_hub(repo_id, token=trainer.args.hub_token)
            upload_file(path_or_fileobj=str(output_dir / REGISTRY_FILE), path_in_repo=REGISTRY_FILE, repo_id=repo_id,
                        token=trainer.args.hub_token)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def main(argv: list[str] | None = None) -> Path:
    """Distil a student reasoner from a recipe; returns the saved checkpoint folder."""
    from trl import ModelConfig, SFTConfig

    from train.cli import parse

    args, training_args, model_args = parse((DistillArguments, SFTConfig, ModelConfig), "train.distill_reasoner",
                                            __doc__, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = build_trainer(args, training_args, model_args)
    trainer.train()
    output_dir = save_student(trainer, merge_lora=args.merge_lora, prompts=args.prompts)
    if trainer.is_world_process_zero():
        print(f"Student reasoner saved to {output_dir}; generate ECR with it: "
              f"python -m train.generate_ecr --model_name_or_path {output_dir} ...", flush=True)
    return output_dir


if __name__ == "__main__":
    main()

"""Train a Think-Then-Embed embedder (TTE_t / TTE_s) or a unified head (TTE_u) with InfoNCE on MMEB-train + ECR.

Tiny run on a CPU, offline (a toy MMEB-format set with ECR, a tiny Qwen2-VL):

    python -m train.tiny_backbone --output_dir runs/tiny-backbone
    python -m train.data --output_dir runs/toy-mmeb
    OMP_NUM_THREADS=1 python -m train.train_embedder --config train/recipes/embed_tiny_cpu.yaml

Paper recipe (Qwen2-VL-2B, LoRA r16/alpha64, tau 0.02, global batch 8192 with GradCache), 8 GPUs:

    accelerate launch --config_file train/recipes/accelerate/ddp.yaml -m train.train_embedder \\
        --config train/recipes/embed_qwen2vl_2b.yaml --image_root /data/MMEB-train --ecr_store runs/ecr-teacher

Every key of the `--config` YAML is a command-line option (model, data and `TTEContrastiveConfig` /
`TrainingArguments` fields); options given on the command line override the YAML. The YAML may also list the
training subsets inline under `datasets:` (see `train.data.DatasetSpec`), or name recipe files of them; on the
command line `--datasets` takes recipe files or JSON objects, as in `train.generate_ecr` and `train.distill_reasoner`.
The final model is written to `output_dir` as a self-contained TTE folder (LoRA merged, with a model card naming the
training settings and data) that loads with `AutoModel.from_pretrained(output_dir, trust_remote_code=True)`;
`--push_to_hub true --hub_model_id me/model` uploads exactly that folder's files (not `checkpoint-*`, the adapter in
`lora_adapter/` or the untrained base in `lora_base/`, which the LoRA adapters name as their `base_model_name_or_path`:
`peft.AutoPeftModelForFeatureExtraction.from_pretrained(output_dir + "/lora_adapter", trust_remote_code=True)`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from transformers import set_seed
from transformers.utils import logging

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor

from .collators import TTEContrastiveCollator
from .data import load_mmeb_train, read_datasets
from .trainer import (
    TTEContrastiveConfig,
    TTEContrastiveTrainer,
    folder_state,
    prepare_model_for_training,
    save_tte_checkpoint,
    upload_tte_folder,
    written_since,
)

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """What to train: the backbone, TTE mode and head, and how (LoRA, full, head only)."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Backbone VLM (hub id or folder)."})
    mode: str = field(default="embedder", metadata={"help": "'embedder' (TTE_t/TTE_s) or 'unified' (TTE_u)."})
    head_type: str = field(default="last_token", metadata={"help": "Head of a unified model, e.g. 'self_init'."})
    num_head_layers: int = field(default=8, metadata={"help": "Decoder layers copied by the self_init head."})
    head_layer: int = field(default=-1, metadata={
        "help": "Hidden state the last_token / attention_pooler / latent_attention head reads (-1: the final one)."})
    tuning: str | None = field(default=None, metadata={"help": "'lora' (embedder default), 'full', 'head'."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(default=None, metadata={"help": "LoRA target regex (default: LM)."})
    dtype: str | None = field(default=None, metadata={"help": "Backbone dtype, e.g. 'bfloat16' or 'float32'."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. 'sdpa', 'flash_attention_2'."})
    ecr_mode: str = field(default="full", metadata={"help": "'full', 'answer_only' or 'none' (no ECR)."})
    max_ecr_tokens: int = field(default=512, metadata={"help": "Longest ECR fed to the embedder, in tokens."})


@dataclass
class DataArguments:
    """Where the training rows, their images and their ECR are."""

    datasets: list[str] = field(default_factory=list, metadata={
        "help": "Training subsets: JSON objects or recipe files (train.data.read_datasets); YAML: a list or a file."})
    image_root: str | None = field(default=None, metadata={"help": "Folder that image paths are relative to."})
    ecr_store: str | None = field(default=None, metadata={"help": "ECR store folder (None: no ECR lookups)."})
    on_missing_ecr: str = field(default="error", metadata={"help": "'error' or 'no_ecr' (warn, count)."})
    ecr_dropout: float = field(default=0.0, metadata={
        "help": "Fraction of sides embedded without their ECR (one model for thinking and not thinking)."})

    def __post_init__(self):
        if isinstance(self.datasets, (str, dict)):  # one recipe file or mapping given in the YAML
            self.datasets = [self.datasets]


def parse_args(argv=None) -> tuple[ModelArguments, DataArguments, TTEContrastiveConfig, list]:
    """`(model_args, data_args, training_args, dataset_specs)` from `--config` YAML and command-line overrides."""
    from .cli import parse

    model_args, data_args, training_args = parse((ModelArguments, DataArguments, TTEContrastiveConfig),
                                                 "train.train_embedder", __doc__, argv)
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (in the --config YAML or on the command line)")
    if not data_args.datasets:
        raise ValueError("no training data: list subsets under 'datasets:' in the --config YAML or pass --datasets")
    return model_args, data_args, training_args, read_datasets(data_args.datasets)


def build_model(args: ModelArguments, loss_temperature: float | None = None):
    """The `TTEForEmbedding` to train (not yet wrapped for LoRA); its config states `loss_temperature`, the
    temperature it is trained at, when given."""
    backbone_kwargs = {k: getattr(args, k) for k in ("dtype", "attn_implementation") if getattr(args, k)}
    tte_kwargs = {"mode": args.mode, "head_type": args.head_type, "num_head_layers": args.num_head_layers,
                  "head_layer": args.head_layer, "max_ecr_tokens": args.max_ecr_tokens}
    if loss_temperature:
        tte_kwargs["loss_temperature"] = loss_temperature
    return TTEForEmbedding.from_backbone(args.model_name_or_path, **tte_kwargs, **backbone_kwargs)


def resolved_tuning(args: ModelArguments) -> str:
    """What trains: `args.tuning`, else LoRA for an embedder and the head for a unified model."""
    return args.tuning or ("head" if args.mode == "unified" else "lora")


def save_lora_base(trainer: TTEContrastiveTrainer, processor, model_args: ModelArguments) -> Path:
    """Save the untrained TTE model (freshly built, on the main process) to `output_dir/lora_base` and make it the
    trained model's `name_or_path`, which peft records as the `base_model_name_or_path` of every adapter saved
    (checkpoints and `lora_adapter`), so that `AutoPeftModelForFeatureExtraction` rebuilds the model with `AutoModel`
    from that folder's `auto_map`. Runs after the Trainer's up-front data checks, so bad data writes nothing."""
    args = trainer.args
    base = (Path(args.output_dir) / "lora_base").resolve()
    with args.main_process_first(desc="saving the LoRA base model"):
        if args.should_save:
            build_model(model_args, args.loss_temperature).save_pretrained(base)
            processor.save_pretrained(base)
    trainer.model.get_base_model().name_or_path = str(base)
    return base


def training_card(model: TTEForEmbedding, model_args: ModelArguments, data_args: DataArguments,
                  training_args: TTEContrastiveConfig, specs: list, num_rows: int) -> str:
    """The model card of the trained folder: the model's own card, then the training settings and data."""
    settings = {"backbone": model_args.model_name_or_path, "mode": model_args.mode, "head_type": model_args.head_type,
                "tuning": resolved_tuning(model_args), "ecr_mode": model_args.ecr_mode,
                "max_ecr_tokens": model_args.max_ecr_tokens}
    if settings["tuning"] == "lora":
        settings.update(lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                        lora_dropout=model_args.lora_dropout,
                        lora_target_modules=model_args.lora_target_modules or "language model linear layers")
    arguments = training_args.to_dict()  # plain values (enums as strings)
    for name in ("loss_temperature", "symmetric_loss", "cross_device_negatives", "gradcache_chunk_size",
                 "homogeneous_batches", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps", "seed"):
        settings[name] = arguments[name]
    settings["loss_temperature"] = settings["loss_temperature"] or model.config.loss_temperature
    settings["world_size"] = training_args.world_size
    data = {"datasets": [asdict(spec) for spec in specs], "rows": num_rows, "image_root": data_args.image_root,
            "ecr_store": data_args.ecr_store, "on_missing_ecr": data_args.on_missing_ecr}
    card = model.model_card().replace("---\n", f"---\nbase_model: {model_args.model_name_or_path}\n", 1)
    return (f"{card}\n## Training\n\nTrained with `python -m train.train_embedder` (InfoNCE):\n\n```yaml\n"
            f"{yaml.safe_dump(settings, sort_keys=False)}```\n\n## Training data\n\n```yaml\n"
            f"{yaml.safe_dump(data, sort_keys=False)}```\n")


def export_final(trainer: TTEContrastiveTrainer, processor, model_args: ModelArguments, card: str | None = None) \
        -> Path:
    """Write the final self-contained TTE folder to `output_dir` and, with `--push_to_hub`, upload exactly the files
    written (weights, config, remote code, processor, `card` as README.md). `Trainer.save_model` gathers the weights
    however the run was sharded (DDP, FSDP, DeepSpeed); a LoRA adapter is then merged into a freshly built backbone on
    the main process."""
    args = trainer.args
    output_dir = Path(args.output_dir)
    from peft import PeftModel

    before = folder_state(output_dir)
    if not isinstance(trainer.model, PeftModel):
        trainer.save_model(str(output_dir))  # weights, config with auto_map, *_tte.py and the processor
        if trainer.is_world_process_zero() and card is not None:
            (output_dir / "README.md").write_text(card, encoding="utf-8")
        files = [name for name in written_since(output_dir, before) if name != "training_args.bin"]
    else:
        trainer.save_model(str(output_dir / "lora_adapter"))
        if trainer.is_world_process_zero():
            merged = PeftModel.from_pretrained(build_model(model_args, args.loss_temperature),
                                               str(output_dir / "lora_adapter"))
            _, files = save_tte_checkpoint(merged, processor, output_dir, card=card)
    trainer.accelerator.wait_for_everyone()
    if args.push_to_hub and trainer.is_world_process_zero():
        upload_tte_folder(output_dir, files, args.hub_model_id or output_dir.resolve().name, token=args.hub_token,
                          private=args.hub_private_repo, revision=args.hub_revision)
    return output_dir


def main(argv=None) -> TTEContrastiveTrainer:
    model_args, data_args, training_args, specs = parse_args(argv)
    set_seed(training_args.seed)
    processor = TTEProcessor.from_backbone(model_args.model_name_or_path, ecr_mode=model_args.ecr_mode,
                                           max_ecr_tokens=model_args.max_ecr_tokens)
    model = build_model(model_args, training_args.loss_temperature)
    model = prepare_model_for_training(model, model_args.tuning, lora_r=model_args.lora_r,
                                       lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                                       lora_target_modules=model_args.lora_target_modules)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    with training_args.main_process_first(desc="loading MMEB-train"):
        train_dataset = load_mmeb_train(specs, image_root=data_args.image_root, seed=seed)
    collator = TTEContrastiveCollator(processor, ecr_store=data_args.ecr_store,
                                      on_missing_ecr=data_args.on_missing_ecr,
                                      ecr_dropout=data_args.ecr_dropout, ecr_dropout_seed=training_args.seed,
                                      ecr_token_counts=training_args.sft_loss_weight > 0)
    trainer = TTEContrastiveTrainer(model=model, args=training_args, train_dataset=train_dataset,
                                    data_collator=collator, processing_class=processor)
    if resolved_tuning(model_args) == "lora":
        save_lora_base(trainer, processor, model_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    card = training_card(trainer.accelerator.unwrap_model(trainer.model), model_args, data_args, training_args,
                         specs, len(train_dataset))
    output_dir = export_final(trainer, processor, model_args, card)
    if collator.missing_ecr:
        logger.warning(f"{collator.missing_ecr} sides were embedded without ECR (on_missing_ecr='no_ecr')")
    if trainer.is_world_process_zero():
        print(f"saved the TTE model to {output_dir}")
    return trainer


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

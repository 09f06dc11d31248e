"""Contrastive training of TTE embedders (TTE_t / TTE_s) and unified heads (TTE_u) with the HF `Trainer`.

`TTEContrastiveTrainer` overrides `compute_loss` (InfoNCE with cross-device negatives, optionally through GradCache),
`prediction_step` (loss only) and `_get_train_sampler` (homogeneous sub-batches); the training loop, optimiser,
scheduler, checkpointing, logging and `accelerate` integration are the stock `Trainer`'s.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import has_length
from transformers.utils import logging

from .collators import check_media_paths
from .data import HomogeneousSampler, dataset_names_of
from .gradcache import RandomState, split_batch
from .losses import InfoNCELoss, ecr_nll

logger = logging.get_logger(__name__)

TUNING_MODES = ("lora", "full", "head")
# LoRA on every linear layer of the language model (not the vision tower), the VLM2Vec / TTE setting.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
SIDE_ORDER = ("query", "target", "negative")


@dataclass
class TTEContrastiveConfig(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`TTEContrastiveTrainer`]. Defaults differ from `TrainingArguments` in
    `remove_unused_columns=False` (the collator needs the raw rows), `dataloader_drop_last=True` (equal shards on
    every rank, which cross-device negatives need) and `ddp_broadcast_buffers=False` (the model has no trained
    buffers, and ranks may run different numbers of forward passes, e.g. when only some have hard negatives).

    Args:
        loss_temperature (`float`, *optional*):
            InfoNCE temperature; defaults to the model's `config.loss_temperature` (0.02).
        symmetric_loss (`bool`, *optional*, defaults to `False`):
            Add the target->query direction. The paper trains query->target only.
        cross_device_negatives (`bool`, *optional*, defaults to `True`):
            Gather embeddings from all ranks so every query sees the global batch as negatives.
        gradcache_chunk_size (`int`, *optional*):
            Rows per GradCache chunk. `None` (default) runs a plain step over the whole per-device batch.
        homogeneous_batches (`bool`, *optional*, defaults to `True`):
            Sample blocks of `sub_batch_size` consecutive rows from one source dataset (the rows' `dataset` field).
        sub_batch_size (`int`, *optional*):
            Rows per homogeneous block; defaults to `per_device_train_batch_size`.
        sft_loss_weight (`float`, *optional*, defaults to 0):
            Joint training (the paper's Appendix B ablation): add this weight times the language-model loss (mean
            next-token NLL) of the ECR tokens of the same query and target sequences the embeddings are taken from,
            so one backbone learns to write the ECR and to embed. 0 is the two-stage recipe (a separate reasoner).
            Needs an embedder-mode model with a trainable backbone and a collator with `ecr_token_counts=True`.
        contrastive_loss_weight (`float`, *optional*, defaults to 1):
            Weight of the InfoNCE loss in joint training.
        check_media_paths (`bool`, *optional*, defaults to `True`):
            Before training, check (one `stat` per distinct path) that every image path of the training rows is a
            file, so a missing file or a directory fails up front, naming the dataset, row and path.
    """

    loss_temperature: float | None = field(default=None, metadata={"help": "InfoNCE temperature (model default)."})
    symmetric_loss: bool = field(default=False, metadata={"help": "Also use the target->query direction."})
    cross_device_negatives: bool = field(default=True, metadata={"help": "Negatives from all ranks."})
    gradcache_chunk_size: int | None = field(default=None, metadata={"help": "GradCache rows per chunk."})
    homogeneous_batches: bool = field(default=True, metadata={"help": "One source dataset per sub-batch."})
    sub_batch_size: int | None = field(default=None, metadata={"help": "Rows per homogeneous sub-batch."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False for the collator."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Equal batches on every rank."})
    ddp_broadcast_buffers: bool | None = field(default=False, metadata={"help": "DDP buffer broadcast per forward."})
    sft_loss_weight: float = field(default=0.0, metadata={"help": "Joint training: weight of the ECR LM loss."})
    contrastive_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the InfoNCE loss."})
    check_media_paths: bool = field(default=True, metadata={"help": "Check the training image paths up front."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TTEContrastiveConfig.{name} must be a positive integer, got {value!r}")
        for name in ("loss_temperature", "gradcache_chunk_size", "sub_batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"TTEContrastiveConfig.{name} must be positive, got {value!r}")
        for name in ("sft_loss_weight", "contrastive_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"TTEContrastiveConfig.{name} must be a number >= 0, got {value!r}")
        if self.sft_loss_weight == 0 and self.contrastive_loss_weight == 0:
            raise ValueError("TTEContrastiveConfig: sft_loss_weight and contrastive_loss_weight are both 0")
        if self.remove_unused_columns:
            raise ValueError("TTEContrastiveConfig.remove_unused_columns must be False: the contrastive collator "
                             "reads the raw row fields")


def prepare_model_for_training(model: nn.Module, tuning: str | None = None, lora_r: int = 16, lora_alpha: int = 64,
                               lora_dropout: float = 0.05, lora_target_modules: str | list[str] | None = None):
    """
    Set up what trains. Embedder mode: `"lora"` (default; r=16, alpha=64 on the language model's linear layers, via
    `peft`) or `"full"`. Unified mode: `"head"` only, the backbone stays frozen (and runs under `no_grad`).

    Returns:
        The model to train: a `peft.PeftModel` for LoRA, the `TTEForEmbedding` itself otherwise.
    """
    mode = model.config.mode
    tuning = tuning or ("head" if mode == "unified" else "lora")
    if tuning not in TUNING_MODES:
        raise ValueError(f"tuning must be one of {list(TUNING_MODES)}, got {tuning!r}")
    if mode == "unified":
        if tuning != "head":
            raise ValueError(f"unified mode trains only the head (tuning='head'), got tuning={tuning!r}")
        model.vlm.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"nothing to train: the {model.config.head_type!r} head has no parameters (set "
                             f"output_dim for a trainable projection, or evaluate the frozen model as it is)")
        return model
    if tuning == "head":
        raise ValueError("tuning='head' needs mode='unified'; embedder mode trains the backbone ('lora' or 'full')")
    if tuning == "full":
        return model.requires_grad_(True)
    from peft import LoraConfig, get_peft_model

    # a task type makes peft record no `auto_mapping` (the class's module, for remote code a hashed
    # `transformers_modules...` name that `AutoPeftModel` refuses without an allow-list) and makes
    # `AutoPeftModelForFeatureExtraction` load the base with `AutoModel`, which finds TTE through its `auto_map`
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, task_type="FEATURE_EXTRACTION",
                        target_modules=lora_target_modules or DEFAULT_LORA_TARGETS,
                        modules_to_save=["projection"] if getattr(model, "projection", None) is not None else None)
    return get_peft_model(model, config)


def export_model(model: nn.Module) -> nn.Module:
    """The plain `TTEForEmbedding` to save: LoRA weights merged into the backbone (in place) for a `PeftModel`."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def folder_state(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """`{relative path: (mtime_ns, size)}` of every file under `folder`, to tell later which files were written."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in folder.rglob("*") if path.is_file()}


def save_tte_checkpoint(model: nn.Module, processor, output_dir: str | os.PathLike, push_to_hub: str | None = None,
                        card: str | None = None, **hub_kwargs) -> tuple[nn.Module, list[str]]:
    """
    Save a self-contained TTE folder (weights, `config.json` with `auto_map`, the `*_tte.py` remote code, the processor
    and a model card) that loads with `AutoModel.from_pretrained(folder, trust_remote_code=True)`; LoRA is merged
    first. `card` replaces the model's own card (`README.md`). `push_to_hub` (a repo id) uploads exactly the files
    written here (see [`upload_tte_folder`]; `hub_kwargs`: `token`, `private`, `revision`, `commit_message`).

    Returns:
        `(model, files)`: the saved (merged) model and the folder's files this call wrote, relative to `output_dir`
        (other files already there, e.g. `checkpoint-*` folders, are not part of the model).
    """
    folder = Path(output_dir)
    before = folder_state(folder)
    model = export_model(model)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if card is not None:
        (folder / "README.md").write_text(card, encoding="utf-8")
    files = written_since(folder, before)
    if push_to_hub:
        upload_tte_folder(folder, files, push_to_hub, **hub_kwargs)
    return model, files


def written_since(folder: str | os.PathLike, before: dict[str, tuple[int, int]]) -> list[str]:
    """The files under `folder` (relative paths) that are new or changed since `before = folder_state(folder)`."""
    return sorted(name for name, state in folder_state(folder).items() if before.get(name) != state)


def upload_tte_folder(folder: str | os.PathLike, files: list[str], repo_id: str, token: str | None = None,
                      private: bool | None = None, revision: str | None = None,
                      commit_message: str = "Think-Then-Embed model"):
    """
    Upload `files` (paths relative to `folder`, e.g. those [`save_tte_checkpoint`] wrote) to the model repo `repo_id`
    (created if needed) in one commit with `huggingface_hub.upload_folder`, and nothing else of `folder`.

    Returns:
        The `huggingface_hub.CommitInfo` of the commit.
    """
    from huggingface_hub import HfApi

    if not files:
        raise ValueError(f"nothing to upload from {folder}: no files given")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo, folder_path=str(folder), allow_patterns=list(files), revision=revision,
                             commit_message=commit_message)


class TTEContrastiveTrainer(Trainer):
    r"""
    A [`~transformers.Trainer`] for InfoNCE training of [`TTEForEmbedding`] on batches from
    [`~train.collators.TTEContrastiveCollator`] (`{"query": ..., "target": ..., "negative": ...}`).

    - Cross-device negatives: embeddings are gathered from all ranks, with gradient on the local shard.
    - GradCache (`args.gradcache_chunk_size`): the per-device batch is embedded in chunks without a graph, the loss
      and its gradient w.r.t. the embeddings are computed once, then each chunk is re-run with a graph and
      back-propagated. Under DDP all chunks but the last run inside `no_sync`; the last chunk's backward is the
      Trainer's own, which synchronises the gradients. Works on one device and on many. Under DDP without a chunk
      size, the step runs as GradCache with one chunk per side (DDP cannot back-propagate one loss through several
      forward passes of the wrapped model).
    - Homogeneous sub-batches (`args.homogeneous_batches`) via [`~train.data.HomogeneousSampler`].

    Args:
        loss_fn (`nn.Module`, *optional*): replaces the default [`~train.losses.InfoNCELoss`] built from `args`.
        Everything else as for [`~transformers.Trainer`] (`args` must be a [`TTEContrastiveConfig`]).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; the Trainer divides it for accumulation

    def __init__(self, *args, loss_fn: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, TTEContrastiveConfig):
            raise ValueError(f"TTEContrastiveTrainer needs TTEContrastiveConfig arguments, got "
                             f"{type(self.args).__name__}")
        if self.args.check_media_paths and self.train_dataset is not None and has_length(self.train_dataset):
            check_media_paths(self.train_dataset)
        temperature = self.args.loss_temperature or self.model.config.loss_temperature
        self.loss_fn = loss_fn or InfoNCELoss(temperature, symmetric=self.args.symmetric_loss,
                                              gather_across_devices=self.args.cross_device_negatives)
        if self.args.sft_loss_weight and self.model.config.mode != "embedder":
            raise ValueError(f"joint training (sft_loss_weight={self.args.sft_loss_weight}) trains the backbone to "
                             f"write the ECR: it needs mode='embedder', got mode={self.model.config.mode!r}")

    # ------------------------------------------------------------------ saving and the hub
    # `args.push_to_hub` is honoured by uploading the self-contained TTE folder once, at the end (`upload_tte_folder`,
    # from `train.train_embedder`). The Trainer's own pushes would upload what it writes to `output_dir`: a LoRA
    # adapter beside the merged weights (loaded on top of them by `AutoModel`) and the Trainer's model card.
    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Does nothing: the repo is created when the final TTE folder is uploaded."""

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Does nothing: checkpoints (adapters, optimiser state) are not uploaded, nor copied into `output_dir`."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """[`~transformers.Trainer.save_model`] (weights gathered however the run is sharded), without its push."""
        super().save_model(output_dir, _internal_call=True)

    def push_to_hub(self, *args, **kwargs):
        """Not the Trainer's push (a raw `output_dir` with an adapter and the Trainer's card): upload the final TTE
        folder with [`save_tte_checkpoint`] / [`upload_tte_folder`] (as `train.train_embedder --push_to_hub` does)."""
        raise NotImplementedError("TTEContrastiveTrainer does not push output_dir as the Trainer writes it: save the "
                                  "self-contained TTE folder with save_tte_checkpoint(..., push_to_hub=repo_id) (or "
                                  "train.train_embedder --push_to_hub true)")

    # ------------------------------------------------------------------ loss
    @staticmethod
    def _sides(inputs: dict) -> dict[str, dict]:
        missing = [side for side in ("query", "target") if side not in inputs]
        if missing:
            raise ValueError(f"TTEContrastiveTrainer batches need 'query' and 'target' model inputs (from "
                             f"TTEContrastiveCollator); missing {missing}, got keys {sorted(inputs)}")
        return {side: inputs[side] for side in SIDE_ORDER if inputs.get(side) is not None}

    def _loss(self, embeddings: dict[str, torch.Tensor], target_ids: torch.Tensor | None = None) -> torch.Tensor:
        if target_ids is None:
            return self.loss_fn(embeddings["query"], embeddings["target"], embeddings.get("negative"))
        return self.loss_fn(embeddings["query"], embeddings["target"], embeddings.get("negative"),
                            target_ids=target_ids)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """InfoNCE of the batch's queries against its (gathered) targets and negatives, plus, in joint training
        (`args.sft_loss_weight`), the language-model loss of the queries' and targets' ECR tokens; GradCache when
        `args.gradcache_chunk_size` is set and the model is training with gradients enabled."""
        sides = self._sides(inputs)
        chunk_size = self.args.gradcache_chunk_size
        if not chunk_size and isinstance(model, nn.parallel.DistributedDataParallel):
            # DDP cannot back-propagate one loss through several forward passes of the wrapped model (the sides use
            # different parameters, e.g. only queries have images): run GradCache with one chunk per side instead
            logger.warning_once("Under DDP the contrastive step runs as GradCache with one chunk per side (one "
                                "extra no-grad forward); set gradcache_chunk_size to choose the chunk size")
            chunk_size = max(batch["input_ids"].shape[0] for batch in sides.values())
        target_ids, lengths = inputs.get("target_ids"), self._ecr_lengths(inputs)
        if chunk_size and model.training and torch.is_grad_enabled():
            loss, embeddings = self._gradcache_loss(model, sides, chunk_size, target_ids, lengths)
        else:
            outputs = {side: model(**batch, output_hidden_states=bool(lengths)) for side, batch in sides.items()}
            embeddings = {side: output.embeddings for side, output in outputs.items()}
            loss = self.args.contrastive_loss_weight * self._loss(embeddings, target_ids)
            if lengths:
                parts = [self._nll(model, outputs[side], sides[side], lengths[side]) for side in lengths]
                loss = loss + self.args.sft_loss_weight * sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
        return (loss, embeddings) if return_outputs else loss

    def _ecr_lengths(self, inputs: dict) -> dict[str, torch.Tensor]:
        """Per side, the ECR token counts joint training takes the language-model loss on (`{}` when not joint)."""
        if not self.args.sft_loss_weight:
            return {}
        lengths = inputs.get("ecr_lengths")
        if lengths is None:
            raise ValueError("joint training (sft_loss_weight > 0) needs batches with 'ecr_lengths': use "
                             "TTEContrastiveCollator(..., ecr_token_counts=True)")
        return {side: lengths[side] for side in ("query", "target") if side in lengths}

    def _nll(self, model, output, batch: dict, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
        lm_head = self.accelerator.unwrap_model(model).get_output_embeddings()
        return ecr_nll(output.hidden_states[-1], lm_head, batch["input_ids"], batch["attention_mask"], lengths)

    def _split(self, model, batch: dict, chunk_size: int) -> list[dict]:
        vlm_config = self.accelerator.unwrap_model(model).config.vlm_config
        vision = getattr(vlm_config, "vision_config", None)
        return split_batch(batch, chunk_size, image_token_id=getattr(vlm_config, "image_token_id", None),
                           video_token_id=getattr(vlm_config, "video_token_id", None),
                           merge_size=getattr(vision, "spatial_merge_size", 2))

    def _gradcache_loss(self, model, sides: dict[str, dict], chunk_size: int, target_ids=None, lengths=None):
        """GradCache: returns the loss (its value) carrying the last chunk's graph, so the Trainer's backward of
        it completes the step (and, under DDP, synchronises the gradients accumulated under `no_sync`). In joint
        training each chunk's re-run also back-propagates its share of the ECR language-model loss."""
        jobs = []  # (side, chunk inputs, random state)
        cached: dict[str, list[torch.Tensor]] = {side: [] for side in sides}
        with torch.no_grad():
            for side, batch in sides.items():
                for chunk in self._split(model, batch, chunk_size):
                    state = RandomState()
                    cached[side].append(model(**chunk).embeddings)
                    jobs.append((side, chunk, state))
        leaves = {side: torch.cat(parts).detach().requires_grad_() for side, parts in cached.items()}
        loss = self._loss(leaves, target_ids)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
        loss = self.args.contrastive_loss_weight * loss.detach()
        lengths = lengths or {}
        tokens = max(sum(int(n.sum()) for n in lengths.values()), 1)
        offsets = dict.fromkeys(sides, 0)
        scale = self.current_gradient_accumulation_steps
        surrogate = None
        for index, (side, chunk, state) in enumerate(jobs):
            rows, start = chunk["input_ids"].shape[0], offsets[side]
            offsets[side] += rows
            last = index == len(jobs) - 1
            with (contextlib.nullcontext() if last else self.accelerator.no_sync(model)), state.replay():
                output = model(**chunk, output_hidden_states=side in lengths)
                surrogate = self.args.contrastive_loss_weight * (output.embeddings.float()
                                                                 * grads[side][start:start + rows]).sum()
                if side in lengths:
                    nll = self._nll(model, output, chunk, lengths[side][start:start + rows])[0]
                    surrogate = surrogate + self.args.sft_loss_weight * nll / tokens
                    loss = loss + self.args.sft_loss_weight * nll.detach() / tokens
                if not last:
                    self.accelerator.backward(surrogate / scale)
        # value == loss, gradient == the last chunk's cached-gradient product
        return loss + surrogate - surrogate.detach(), {k: v.detach() for k, v in leaves.items()}

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Evaluation: the contrastive loss only (no logits or labels)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ sampling
    def _get_train_sampler(self, train_dataset=None):
        """[`HomogeneousSampler`] when `args.homogeneous_batches`, else the stock sampler."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.homogeneous_batches or dataset is None or not has_length(dataset):
            return super()._get_train_sampler(train_dataset)
        size = self.args.sub_batch_size or self.args.per_device_train_batch_size
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return HomogeneousSampler(dataset_names_of(dataset), size, seed=seed)


__all__ = ["TTEContrastiveConfig", "TTEContrastiveTrainer", "export_model", "prepare_model_for_training",
           "folder_state", "save_tte_checkpoint", "upload_tte_folder", "written_since"]

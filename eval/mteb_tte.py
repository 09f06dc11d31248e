"""Evaluate a Think-Then-Embed model with `mteb` (MTEB / MIEB image tasks, and any text task).

`TTEMtebEncoder` implements mteb's encoder protocol (`mteb.models.models_protocols.EncoderProtocol`) on top of the
sentence-transformers module of `sentence_tte.py`, and `tte_model_meta` gives its `ModelMeta`. mteb passes no row
ids, so ECR cannot be looked up in an ECR store by (dataset, row id): it is written at encode time, by

- `reasoner=None`: nobody, rows are embedded without ECR (the baseline);
- `reasoner="self"`: a unified model's own backbone, in the same pass as the embedding (`generate_and_embed`);
- `reasoner=LocalBackend(...)` (or any `train.reasoner_backends.ReasonerBackend`): a separate reasoner; its ECR
  is cached by row content (`sentence_tte.row_key`), side and task type, so repeated rows are reasoned about once.

Example (offline, with a tiny random model; `python -m eval.quickstart --output_dir runs/quickstart` writes one):

```python
>>> import mteb
>>> from eval.mteb_tte import tte_model_meta
>>> meta = tte_model_meta("runs/quickstart/tte-model", reasoner=None)
>>> tasks = mteb.get_tasks(tasks=["CIFAR10"])  # or any MIEB task; mteb's mock tasks run offline
>>> results = mteb.evaluate(meta.load_model(device="cpu"), tasks, cache=mteb.ResultCache("runs/mteb"))
```
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType
from PIL import Image
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from configuration_tte import TTEConfig
from modeling_tte import TTEForEmbedding
from processing_tte import TASK_TYPES, TTEProcessor
from sentence_tte import TTESentenceModule, row_key
from train.reasoner_backends import ECRRequest, ReasonerBackend

# mteb decodes video with torchcodec (its "video" extra) and refuses a video model without it
MODALITIES = ["text", "image"] + (["video"] if importlib.util.find_spec("torchcodec") else [])
# mteb task type -> the TTE reasoner prompt for it (anything else reasons as retrieval)
TASK_TYPE_OF = {
    "ImageClassification": "classification", "ZeroShotClassification": "classification",
    "ImageMultilabelClassification": "classification", "Classification": "classification",
    "VisionCentricQA": "vqa", "Any2AnyMultiChoice": "vqa", "DocumentUnderstanding": "visual_document",
    "VideoClassification": "video", "VideoRetrieval": "video", "VideoClustering": "video",
}


def tte_task_type(task_type: str, modalities: list[str] | None = None) -> str:
    """The TTE reasoner task type (`processing_tte.TASK_TYPES`) for an mteb task type."""
    if task_type in TASK_TYPE_OF:
        return TASK_TYPE_OF[task_type]
    return "video" if modalities and "video" in modalities else "retrieval"


def _frames(video) -> list[Image.Image]:
    """PIL frames from a video as mteb batches hold it: a `(frames, channels, height, width)` uint8 tensor."""
    array = torch.as_tensor(video)
    if array.dim() != 4:
        raise ValueError(f"expected a video of shape (frames, channels, height, width), got {tuple(array.shape)}")
    return [Image.fromarray(frame.permute(1, 2, 0).to(torch.uint8).cpu().numpy()) for frame in array]


def batch_rows(batch: dict[str, Any], instruction: str | None = None) -> list[dict]:
    """TTE rows from one mteb batch (`text`, `image`, `video`, `instruction` columns); `instruction` is used for
    rows without their own."""
    if "audio" in batch:
        raise ValueError("TTE models take text, images and video; this mteb task has audio")
    size = len(next(iter(v for k, v in batch.items() if k in ("text", "image", "video"))))
    rows = []
    for index in range(size):
        row = {}
        if batch.get("text") is not None and batch["text"][index]:
            row["text"] = batch["text"][index]
        if batch.get("image") is not None:
            row["image"] = batch["image"][index]
        if batch.get("video") is not None:
            row["video"] = _frames(batch["video"][index])
        own = batch["instruction"][index] if batch.get("instruction") is not None else None
        if own or instruction:
            row["instruction"] = own or instruction
        rows.append(row)
    return rows


class TTEMtebEncoder(AbsEncoder):
    r"""
    A TTE model as an mteb encoder. Queries (`prompt_type=query`, or none) are embedded with
    `TTEProcessor.process_queries` and the task's instruction, documents with `process_targets`.

    Args:
        model_name (`str`): a saved TTE folder or hub id (ignored when `model` is given).
        revision (`str`, *optional*): its revision.
        device (`str`, *optional*): where to run (defaults to CUDA when available).
        model ([`TTEForEmbedding`], *optional*), processor ([`TTEProcessor`], *optional*): use these instead.
        reasoner (`None`, `"self"` or a `ReasonerBackend`, *optional*): who writes ECR (see the module docstring).
        task_type (`str`, *optional*): the reasoner prompt; by default derived from the mteb task type.
        batch_size (`int`, *optional*, defaults to 8): rows per model call.
        max_new_tokens (`int`, *optional*): ECR length cap when `reasoner="self"`.
        use_instructions (`bool`, *optional*, defaults to `True`): give queries the task's instruction.
        name (`str`, *optional*): the name mteb files results under ("org/model"; see `tte_model_meta`).
        trust_remote_code (`bool`, *optional*, defaults to `False`): lets the processor's tokenizer read the folder's
            TTE config (remote code) instead of asking.
        kwargs: for `TTEForEmbedding.from_pretrained` (`dtype`, `attn_implementation`, ...).
    """

    def __init__(self, model_name: str | None = None, revision: str | None = None, *, device: str | None = None,
                 model: TTEForEmbedding | None = None, processor: TTEProcessor | None = None,
                 reasoner: ReasonerBackend | str | None = None, task_type: str | None = None, batch_size: int = 8,
                 max_new_tokens: int | None = None, use_instructions: bool = True, name: str | None = None,
                 trust_remote_code: bool = False, **kwargs):
        if reasoner not in (None, "self") and not isinstance(reasoner, ReasonerBackend):
            raise ValueError(f"reasoner must be None, 'self' or a ReasonerBackend, got {reasoner!r}")
        if task_type is not None and task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {list(TASK_TYPES)}, got {task_type!r}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            model = TTEForEmbedding.from_pretrained(model_name, revision=revision, **kwargs).eval()
        processor = processor or TTEProcessor.from_pretrained(model_name or model.name_or_path, revision=revision,
                                                              trust_remote_code=trust_remote_code)
        if reasoner == "self" and model.config.mode != "unified":
            raise ValueError("reasoner='self' needs a unified TTE model (config.mode='unified')")
        self.model = SentenceTransformer(modules=[TTESentenceModule(model, processor)], device=device)
        self.reasoner, self.task_type, self.batch_size = reasoner, task_type, batch_size
        self.max_new_tokens, self.use_instructions = max_new_tokens, use_instructions
        self.ecr: dict[tuple[str, str, str], str] = {}  # (side, task type, row key) -> ECR from `reasoner`
        self._reasoner_checked = False
        name = name or _meta_name(model_name or str(model.name_or_path) or "tte")
        self.mteb_model_meta = model_meta_for(model.config, name, revision, use_instructions)

    @property
    def written_ecr(self) -> dict[str, str]:
        """ECR the unified model wrote while thinking (`reasoner="self"`), by row key."""
        return self.model[0].written_ecr

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type: PromptType | None = None,
               **kwargs) -> np.ndarray:
        """Embed every batch of `inputs` (an mteb `DataLoader[BatchedInput]`): an array `(rows, dim)`."""
        document = prompt_type == PromptType.document
        instruction = None
        if self.use_instructions and not document:
            instruction = self.get_task_instruction(task_metadata, prompt_type) or None
        task_type = self.task_type or tte_task_type(task_metadata.type, task_metadata.modalities)
        encode = self.model.encode_document if document else self.model.encode_query
        think = {"think": task_type, "max_new_tokens": self.max_new_tokens} if self.reasoner == "self" else {}
        chunks = []
        desc = f"{task_metadata.name} {'documents' if document else 'queries'}"
        total = len(inputs.dataset) if hasattr(inputs, "dataset") else None
        with tqdm(total=total, desc=desc, unit="row", disable=not kwargs.get("show_progress_bar", True)) as bar:
            for batch in inputs:
                rows = batch_rows(batch, instruction)
                if isinstance(self.reasoner, ReasonerBackend):
                    rows = self.attach_ecr(rows, task_metadata.name, "target" if document else "query", task_type)
                chunks.append(encode(rows, batch_size=self.batch_size, show_progress_bar=False, **think))
                bar.update(len(rows))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model.get_embedding_dimension()))

    def attach_ecr(self, rows: list[dict], dataset: str, side: str, task_type: str) -> list[dict]:
        """`rows` with the reasoner's ECR, generating it for rows (by content) it has not reasoned about yet."""
        keys = [(side, task_type, row_key(row)) for row in rows]
        todo = {key: row for key, row in zip(keys, rows, strict=True) if key not in self.ecr}
        if todo:
            if not self._reasoner_checked:
                self.reasoner.check()
                self._reasoner_checked = True
            requests = [ECRRequest(dataset=dataset, row_id=key[2], side=side, row=row, task_type=task_type)
                        for key, row in todo.items()]
            for key, request, output in zip(todo, requests, self.reasoner.generate(requests), strict=True):
                if output.error is not None:
                    raise RuntimeError(f"the reasoner failed on {request.where}: {output.error}")
                self.ecr[key] = output.text
        return [{**row, "ecr": self.ecr[key]} for key, row in zip(keys, rows, strict=True)]


def _meta_name(model_name: str) -> str:
    """mteb files results under "org/model": a hub id as is, a folder as `think-then-embed/<folder name>`."""
    local = os.path.isdir(model_name) or "/" not in model_name
    return f"think-then-embed/{Path(model_name).name}" if local else model_name


def model_meta_for(config: TTEConfig, name: str, revision: str | None = None, use_instructions: bool = True,
                   loader=None, loader_kwargs: dict | None = None) -> ModelMeta:
    """The `ModelMeta` of a TTE model with `config`, filed under `name`."""
    return ModelMeta(
        loader=loader, loader_kwargs=loader_kwargs or {}, name=name, revision=revision, release_date=None,
        languages=None, n_parameters=None, memory_usage_mb=None, max_tokens=None,
        embed_dim=config.output_dim or config.hidden_size, license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["PyTorch", "Sentence Transformers"],
        similarity_fn_name="cosine", use_instructions=use_instructions, training_datasets=None,
        modalities=MODALITIES, reference="https://arxiv.org/abs/2510.05014",
    )


def tte_model_meta(model_name: str, revision: str | None = None, name: str | None = None, **loader_kwargs) -> ModelMeta:
    """
    The `ModelMeta` of a saved TTE folder (or hub id) whose `load_model()` returns a [`TTEMtebEncoder`].

    Args:
        model_name (`str`): the folder or hub id.
        revision (`str`, *optional*): its revision.
        name (`str`, *optional*): the name results are filed under ("org/model"); defaults to `model_name` for a hub
            id and `think-then-embed/<folder name>` for a folder.
        loader_kwargs: for [`TTEMtebEncoder`] (`reasoner`, `task_type`, `batch_size`, `max_new_tokens`, ...).
    """
    config = TTEConfig.from_pretrained(model_name, revision=revision)
    return model_meta_for(config, name or _meta_name(model_name), revision,
                          loader_kwargs.get("use_instructions", True), _load_encoder,
                          {"model_name": model_name, **loader_kwargs})


def _load_encoder(name: str, revision: str | None = None, *, model_name: str, **kwargs) -> TTEMtebEncoder:
    """`ModelMeta.loader`: mteb calls it with the meta's name and revision; the encoder is filed under that name."""
    return TTEMtebEncoder(model_name, revision, name=name, **kwargs)


__all__ = ["TTEMtebEncoder", "batch_rows", "tte_model_meta", "tte_task_type"]

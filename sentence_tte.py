"""sentence-transformers input module for Think-Then-Embed: a saved TTE folder loads with
`SentenceTransformer(folder, trust_remote_code=True)`.

Hub remote code, shipped beside `modeling_tte.py` (which copies it and writes `modules.json`,
`config_sentence_transformers.json` and `sentence_tte_config.json` on `save_pretrained`). Imports only torch,
transformers, sentence-transformers, PIL and the sibling `modeling_tte` / `processing_tte`.

Example:

```python
>>> from sentence_transformers import SentenceTransformer
>>> model = SentenceTransformer("path/to/tte-folder", trust_remote_code=True)
>>> queries = model.encode_query([{"image": "photo.jpg", "instruction": "Find a caption.", "ecr": "Answer: a cat"}])
>>> documents = model.encode_document(["a cat on a mat", "a dog"])
>>> thought = model.encode_query(["what is red?"], think=True)  # unified model: write ECR and embed, one pass
>>> model[0].ecr_for("what is red?")
```
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from sentence_transformers.base.modality import is_image_url_or_path, is_message_dict, is_video_url_or_path
from sentence_transformers.base.modules.input_module import InputModule
from transformers.utils import logging

try:
    from .modeling_tte import TTEForEmbedding
    from .processing_tte import TASK_TYPES, TTEProcessor
except ImportError:  # imported as a top-level module (installed project, tests)
    from modeling_tte import TTEForEmbedding
    from processing_tte import TASK_TYPES, TTEProcessor

logger = logging.get_logger(__name__)

ROW_FIELDS = ("image", "video", "text", "instruction", "ecr")
GENERATION_KEY = "tte_generation"  # what `preprocess` tells `forward` about a thinking batch


def _digest(value: Any, update) -> None:
    """Feed a canonical byte form of a row field (text, PIL image, array, tensor, path, frame list) to `update`."""
    if isinstance(value, Image.Image):
        update(f"PIL:{value.mode}:{value.size}".encode())
        update(value.tobytes())
    elif isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
        _digest(value, update)
    elif isinstance(value, np.ndarray):
        update(f"array:{value.dtype}:{value.shape}".encode())
        update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (list, tuple)):
        update(f"list:{len(value)}".encode())
        for item in value:
            _digest(item, update)
    else:
        update(json.dumps(os.fspath(value) if isinstance(value, os.PathLike) else value).encode())


def row_key(row: Mapping) -> str:
    """A content key of a TTE row (its fields, media by their pixels or paths): equal rows have equal keys."""
    digest = hashlib.sha256()
    for name in ROW_FIELDS:
        if row.get(name) is not None:
            digest.update(name.encode())
            _digest(row[name], digest.update)
    return digest.hexdigest()[:32]


def _message_row(messages: Sequence[Mapping], where: str) -> dict:
    """A TTE row from chat messages: system -> `instruction`, user content -> `text`/`image`/`video`, assistant ->
    `ecr`."""
    row, texts = {}, []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if message["role"] in ("system", "assistant"):
            field = "instruction" if message["role"] == "system" else "ecr"
            row[field] = " ".join(part["text"] for part in parts if part.get("type") == "text")
            continue
        for part in parts:
            kind = part.get("type")
            if kind == "text":
                texts.append(part["text"])
            elif kind in ("image", "video"):
                if kind in row:
                    raise ValueError(f"{where}: a TTE row holds one {kind}, the messages hold more")
                row[kind] = part.get(kind, part.get("url", part.get("path")))
            else:
                raise ValueError(f"{where}: unsupported message content type {kind!r}")
    if texts:
        row["text"] = "\n".join(texts)
    return row


def to_row(item: Any, where: str) -> dict:
    """
    A `TTEProcessor` row from one sentence-transformers input: a dict of the processor's fields (`image`, `video`,
    `text`, `instruction`, `ecr`) as is; a string as `text` (or as `image` / `video` when it is a media URL or an
    existing file with a media extension, as sentence-transformers detects them); a PIL image or a 3D array/tensor
    as `image`; a 4D one or a list of frames as `video`; chat messages (system -> instruction, user -> text/media,
    assistant -> ECR).
    """
    if is_message_dict(item):
        return _message_row([item], where)
    if isinstance(item, list) and item and is_message_dict(item[0]):
        return _message_row(item, where)
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, str):
        if is_image_url_or_path(item):
            return {"image": item}
        return {"video": item} if is_video_url_or_path(item) else {"text": item}
    if isinstance(item, Image.Image):
        return {"image": item}
    if isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim in (3, 4):
        return {"image" if item.ndim == 3 else "video": item}
    if isinstance(item, (list, tuple)) and item and all(isinstance(frame, Image.Image) for frame in item):
        return {"video": list(item)}
    raise TypeError(f"{where}: expected a string, a PIL image, an array, a dict of {list(ROW_FIELDS)} or chat "
                    f"messages, got {type(item).__name__}")


class TTESentenceModule(InputModule):
    r"""
    A Think-Then-Embed model as a sentence-transformers input module: `preprocess` builds embedder inputs with
    `TTEProcessor.process_queries` (`encode_query`, `encode`) or `process_targets` (`encode_document`), and `forward`
    embeds them with `TTEForEmbedding`, setting `features["sentence_embedding"]`.

    With `think=True` (or a task type such as `think="vqa"`, see `processing_tte.TASK_TYPES`) a unified model writes
    each row's ECR with its own backbone and embeds prompt + ECR in the same pass
    (`TTEForEmbedding.generate_and_embed`): `features["ecr_ids"]` holds the ECR ids (so
    `encode(..., output_value=None)` returns them per row) and `ecr_for(row)` returns the ECR text written for a row.
    With `think="auto"` the model's think router (`TTEConfig.router_layer`) decides per row whether it thinks, in
    the same pass; a row it skips has an empty ECR (`ecr_for` returns `""`).

    Args:
        model ([`TTEForEmbedding`]): the embedding model.
        processor ([`TTEProcessor`]): its processor.
        think_task_type (`str`, *optional*, defaults to `"retrieval"`): the reasoner prompt `think=True` uses.
        max_new_tokens (`int`, *optional*): ECR length cap for thinking (defaults to `model.config.max_ecr_tokens`).
    """

    config_file_name = "sentence_tte_config.json"  # not `config.json`: that is TTE's model config
    config_keys = ["think_task_type", "max_new_tokens"]
    forward_kwargs = {"think", "max_new_tokens"}
    save_in_root = True

    def __init__(self, model: TTEForEmbedding, processor: TTEProcessor, think_task_type: str = "retrieval",
                 max_new_tokens: int | None = None):
        super().__init__()
        if think_task_type not in TASK_TYPES:
            raise ValueError(f"think_task_type must be one of {list(TASK_TYPES)}, got {think_task_type!r}")
        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.think_task_type, self.max_new_tokens = think_task_type, max_new_tokens
        self.written_ecr: dict[str, str] = {}

    @property
    def modalities(self) -> list:
        return ["text", "image", "video", "message"]

    def get_embedding_dimension(self) -> int:
        return self.model.config.output_dim or self.model.config.hidden_size

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             model_kwargs: dict | None = None, processor_kwargs: dict | None = None, **kwargs) -> TTESentenceModule:
        """Load the model, processor and module config saved in `model_name_or_path` (a folder or hub id)."""
        hub = dict(subfolder=subfolder, token=token, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, cache_folder=cache_folder, **hub)
        hub.update(cache_dir=cache_folder, trust_remote_code=kwargs.get("trust_remote_code", False))
        model = TTEForEmbedding.from_pretrained(model_name_or_path, **hub, **(model_kwargs or {})).eval()
        processor = TTEProcessor.from_pretrained(model_name_or_path, **hub, **(processor_kwargs or {}))
        return cls(model, processor, **config)

    def save(self, output_path: str, *args, **kwargs) -> None:
        """Save model, processor, this module's config and its code into `output_path` (the model's root)."""
        self.model.save_pretrained(output_path)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)
        target = os.path.join(output_path, os.path.basename(__file__))
        if not os.path.exists(target) or not os.path.samefile(__file__, target):
            shutil.copyfile(__file__, target)

    # ---------------------------------------------------------------- inputs
    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, task: str | None = None,
                   think: bool | str = False, max_new_tokens: int | None = None, **kwargs) -> dict[str, Any]:
        """
        Embedder inputs for `inputs` (see `to_row`): targets when `task="document"` (`encode_document`), queries
        otherwise. A non-empty `prompt` becomes the `instruction` of rows that have none. With `think`, reasoner
        generation inputs instead (left-padded), for `forward` to think and embed.
        """
        side = "target" if task == "document" else "query"
        rows = [to_row(item, f"{side} row {index}") for index, item in enumerate(inputs)]
        if prompt:
            rows = [row if row.get("instruction") else {**row, "instruction": prompt} for row in rows]
        if not think:
            process = self.processor.process_targets if side == "target" else self.processor.process_queries
            return dict(process(rows))
        task_type = self._think_task_type(think)
        given = [index for index, row in enumerate(rows) if row.get("ecr")]
        if given:
            raise ValueError(f"{side} rows {given} already have an `ecr`, and think={think!r} writes one: drop "
                             f"either the `ecr` fields or `think`")
        features = dict(self.processor.process_reasoner_inputs(rows, task_type, side))
        features[GENERATION_KEY] = {"row_keys": [row_key(row) for row in rows],
                                    "think": "auto" if think == "auto" else True,
                                    "max_new_tokens": max_new_tokens or self.max_new_tokens}
        return features

    def _think_task_type(self, think: bool | str) -> str:
        if self.model.config.mode != "unified":
            raise ValueError("think needs a unified TTE model (config.mode='unified'); an embedder reads ECR written "
                             "by a separate reasoner: pass it in the rows' `ecr` field")
        task_type = self.think_task_type if think in (True, "auto") else think
        if task_type not in TASK_TYPES:
            raise ValueError(f"think must be True, 'auto' or a task type of {list(TASK_TYPES)}, got {think!r}")
        return task_type

    # ---------------------------------------------------------------- embedding
    def forward(self, features: dict[str, Any], think: bool | str = False, max_new_tokens: int | None = None,
                **kwargs) -> dict[str, Any]:
        """Embed `features` from `preprocess`: `features["sentence_embedding"]`, plus `features["ecr_ids"]` (and
        the written ECR texts in `written_ecr`) for a thinking batch."""
        generation = features.pop(GENERATION_KEY, None)
        inputs = {key: value for key, value in features.items() if torch.is_tensor(value)}
        if generation is None:
            features["sentence_embedding"] = self.model(**inputs).embeddings
            return features
        output = self.model.generate_and_embed(**inputs, max_new_tokens=generation["max_new_tokens"],
                                               think=generation["think"])
        texts = self.decode_ecr(output.ecr_ids, output.attention_mask[:, -output.ecr_ids.shape[1]:])
        self.written_ecr.update(zip(generation["row_keys"], texts, strict=True))
        features.update(sentence_embedding=output.embeddings, ecr_ids=output.ecr_ids)
        return features

    def decode_ecr(self, ecr_ids: torch.Tensor, ecr_mask: torch.Tensor) -> list[str]:
        """ECR texts from `generate_and_embed`'s ids and mask: each row up to (not including) its end-of-turn token."""
        return [self.tokenizer.decode(ids[mask.bool()][:-1], skip_special_tokens=False).strip()
                for ids, mask in zip(ecr_ids, ecr_mask, strict=True)]

    def ecr_for(self, item: Any, prompt: str | None = None) -> str:
        """The ECR that thinking wrote for `item` (any input `encode` takes, with the `prompt` it was encoded with);
        `KeyError` if it thought about none."""
        row = to_row(item, "row")
        key = row_key({**row, "instruction": prompt} if prompt and not row.get("instruction") else row)
        if key not in self.written_ecr:
            raise KeyError("no ECR was written for this row: encode it with think=True first")
        return self.written_ecr[key]


__all__ = ["TTESentenceModule", "row_key", "to_row"]

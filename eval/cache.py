"""Embeddings cached on disk, keyed by model fingerprint, task, side and row content, so a rerun skips work and
different models never share entries. Each writer appends shard files (atomic renames), so processes of a
sharded run and interrupted runs never corrupt the cache."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(model_path, **settings) -> str:
    """A short hash of a model folder (resolved path, `config.json`, and each weight file's name, size and mtime)
    and of the evaluation `settings` that change embeddings (e.g. `ecr_mode`, `max_ecr_tokens`)."""
    folder = Path(model_path).resolve()
    parts = [str(folder), json.dumps(settings, sort_keys=True, default=str)]
    config = folder / "config.json"
    parts.append(config.read_text(encoding="utf-8") if config.is_file() else "")
    for path in sorted(folder.glob("*")):
        if path.suffix in WEIGHT_SUFFIXES:
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def _describe(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    return f"<{type(value).__name__}>"  # in-memory media (hub PIL images): identified by the row name


def item_key(name: str, row: dict) -> str:
    """Cache key of one row to embed: its name plus everything the processor reads (media paths, text,
    instruction, ECR)."""
    content = {"name": name, **{k: _describe(v) for k, v in sorted(row.items())}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


class EmbeddingCache:
    """A folder of embedding shards (`{"keys": [...], "embeddings": Tensor}`) for one model, task and side."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._store: dict[str, torch.Tensor] = {}
        self.reload()

    def reload(self) -> None:
        self._store = {}
        for shard in sorted(self.folder.glob("*.pt")) if self.folder.is_dir() else []:
            data = torch.load(shard, map_location="cpu", weights_only=True)
            self._store.update(zip(data["keys"], data["embeddings"], strict=True))

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def missing(self, keys) -> list[str]:
        """`keys` without a cached embedding, in order, without duplicates."""
        return [k for k in dict.fromkeys(keys) if k not in self._store]

    def stack(self, keys) -> torch.Tensor:
        """The cached embeddings of `keys`, stacked in order."""
        return torch.stack([self._store[k] for k in keys])

    def put(self, keys: list[str], embeddings: torch.Tensor) -> None:
        """Write one shard atomically and remember its embeddings."""
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        embeddings = embeddings.detach().float().cpu()
        final = self.folder / f"{uuid.uuid4().hex}.pt"
        temporary = final.with_suffix(".tmp")
        torch.save({"keys": list(keys), "embeddings": embeddings}, temporary)
        os.replace(temporary, final)
        self._store.update(zip(keys, embeddings, strict=True))

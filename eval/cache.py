"""Embeddings cached on disk, keyed by model fingerprint, task, side and row content (media by their bytes, so an
image overwritten at the same path is embedded again), so a rerun skips work and different models never share
entries. Each writer appends shard files (atomic renames), so processes of a sharded run and interrupted runs
never corrupt the cache; an unreadable shard is skipped with a warning naming it, and its rows are embedded
again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import uuid
import zipfile
from pathlib import Path

import torch
from PIL import Image

logger = logging.getLogger(__name__)

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


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    stat = os.stat(path)
    memo = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


MEDIA_FIELDS = ("image", "video")


def _describe(value, media: bool = False):
    """A JSON-able identity of a row field; media files by path and content digest, images by their pixels."""
    if media and isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        return {"path": os.fspath(value), "sha256": file_digest(value)}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v, media) for v in value]
    if isinstance(value, Image.Image):
        return {"image": hashlib.sha256(value.tobytes()).hexdigest(), "mode": value.mode, "size": value.size}
    raise TypeError(f"cannot key a row field of type {type(value).__name__} for the embedding cache")


def item_key(name: str, row: dict) -> str:
    """Cache key of one row to embed: its name plus everything the processor reads (media paths and contents,
    text, instruction, ECR)."""
    content = {"name": name, **{k: _describe(v, k in MEDIA_FIELDS) for k, v in sorted(row.items())}}
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
            try:
                data = torch.load(shard, map_location="cpu", weights_only=True)
                self._store.update(zip(data["keys"], data["embeddings"], strict=True))
            except (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError,
                    zipfile.BadZipFile) as error:
                logger.warning("embedding cache: skipping unreadable shard %s (%s: %s); its rows are embedded "
                               "again", shard, type(error).__name__, error)

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

"""What a task's score was computed from: the model fingerprint, the evaluation settings and a digest of every
input row (media contents, text, instruction, ECR), written beside `{task}_score.json`. A rerun reuses a score
only when all three match, so another ECR store, changed rows or changed images are scored again, never reported
from an older run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def inputs_digest(sides: dict[str, dict[str, dict]]) -> str:
    """A digest of the task's embedding inputs: the ordered cache keys of its query and candidate rows."""
    digest = hashlib.sha256()
    for side, items in sides.items():
        digest.update(side.encode())
        for key in items:
            digest.update(key.encode())
    return digest.hexdigest()[:32]


def make_record(task: str, fingerprint: str, settings: dict, sides: dict[str, dict[str, dict]], ecr_store) -> dict:
    """The provenance record of one task's score."""
    return {"task": task, "model": fingerprint, "settings": settings, "inputs": inputs_digest(sides),
            "queries": len(sides["query"]), "candidates": len(sides["target"]),
            "ecr_store": None if ecr_store is None else str(Path(ecr_store.path).resolve())}


def differences(old: dict | None, new: dict) -> list[str]:
    """What changed between a stored record and the current one (empty: the stored score is valid)."""
    if old is None:
        return ["no provenance record"]
    changed = [key for key in ("model", "settings", "inputs") if old.get(key) != new.get(key)]
    if "inputs" in changed and old.get("ecr_store") != new.get("ecr_store"):
        changed.append(f"ECR store {old.get('ecr_store')} -> {new.get('ecr_store')}")
    return changed


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

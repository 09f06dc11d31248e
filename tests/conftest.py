"""Shared fixtures: tiny offline Qwen-VL checkpoints, written once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """`tiny_backbone(family="qwen2_vl", **sizes)` -> path of a tiny checkpoint folder (cached per arguments)."""
    from train.tiny_backbone import write_tiny_backbone

    cache = {}

    def make(family: str = "qwen2_vl", **sizes) -> str:
        key = (family, tuple(sorted(sizes.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            cache[key] = str(write_tiny_backbone(folder, family, **sizes))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tiny_backbone) -> str:
    return tiny_backbone("qwen2_vl")

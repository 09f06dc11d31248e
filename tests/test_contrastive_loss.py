"""Closed-form and validation checks of the InfoNCE loss (train/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import InfoNCELoss


def test_identical_embeddings_give_log_batch_size():
    batch = 6
    same = F.normalize(torch.randn(1, 16), dim=-1).expand(batch, -1)
    loss = InfoNCELoss(temperature=0.02)(same, same)
    assert loss.item() == pytest.approx(math.log(batch), abs=1e-5)


def test_perfectly_separated_embeddings_give_zero():
    eye = torch.eye(8)
    assert InfoNCELoss(temperature=0.02)(eye, eye).item() < 1e-12
    assert InfoNCELoss(temperature=0.02, symmetric=True)(eye, eye).item() < 1e-12


def test_hard_negatives_join_the_candidates():
    eye = torch.eye(4, 8)
    # each row's hard negative is a copy of its positive: the positive is now one of two equal best candidates
    loss = InfoNCELoss(temperature=0.02)(eye, eye, negatives=eye.unsqueeze(1))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    # the same negatives as a flat (N, D) tensor give the same loss
    assert InfoNCELoss()(eye, eye, eye).item() == pytest.approx(loss.item())


def test_matches_cross_entropy_and_computes_in_float32():
    torch.manual_seed(0)
    query, target = F.normalize(torch.randn(5, 12), dim=-1), F.normalize(torch.randn(5, 12), dim=-1)
    expected = F.cross_entropy(query @ target.T / 0.05, torch.arange(5))
    assert InfoNCELoss(0.05)(query, target).item() == pytest.approx(expected.item(), rel=1e-6)
    symmetric = (expected + F.cross_entropy(target @ query.T / 0.05, torch.arange(5))) / 2
    assert InfoNCELoss(0.05, symmetric=True)(query, target).item() == pytest.approx(symmetric.item(), rel=1e-6)
    low = InfoNCELoss(0.05)(query.bfloat16(), target.bfloat16())
    assert low.dtype == torch.float32


@pytest.mark.parametrize("temperature", [0, -1.0, "0.02", True])
def test_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature)


def test_rejects_bad_shapes():
    loss = InfoNCELoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="query must be a float tensor"):
        loss(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="negatives"):
        loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 7))
    with pytest.raises(ValueError, match="per-row negatives"):
        loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 2, 8))


def test_a_shared_positive_is_not_a_negative():
    # rows 0 and 1 have the same target (e.g. one class label); rows 2 and 3 their own
    basis = torch.eye(3)
    target = torch.stack([basis[0], basis[0], basis[1], basis[2]])
    query = target.clone()
    loss_fn = InfoNCELoss(temperature=0.05)
    unmasked = loss_fn(query, target)
    masked = loss_fn(query, target, target_ids=torch.tensor([7, 7, 8, 9]))
    assert unmasked.item() == pytest.approx(math.log(2) / 2, abs=1e-4)  # rows 0, 1 split mass with the copy
    assert masked.item() < 1e-6
    with pytest.raises(ValueError, match="target_ids must have shape"):
        loss_fn(query, target, target_ids=torch.tensor([1, 2]))

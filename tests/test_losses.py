"""VM-UNet's losses against the formulas of upstream utils.py, written out by hand on tiny tensors."""

import math

import torch

from hf_medmamba.losses import bce_dice_loss, ce_dice_loss


def test_bce_dice_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])  # (1, 1, 2, 2)
    labels = torch.tensor([[[0, 1], [0, 1]]])
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1)), 1 / (1 + math.exp(-1))]
    t = [0, 1, 0, 1]
    bce = -sum(ti * math.log(pi) + (1 - ti) * math.log(1 - pi) for pi, ti in zip(p, t)) / 4
    dice = (2 * (p[1] + p[3]) + 1) / (sum(p) + 2 + 1)
    expected = bce + (1 - dice)
    assert abs(bce_dice_loss(logits, labels).item() - expected) < 1e-6
    assert (
        abs(bce_dice_loss(logits, labels, bce_weight=0.3, dice_weight=2.0).item() - (0.3 * bce + 2 * (1 - dice))) < 1e-6
    )


def test_bce_dice_is_per_sample_dice_averaged():
    logits = torch.tensor([[[[5.0]]], [[[-5.0]]]])
    labels = torch.tensor([[[1]], [[1]]])
    p1, p2 = 1 / (1 + math.exp(-5)), 1 / (1 + math.exp(5))
    dice = ((2 * p1 + 1) / (p1 + 1 + 1) + (2 * p2 + 1) / (p2 + 1 + 1)) / 2
    bce = -(math.log(p1) + math.log(p2)) / 2
    assert abs(bce_dice_loss(logits, labels).item() - (bce + 1 - dice)) < 1e-6


def test_bce_dice_ignores_pixels():
    logits = torch.tensor([[[[0.0, 3.0]]]])
    full = bce_dice_loss(logits[..., :1], torch.tensor([[[1]]]))
    masked = bce_dice_loss(logits, torch.tensor([[[1, 255]]]))
    assert abs(full.item() - masked.item()) < 1e-6


def test_ce_dice_by_hand():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    probs = torch.softmax(logits, dim=1)[0, :, 0]  # (3, 2)
    ce = -(math.log(probs[0, 0]) + math.log(probs[1, 1])) / 2
    t = [[1, 0], [0, 1], [0, 0]]
    dice = 0.0
    for c in range(3):
        inter = sum(probs[c, i].item() * t[c][i] for i in range(2))
        denom = sum(t[c][i] ** 2 for i in range(2)) + sum(probs[c, i].item() ** 2 for i in range(2))
        dice += 1 - (2 * inter + 1e-5) / (denom + 1e-5)
    expected = ce + dice / 3  # background (class 0) counts in the mean
    assert abs(ce_dice_loss(logits, labels).item() - expected) < 1e-6


def test_ce_dice_ignores_pixels():
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    ignored = labels.clone()
    ignored[:, :, 2] = 255
    expected = ce_dice_loss(logits[..., :2], labels[..., :2])
    assert abs(ce_dice_loss(logits, ignored).item() - expected.item()) < 1e-5

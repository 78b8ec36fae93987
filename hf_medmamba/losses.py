"""VM-UNet's segmentation losses (upstream ``utils.py``), with an ignore index for unlabelled pixels.

- `bce_dice_loss` (upstream ``BceDiceLoss(wb=1, wd=1)``, ISIC, one output channel): ``wb * BCE + wd * Dice`` with
  BCE the mean over pixels and Dice ``1 - mean_b (2 sum(p t) + 1) / (sum p + sum t + 1)`` per sample (smooth 1),
  p = sigmoid(logits). BCE is computed from the logits (``binary_cross_entropy_with_logits``): the same value as
  upstream's ``BCELoss(sigmoid(x))`` wherever the sigmoid is not saturated in float32, and finite where it is.
- `ce_dice_loss` (upstream ``CeDiceLoss``, Synapse, one channel per class): ``wc * CE + wd * nDice`` with nDice the
  mean over all classes (background included) of ``1 - (2 sum(p_c t_c) + 1e-5) / (sum t_c^2 + sum p_c^2 + 1e-5)``,
  sums over the whole batch, p = softmax(logits), t one-hot. Upstream's configs use weights [1, 1].

Labels are class indices (batch, height, width); pixels equal to ``ignore_index`` count in neither term.
"""

import torch
import torch.nn.functional as F


def bce_dice_loss(logits, labels, ignore_index=255, bce_weight=1.0, dice_weight=1.0, smooth=1.0):
    """``logits`` (B, 1, H, W), ``labels`` (B, H, W) in {0, 1} (or ``ignore_index``)."""
    logits = logits[:, 0].float()
    valid = (labels != ignore_index).float()
    target = labels.float() * valid
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum() / valid.sum()
    probs = torch.sigmoid(logits) * valid
    intersection = (probs * target).flatten(1).sum(1)
    dice = (2 * intersection + smooth) / (probs.flatten(1).sum(1) + target.flatten(1).sum(1) + smooth)
    return bce_weight * bce + dice_weight * (1 - dice.mean())


def ce_dice_loss(logits, labels, ignore_index=255, ce_weight=1.0, dice_weight=1.0, eps=1e-5):
    """``logits`` (B, C, H, W), ``labels`` (B, H, W) in 0..C-1 (or ``ignore_index``)."""
    logits = logits.float()
    num_classes = logits.shape[1]
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    valid = (labels != ignore_index).unsqueeze(1).float()
    probs = torch.softmax(logits, dim=1) * valid
    one_hot = F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    dice = 1 - (2 * intersection + eps) / (one_hot.pow(2).sum(dims) + probs.pow(2).sum(dims) + eps)
    return ce_weight * ce + dice_weight * dice.mean()

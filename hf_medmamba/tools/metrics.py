"""Offline evaluation metrics of the MedMamba and VM-UNet papers, as thin wrappers over scikit-learn and MONAI.

- `classification_metrics`: OA and macro precision, sensitivity, specificity, F1 and one-vs-rest AUC (MedMamba).
- `binary_segmentation_metrics`: pixel-pooled mIoU, DSC, accuracy, specificity and sensitivity (VM-UNet, ISIC).
- `volume_dice_hd95` and `synapse_summary`: per-organ Dice and HD95 on label volumes (TransUNet/VM-UNet, Synapse).

Every input may be a numpy array or a torch tensor. Results are plain Python floats, ints and lists, ready for JSON
(undefined values are ``float("nan")``). This module is not part of the Hub remote code: nothing in the model files
imports it, and it needs the ``train`` extra (scikit-learn, MONAI, matplotlib).
"""

import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


EMPTY_CONVENTIONS = ("synapse", "nan")


def _to_numpy(x):
    """A numpy array from an array, a tensor (any device; floating tensors become float64) or a nested list."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _ratio(numerator, denominator, undefined):
    """``numerator / denominator`` elementwise, and ``undefined`` where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, float(undefined))
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _mean(values):
    """Mean of the non-NaN values; NaN when there are none (without numpy's empty-slice warning)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# ----------------------------------------------------------------------------------------------------------------------
# Classification (MedMamba)
# ----------------------------------------------------------------------------------------------------------------------


def _probabilities(scores):
    """(N, C) class probabilities from (N, C) logits or probabilities, or from (N,) positive-class scores."""
    scores = _to_numpy(scores).astype(np.float64)
    if scores.ndim == 1:
        if scores.min(initial=0.0) < 0 or scores.max(initial=1.0) > 1:
            scores = torch.from_numpy(scores).sigmoid().numpy()
        return np.stack([1 - scores, scores], axis=1)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (samples, classes) or (samples,), got {scores.shape}.")
    if (scores < 0).any() or not np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        scores = torch.from_numpy(scores).softmax(dim=1).numpy()
    return scores


def classification_metrics(labels, scores_or_logits, num_classes=None):
    """Classification metrics as in the MedMamba paper's tables.

    ``labels`` are N integer class indices; ``scores_or_logits`` are (N, C) logits or probabilities. Rows that are
    non-negative and sum to 1 (within 1e-3) are taken as probabilities, anything else gets a softmax. For a binary
    task a 1-D array of N positive-class scores also works: probabilities when all lie in [0, 1], else logits (sigmoid).
    The prediction is the argmax of the probabilities. ``num_classes``, when given, must match C.

    Returned keys:

    - ``accuracy``: overall accuracy (OA), correct / N.
    - ``precision``, ``sensitivity`` (recall), ``f1``: macro means over all C classes of sklearn's per-class values.
      A 0/0 gives 0 (``zero_division=0``): precision of a class never predicted, recall and F1 of a class absent from
      the labels (such a class still counts in the macro mean, as in sklearn's ``average="macro"``).
    - ``specificity``: macro mean of TN / (TN + FP) from each class's one-vs-rest confusion matrix; 0 when TN + FP is
      0 (every sample has that class).
    - ``auc``: macro mean of the one-vs-rest ROC AUCs; for C = 2, the AUC of class 1 (equal to class 0's).
      A class's AUC is undefined when the labels hold none or only that class: it is NaN in ``per_class["auc"]``,
      left out of the mean and listed in ``auc_excluded_classes``. With no class defined, ``auc`` is NaN.
    - ``confusion_matrix``: C × C nested list, rows the true classes, columns the predicted ones.
    - ``per_class``: lists of length C for ``precision``, ``sensitivity``, ``specificity``, ``f1``, ``auc`` and
      ``support`` (number of samples of each class).
    """
    labels = _to_numpy(labels)
    probabilities = _probabilities(scores_or_logits)
    n, c = probabilities.shape
    if num_classes is not None and num_classes != c:
        raise ValueError(f"num_classes={num_classes} but the scores have {c} columns.")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the scores, got {labels.shape}.")
    if n == 0:
        raise ValueError("classification_metrics needs at least one sample.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must be integer class indices in [0, {c}), got {labels.dtype} values {labels}.")

    classes = list(range(c))
    predictions = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, average=None, zero_division=0
    )
    one_vs_rest = multilabel_confusion_matrix(labels, predictions, labels=classes)  # per class [[TN, FP], [FN, TP]]
    specificity = _ratio(one_vs_rest[:, 0, 0], one_vs_rest[:, 0, 0] + one_vs_rest[:, 0, 1], undefined=0.0)

    auc, excluded = [], []
    for k in classes:
        positive = labels == k
        if positive.all() or not positive.any():
            auc.append(float("nan"))
            excluded.append(k)
        else:
            auc.append(float(roc_auc_score(positive, probabilities[:, k])))

    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision.mean()),
        "sensitivity": float(recall.mean()),
        "specificity": float(specificity.mean()),
        "f1": float(f1.mean()),
        "auc": auc[1] if c == 2 else _mean(auc),
        "auc_excluded_classes": excluded,
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
        "per_class": {
            "precision": precision.tolist(),
            "sensitivity": recall.tolist(),
            "specificity": specificity.tolist(),
            "f1": f1.tolist(),
            "auc": auc,
            "support": support.tolist(),
        },
    }


def plot_confusion_matrix(cm, class_names, path):
    """Write the confusion matrix ``cm`` (rows true, columns predicted) as a PNG at ``path``; return the path.

    Drawn with sklearn's `ConfusionMatrixDisplay` on a matplotlib figure rendered by the Agg backend, so it needs no
    display and leaves pyplot's state alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"cm must be square with one row per class name ({len(class_names)}), got {cm.shape}.")
    size = 2.0 + 0.6 * len(class_names)
    figure = Figure(figsize=(size + 1.0, size), layout="constrained")
    FigureCanvasAgg(figure)
    ConfusionMatrixDisplay(cm, display_labels=list(class_names)).plot(ax=figure.add_subplot(), cmap="Blues")
    path = Path(path)
    figure.savefig(path, format="png", dpi=150)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Binary segmentation (VM-UNet, ISIC 2017/2018)
# ----------------------------------------------------------------------------------------------------------------------


def binary_segmentation_metrics(probabilities_or_masks_list, targets_list, threshold=0.5):
    """Binary segmentation metrics with the VM-UNet ISIC protocol: one confusion matrix over all pixels of all images.

    Each prediction is a probability map or a 0/1 mask, foreground where ``>= threshold``; each target is foreground
    where ``>= 0.5``. Pairs must have the same shape (usually H × W; sizes may differ between images). Returned keys,
    from the pooled counts (also returned as ``tp``, ``fp``, ``fn``, ``tn``):

    - ``miou`` = TP / (TP + FP + FN): the foreground IoU, which the paper calls mIoU.
    - ``dsc`` = 2TP / (2TP + FP + FN).
    - ``accuracy`` = (TP + TN) / pixels.
    - ``specificity`` = TN / (TN + FP).
    - ``sensitivity`` = TP / (TP + FN).
    - ``mean_image_dice``: MONAI's Dice of each image, averaged over the images.

    Empty cases: a 0/0 gives 1.0 everywhere, i.e. nothing to find and nothing found is perfect. So a set with no
    foreground in targets and predictions has ``miou = dsc = 1``; with no foreground target, ``sensitivity = 1``; with
    no background target, ``specificity = 1``. An image with empty target and empty prediction has Dice 1.0, one with
    an empty target and a non-empty prediction Dice 0.0 (MONAI's ``ignore_empty=False``). VM-UNet's own code returns
    0 instead of 1 for a pooled 0/0, which only matters for a set without any foreground.
    """
    predictions, targets = list(probabilities_or_masks_list), list(targets_list)
    if len(predictions) != len(targets):
        raise ValueError(f"Got {len(predictions)} predictions but {len(targets)} targets.")
    if not predictions:
        raise ValueError("binary_segmentation_metrics needs at least one image.")

    counts = np.zeros((2, 2), dtype=np.int64)  # [[TN, FP], [FN, TP]]
    image_dice = []
    for i, (prediction, target) in enumerate(zip(predictions, targets)):
        prediction, target = _to_numpy(prediction), _to_numpy(target)
        if prediction.shape != target.shape:
            raise ValueError(f"Image {i}: prediction shape {prediction.shape} != target shape {target.shape}.")
        if prediction.size == 0:
            raise ValueError(f"Image {i} has no pixels (shape {prediction.shape}).")
        prediction, target = prediction >= threshold, target >= 0.5
        counts += confusion_matrix(target.ravel(), prediction.ravel(), labels=[False, True])
        dice = compute_dice(
            torch.from_numpy(prediction)[None, None], torch.from_numpy(target)[None, None], ignore_empty=False
        )
        image_dice.append(dice.item())

    (tn, fp), (fn, tp) = counts.tolist()
    return {
        "miou": float(_ratio(tp, tp + fp + fn, undefined=1.0)),
        "dsc": float(_ratio(2 * tp, 2 * tp + fp + fn, undefined=1.0)),
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "specificity": float(_ratio(tn, tn + fp, undefined=1.0)),
        "sensitivity": float(_ratio(tp, tp + fn, undefined=1.0)),
        "mean_image_dice": float(np.mean(image_dice)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def multiclass_segmentation_metrics(predictions, targets, num_classes, ignore_index=255):
    """Per-class Dice over all pixels of a set of 2-D label maps, pooled like the ISIC protocol, for C > 2 classes.

    ``predictions`` and ``targets`` are class-index arrays of the same shape (N × H × W or flat); target pixels equal
    to ``ignore_index`` are left out. From one confusion matrix over all remaining pixels: ``dice`` (a list of C
    values, ``2 TP_k / (2 TP_k + FP_k + FN_k)``; NaN for a class that is in neither the targets nor the predictions),
    ``iou`` (likewise, ``TP_k / (TP_k + FP_k + FN_k)``), ``mean_dice`` and ``mean_iou`` (the means over the
    foreground classes 1..C-1 that are not NaN; NaN if all are) and ``pixel_accuracy``. For per-volume Dice and HD95
    use `volume_dice_hd95`.
    """
    predictions, targets = _to_numpy(predictions), _to_numpy(targets)
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions shape {predictions.shape} != targets shape {targets.shape}.")
    valid = targets != ignore_index
    predictions, targets = predictions[valid].astype(np.int64), targets[valid].astype(np.int64)
    for name, values in (("predictions", predictions), ("targets", targets)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes}), got values in [{values.min()}, {values.max()}]."
            )
    counts = confusion_matrix(targets, predictions, labels=list(range(num_classes)))
    tp = np.diag(counts).astype(np.float64)
    dice = _ratio(2 * tp, counts.sum(axis=0) + counts.sum(axis=1), undefined=np.nan)
    iou = _ratio(tp, counts.sum(axis=0) + counts.sum(axis=1) - tp, undefined=np.nan)
    return {
        "dice": dice.tolist(),
        "iou": iou.tolist(),
        "mean_dice": _mean(dice[1:]),
        "mean_iou": _mean(iou[1:]),
        "pixel_accuracy": float(_ratio(tp.sum(), counts.sum(), undefined=np.nan)),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Multi-organ segmentation (TransUNet/VM-UNet, Synapse)
# ----------------------------------------------------------------------------------------------------------------------


def volume_dice_hd95(prediction, target, num_classes, spacing=None, empty_convention="synapse"):
    """Dice and HD95 of each foreground class 1..num_classes-1 for one pair of label volumes (Synapse protocol).

    ``prediction`` and ``target`` hold class indices in [0, num_classes) and have the same shape (D × H × W; 2-D also
    works). For class k the binary masks are ``prediction == k`` and ``target == k``. Dice is MONAI's; HD95 is MONAI's
    symmetric 95th-percentile Hausdorff distance between the mask surfaces, in voxels, or in the units of ``spacing``
    (one number, or one per axis in the array's axis order, e.g. mm). MONAI takes the larger of the two directed 95th
    percentiles, where medpy (used by TransUNet) takes the 95th percentile of both directions pooled; they agree on
    most masks but can differ on masks with few surface voxels. TransUNet's code passes no spacing: voxel units.

    ``empty_convention="synapse"`` is TransUNet's ``calculate_metric_percase``, which VM-UNet reuses:

    - prediction and target non-empty: (Dice, HD95);
    - prediction non-empty, target empty: (1, 0), a generous score for a false positive organ;
    - prediction empty: (0, 0), whether the target is empty or not.

    ``empty_convention="nan"`` returns NaN where a value is undefined: HD95 when either mask is empty, Dice when both
    are (Dice is 0 when exactly one is).

    Returns ``{"classes": [1, ..., num_classes - 1], "dice": [...], "hd95": [...]}``, lists in class order.
    """
    if empty_convention not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty_convention must be one of {EMPTY_CONVENTIONS}, got {empty_convention!r}.")
    prediction, target = _to_numpy(prediction), _to_numpy(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} != target shape {target.shape}.")
    for name, volume in (("prediction", prediction), ("target", target)):
        if volume.size and (volume.min() < 0 or volume.max() >= num_classes):
            raise ValueError(f"{name} values must be class indices in [0, {num_classes}).")

    classes = list(range(1, num_classes))
    dice, hd95 = [], []
    for k in classes:
        pred_k = torch.from_numpy(prediction == k)[None, None]
        true_k = torch.from_numpy(target == k)[None, None]
        if pred_k.any() and true_k.any():
            dice.append(compute_dice(pred_k, true_k).item())
            with warnings.catch_warnings():  # MONAI 1.5-1.6 trips over its own deprecated get_mask_edges argument
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
                distance = compute_hausdorff_distance(
                    pred_k, true_k, include_background=True, percentile=95, spacing=spacing
                )
            hd95.append(distance.item())
        elif empty_convention == "synapse":
            dice.append(1.0 if pred_k.any() else 0.0)
            hd95.append(0.0)
        else:
            dice.append(0.0 if pred_k.any() or true_k.any() else float("nan"))
            hd95.append(float("nan"))
    return {"classes": classes, "dice": dice, "hd95": hd95}


def synapse_summary(per_case_results, class_names):
    """Average `volume_dice_hd95` results over cases, per class and overall, as the Synapse tables report them.

    ``class_names`` names the foreground classes, in order (one per entry of each result's ``dice``). Returns
    ``{"per_class": {name: {"dice", "hd95"}}, "mean_dice", "mean_hd95"}``: per class, the mean over cases; overall,
    the mean of those per-class means (the papers' mean DSC and mean HD95). NaNs (``empty_convention="nan"``) are
    skipped in every mean; a mean with nothing left is NaN.
    """
    per_case_results = list(per_case_results)
    if not per_case_results:
        raise ValueError("synapse_summary needs at least one case.")
    dice = np.array([result["dice"] for result in per_case_results], dtype=np.float64)
    hd95 = np.array([result["hd95"] for result in per_case_results], dtype=np.float64)
    if dice.shape[1] != len(class_names) or hd95.shape != dice.shape:
        raise ValueError(f"Each result must have {len(class_names)} dice and hd95 values, one per class name.")

    per_class = {name: {"dice": _mean(dice[:, k]), "hd95": _mean(hd95[:, k])} for k, name in enumerate(class_names)}
    return {
        "per_class": per_class,
        "mean_dice": _mean([values["dice"] for values in per_class.values()]),
        "mean_hd95": _mean([values["hd95"] for values in per_class.values()]),
    }

"""How `run_semantic_segmentation.py` evaluates: logits reduced to foreground probabilities or label maps during
evaluation, the metrics (`hf_medmamba.tools.metrics`: the ISIC protocol for binary tasks, per-class Dice and IoU
otherwise), and PNG overlays of the true and predicted masks."""

import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from example_data import mask_array, to_uint8_array


BINARY_METRICS = ("miou", "dsc", "accuracy", "specificity", "sensitivity", "mean_image_dice")
# fmt: off
PALETTE = np.array([
    [0, 0, 0], [255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255], [0, 220, 220],
    [255, 128, 0], [128, 255, 128], [255, 128, 200], [160, 160, 255],
], dtype=np.uint8)  # overlay colours of classes 0, 1, 2, ...
# fmt: on


def reduce_logits(logits, labels):
    """Keep evaluation memory small: foreground probabilities (float16) for binary tasks, label maps otherwise,
    at the labels' resolution (SegFormer's logits are at 1/4)."""
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    logits = logits.float()
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0]).half()
    if logits.shape[1] == 2:
        return logits.softmax(dim=1)[:, 1].half()
    return logits.argmax(dim=1).to(torch.int16)


def _mean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def make_compute_metrics(id2label, ignore_index=255, reduce_labels=False):
    """Binary: the ISIC pooled mIoU, DSC, accuracy, specificity, sensitivity and the mean per-image Dice
    (`hf_medmamba.tools.metrics.binary_segmentation_metrics`). Multi-class (and any run with ``--do_reduce_labels``):
    per-class Dice and IoU over all pixels, their means (``mean_dice``, ``miou``) over the foreground classes 1..C-1
    (over every class when the labels were reduced, since background is then ignored rather than class 0) and the
    pixel accuracy (`hf_medmamba.tools.metrics.multiclass_segmentation_metrics`)."""
    first = 0 if reduce_labels else 1

    def compute_metrics(eval_prediction):
        from hf_medmamba.tools.metrics import (
            binary_segmentation_metrics,
            multiclass_segmentation_metrics,
        )  # needs MONAI

        predictions = np.asarray(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids)
        if len(id2label) > 2 or reduce_labels:
            maps = label_maps(predictions, len(id2label))
            result = multiclass_segmentation_metrics(maps, labels, len(id2label), ignore_index)
            metrics = {}
            for k in range(first, len(id2label)):
                name = id2label[k].replace(" ", "_")
                metrics[f"dice_{name}"], metrics[f"iou_{name}"] = result["dice"][k], result["iou"][k]
            metrics["mean_dice"], metrics["miou"] = _mean(result["dice"][first:]), _mean(result["iou"][first:])
            return {**metrics, "pixel_accuracy": result["pixel_accuracy"]}
        valid = labels != ignore_index
        metrics = binary_segmentation_metrics(
            [p[v].astype(np.float32) for p, v in zip(predictions, valid)], [t[v] for t, v in zip(labels, valid)]
        )
        return {key: metrics[key] for key in BINARY_METRICS}

    return compute_metrics


def label_maps(predictions, num_labels, threshold=0.5):
    """Label maps from `reduce_logits`' output."""
    predictions = np.asarray(predictions)
    if num_labels == 2:
        return (predictions.astype(np.float32) >= threshold).astype(np.int64)
    return predictions.astype(np.int64)


def colorize(labels, num_labels):
    """An RGBA overlay: class k in a fixed colour, background transparent."""
    rgba = np.zeros((*labels.shape, 4), dtype=np.uint8)
    rgba[..., :3] = PALETTE[labels % len(PALETTE)]
    rgba[..., 3] = np.where((labels > 0) & (labels < num_labels), 110, 0)
    return rgba


def write_overlays(folder, raw_examples, predictions, image_column, mask_column, id2label, mask_mode):
    """One PNG per example: the image, the true mask and the predicted mask over it (Dice of the foreground)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_labels, paths = len(id2label), []
    for i, (example, prediction) in enumerate(zip(raw_examples, label_maps(predictions, len(id2label)))):
        image = to_uint8_array(example[image_column])
        truth = mask_array(example[mask_column]).astype(np.int64)
        if mask_mode == "binary":
            truth = (truth > 0).astype(np.int64)
        height, width = truth.shape
        predicted = np.asarray(
            PIL.Image.fromarray(prediction.astype(np.int32)).resize((width, height), PIL.Image.NEAREST)
        )
        both = 2.0 * np.sum((truth > 0) & (predicted > 0))
        total = np.sum(truth > 0) + np.sum(predicted > 0)
        dice = both / total if total else 1.0
        figure = Figure(figsize=(9, 3.3), layout="constrained")
        FigureCanvasAgg(figure)
        for j, (title, overlay) in enumerate(
            [("image", None), ("true mask", truth), (f"predicted (Dice {dice:.2f})", predicted)]
        ):
            axis = figure.add_subplot(1, 3, j + 1)
            axis.imshow(image, cmap="gray" if image.ndim == 2 else None)
            if overlay is not None:
                axis.imshow(colorize(overlay, num_labels))
            axis.set_title(title, fontsize=9)
            axis.set_axis_off()
        path = folder / f"overlay_{i:02d}.png"
        figure.savefig(path, format="png", dpi=100)
        paths.append(str(path))
    return paths

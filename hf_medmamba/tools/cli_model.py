"""The model side of ``hf-medmamba predict``: the device, the model and processor loaded with their task
(classification or segmentation, from the config), and `Predictor`, which turns a batch of frames into results."""

import os

import torch
from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # see hf_medmamba/__init__.py

from . import medical_io
from .cli_inputs import CLIError


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"invalid --device {name!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name} was asked but CUDA is not available here; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name} was asked but MPS is not available here; use --device cpu.")
    return device


def _looks_local(name):
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def load_model(name, trust_remote_code=False, revision=None, dtype="float32", device="cpu"):
    """(model, processor, task) with task ``"classification"`` or ``"segmentation"``, following the model's config."""
    if not os.path.isdir(name) and _looks_local(name):
        raise CLIError(f"model folder {name} does not exist.")
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except Exception as err:
        raise CLIError(f"cannot load the configuration of {name}: {err}") from None
    auto_map = getattr(config, "auto_map", None) or {}
    tasks = [
        (task, auto)
        for task, auto in (
            ("segmentation", AutoModelForSemanticSegmentation),
            ("classification", AutoModelForImageClassification),
        )
        if type(config) in auto._model_mapping or auto.__name__ in auto_map
    ]
    if not tasks:
        raise CLIError(
            f"{name} (model type {config.model_type!r}) is neither an image classifier nor a semantic segmenter."
        )
    task, auto = tasks[0]
    if task == "classification" and getattr(config, "problem_type", None) == "regression":
        raise CLIError(f"{name} is a regression model; predict handles classifiers and segmenters.")
    try:
        model = auto.from_pretrained(name, config=config, dtype=getattr(torch, dtype), **kwargs)
    except Exception as err:
        raise CLIError(f"cannot load the model {name}: {err}") from None
    try:
        processor = AutoImageProcessor.from_pretrained(name, **kwargs)
    except Exception as err:
        raise CLIError(f"cannot load the image processor of {name} (preprocessor_config.json): {err}") from None
    return model.to(device).eval(), processor, task


class Predictor:
    """Processor + model on a batch of frames (already windowed by `medical_io`): a (label, score) list, or a label map
    at the frame's size made as `medical_io.label_maps` makes them (those of ``examples/evaluate_volumes.py``)."""

    def __init__(self, model, processor, task, top_k=3):
        self.model, self.processor, self.task = model, processor, task
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.num_labels = len(self.id2label)
        self.top_k = min(top_k, self.num_labels)
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    def __call__(self, frames):
        if self.task == "segmentation":
            return medical_io.label_maps(self.model, self.processor, frames)
        pixel_values = medical_io.model_inputs(self.processor, frames)["pixel_values"]
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values.to(self.model.device, self.model.dtype)).logits.float()
            probabilities = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
            scores, ids = probabilities.topk(self.top_k, dim=-1)
        return [
            [(self.id2label.get(i, str(i)), s) for i, s in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]

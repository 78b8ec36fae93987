"""Fine-tune (or train from scratch) MedMamba, VMamba or any `AutoModelForImageClassification` with the `Trainer`.

Data: a local imagefolder (``--data_dir``, one sub-folder per class inside ``train/`` and ``test/`` or
``validation/``) or a dataset on the Hub (``--dataset_name``). Class names come from the dataset's `ClassLabel`.

Model, first match wins: ``--model_name_or_path`` (a saved or converted folder), ``--config_name`` (a config file or
folder, random init), ``--model_type`` (any transformers model type with the default config, e.g. ``convnext``,
random init), ``--preset`` (``medmamba-t/s/b``, ``vmamba-s``, random init). ``--config_overrides`` takes a JSON object
of config settings (e.g. tiny depths/dims).

``--recipe medmamba`` fills the upstream MedMamba defaults (Adam 1e-4, constant LR, batch 32, 100 epochs,
RandomResizedCrop + horizontal flip, 224 px); explicit arguments override it.

    python examples/run_image_classification.py --data_dir examples/data/busi_cls --preset medmamba-t \\
        --recipe medmamba --output_dir outputs/medmamba-busi

Distributed (on CPU the script sets ``use_cpu`` itself, so this runs two gloo processes):

    torchrun --nproc_per_node 2 examples/run_image_classification.py ...

Writes to ``output_dir``: the model and its image processor (loadable with
``pipeline("image-classification", model=output_dir, trust_remote_code=True)``), ``all_results.json``,
``eval_report.json`` (per-class metrics and the confusion matrix) and ``confusion_matrix.png``.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForImageClassification, set_seed
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # 5.17 exports a torchvision stub


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from example_utils import (
    AugmentationEpochCallback,
    RecipeTrainingArguments,
    SeededAugmentation,
    json_safe,
    limit,
    load_image_datasets,
    log_process,
    make_trainer,
    parse_arguments,
    parse_json_argument,
    setup_logging,
    to_uint8_array,
    train_and_evaluate,
    train_eval_splits,
    with_example_index,
    write_model_card,
)

import hf_medmamba


logger = logging.getLogger(__name__)

PRESETS = {
    **dict.fromkeys(hf_medmamba.MEDMAMBA_PRESETS, hf_medmamba.MedMambaConfig),
    **dict.fromkeys(hf_medmamba.VMAMBA_PRESETS, hf_medmamba.VMambaConfig),
}
SCALAR_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc")


@dataclass
class ModelArguments:
    """Which model to fine-tune or train from scratch."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved or converted model folder (or Hub id) to fine-tune."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config.json file or folder: train this architecture from scratch."}
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "A model type with its default config, from scratch (e.g. 'convnext' = ConvNeXt-T)."},
    )
    preset: str | None = field(
        default=None, metadata={"help": "A MedMamba/VMamba preset, from scratch.", "choices": sorted(PRESETS)}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object (or .json file) of config settings, e.g. '{\"depths\": [1, 1, 1, 1]}'."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder (default: the model's, else the MedMamba one)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for datasets and Hub downloads."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from model folders that are not registered locally."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classifier whose size differs from the dataset's classes."}
    )


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to prepare it."""

    data_dir: str | None = field(default=None, metadata={"help": "A local imagefolder directory."})
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (instead of data_dir)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the class labels."})
    eval_split_name: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation, val or test, if present)."}
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no eval split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval examples."})
    image_size: int | None = field(
        default=None, metadata={"help": "Model input size in pixels (overrides the image processor's size)."}
    )
    augmentation: str = field(
        default="none",
        metadata={
            "help": "Training augmentation: 'medmamba' = RandomResizedCrop(image_size) + horizontal flip.",
            "choices": ["none", "medmamba"],
        },
    )


def class_names(dataset, label_column):
    """Class names from the `ClassLabel` feature, else the sorted distinct values of the column."""
    feature = dataset.features.get(label_column)
    if feature is None:
        raise ValueError(f"no column {label_column!r} (columns: {dataset.column_names}); set --label_column_name")
    if hasattr(feature, "names"):
        return list(feature.names), None
    names = sorted({str(v) for v in dataset[label_column]})
    return names, {name: i for i, name in enumerate(names)}


def build_config(model_args, id2label):
    """The config, from the first of model_name_or_path, config_name, model_type, preset; labels from the data."""
    kwargs = {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}
    kwargs.update(parse_json_argument(model_args.config_overrides, "--config_overrides") or {})
    common = {"cache_dir": model_args.cache_dir, "trust_remote_code": model_args.trust_remote_code}
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **common, **kwargs)
    if model_args.config_name:
        return AutoConfig.from_pretrained(model_args.config_name, **common, **kwargs)
    if model_args.model_type:
        return AutoConfig.for_model(model_args.model_type, **kwargs)
    if model_args.preset:
        return PRESETS[model_args.preset].from_preset(model_args.preset, **kwargs)
    raise ValueError("Give one of --model_name_or_path, --config_name, --model_type or --preset.")


def build_model(model_args, config):
    if model_args.model_name_or_path:
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
    return AutoModelForImageClassification.from_config(config, trust_remote_code=model_args.trust_remote_code)


def size_kwargs(image_size, center_crop):
    """Processor settings for an input of ``image_size`` pixels (resize + crop keeps VMamba's 256/224 ratio)."""
    if not image_size:
        return {}
    if center_crop:
        return {
            "size": {"shortest_edge": round(image_size * 256 / 224)},
            "crop_size": {"height": image_size, "width": image_size},
        }
    return {"size": {"height": image_size, "width": image_size}}


def build_processor(model_args, data_args, config):
    """The model's image processor, else MedMamba's (VMamba's for VMamba), sized to ``--image_size``."""
    source = model_args.image_processor_name or model_args.model_name_or_path
    if source:
        try:
            processor = AutoImageProcessor.from_pretrained(
                source, cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code
            )
        except OSError:
            if model_args.image_processor_name:
                raise
            processor = None  # a model folder without preprocessor_config.json
        if processor is not None:
            crop = bool(getattr(processor, "do_center_crop", False))
            for key, value in size_kwargs(data_args.image_size, crop).items():
                setattr(processor, key, value)
            return processor
    channels = getattr(config, "num_channels", 3)
    if config.model_type == "vmamba":
        return hf_medmamba.VMambaImageProcessor(num_channels=channels, **size_kwargs(data_args.image_size, True))
    return hf_medmamba.MedMambaImageProcessor(num_channels=channels, **size_kwargs(data_args.image_size, False))


def input_size(processor):
    """(height, width) of the model inputs the processor produces."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = dict(size)
    if size.get("height"):
        return size["height"], size["width"]
    return size["shortest_edge"], size["shortest_edge"]


def build_augmentation(name, size, seed):
    """The albumentations pipeline of ``name`` (None for 'none'), on 8-bit arrays before the processor."""
    if name == "none":
        return None
    import albumentations as A

    if name == "medmamba":  # torchvision's RandomResizedCrop(224) defaults: scale (0.08, 1), ratio (3/4, 4/3)
        compose = A.Compose([A.RandomResizedCrop(size=size), A.HorizontalFlip(p=0.5)])
        return SeededAugmentation(compose, seed)
    raise ValueError(f"unknown augmentation {name!r}")


class ClassificationTransform:
    """`datasets` on-the-fly transform: images -> (augmentation) -> processor -> ``pixel_values`` and ``labels``."""

    def __init__(self, processor, image_column, label_column, label2id=None, augmentation=None):
        self.processor, self.image_column, self.label_column = processor, image_column, label_column
        self.label2id, self.augmentation = label2id, augmentation

    def __call__(self, batch):
        window = getattr(self.processor, "window", None)
        images = [to_uint8_array(image, window) for image in batch[self.image_column]]
        if self.augmentation is not None:
            images = [self.augmentation(i, image=x)["image"] for i, x in zip(batch["example_index"], images)]
            # the crop already has the model's size: no resize, no centre crop
            pixel_values = self.processor(images, do_resize=False, do_center_crop=False)["pixel_values"]
        else:
            pixel_values = self.processor(images)["pixel_values"]
        labels = batch[self.label_column]
        if self.label2id is not None:
            labels = [self.label2id[str(label)] for label in labels]
        out = {"pixel_values": pixel_values, "labels": labels}
        if "example_index" in batch:
            out["example_index"] = batch["example_index"]
        return out


def collate_fn(examples):
    batch = {
        "pixel_values": torch.stack([torch.as_tensor(np.asarray(e["pixel_values"])) for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }
    if "example_index" in examples[0]:
        batch["example_index"] = torch.tensor([int(e["example_index"]) for e in examples])
    return batch


def compute_metrics(eval_prediction):
    """OA and macro precision, sensitivity, specificity, F1 and AUC (`hf_medmamba.metrics`)."""
    from hf_medmamba.metrics import classification_metrics  # scikit-learn and MONAI: imported only when needed

    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    metrics = classification_metrics(np.asarray(eval_prediction.label_ids).astype(np.int64), logits)
    return {key: metrics[key] for key in SCALAR_METRICS}


def write_report(output_dir, labels, logits, names):
    """Full metrics (per class, confusion matrix) as eval_report.json and the confusion matrix as a PNG."""
    from hf_medmamba.metrics import classification_metrics, plot_confusion_matrix

    metrics = classification_metrics(np.asarray(labels).astype(np.int64), logits, num_classes=len(names))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"class_names": names, **metrics}
    (output_dir / "eval_report.json").write_text(json.dumps(json_safe(report), indent=2))
    png = plot_confusion_matrix(metrics["confusion_matrix"], names, output_dir / "confusion_matrix.png")
    return report, png


def main(argv=None, callbacks=None):
    """Run the script with command-line arguments ``argv``; returns the metrics and the paths it wrote."""
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataTrainingArguments, RecipeTrainingArguments),
        argv,
        defaults={"do_train": True, "do_eval": True, "remove_unused_columns": False},
    )
    setup_logging(training_args, logger)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_image_datasets(data_args, model_args.cache_dir)
    train_dataset, eval_dataset, eval_split = train_eval_splits(dataset, data_args, training_args.seed)
    names, label2id = class_names(train_dataset, data_args.label_column_name)
    id2label = dict(enumerate(names))

    config = build_config(model_args, id2label)
    model = build_model(model_args, config)
    processor = build_processor(model_args, data_args, config)
    height, width = input_size(processor)
    logger.info(f"Model {type(model).__name__} ({model.num_parameters():,} parameters), input {height}x{width}")

    train_dataset = with_example_index(limit(train_dataset, data_args.max_train_samples, training_args.seed))
    eval_dataset = limit(eval_dataset, data_args.max_eval_samples, training_args.seed)
    log_process(training_args, len(train_dataset), len(eval_dataset))
    sizes = {"num_train_examples": len(train_dataset), "num_eval_examples": len(eval_dataset)}
    augmentation = build_augmentation(data_args.augmentation, (height, width), training_args.seed)
    columns = (data_args.image_column_name, data_args.label_column_name, label2id)
    train_transform = ClassificationTransform(processor, *columns, augmentation=augmentation)
    train_dataset = train_dataset.with_transform(train_transform)
    eval_dataset = eval_dataset.with_transform(ClassificationTransform(processor, *columns))

    trainer = make_trainer(
        model,
        training_args,
        callbacks=[*([AugmentationEpochCallback(augmentation)] if augmentation else []), *(callbacks or [])],
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )

    sizes["num_parameters"] = model.num_parameters()
    results = {"output_dir": training_args.output_dir, "class_names": names, "trainer": trainer, **sizes}
    prediction = train_and_evaluate(trainer, processor, eval_dataset, results)
    if prediction is not None and trainer.is_world_process_zero():
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        report, png = write_report(training_args.output_dir, prediction.label_ids, logits, names)
        results["eval_report"], results["confusion_matrix_png"] = report, str(png)
        logger.info(f"Confusion matrix (rows true, columns predicted) {names}: {report['confusion_matrix']}")

    if training_args.do_train and trainer.is_world_process_zero():
        run = {"task": "image-classification", "eval_split": eval_split, **sizes}
        results["model_card"] = write_model_card(trainer, model_args, data_args, run, results.get("eval"))
    return results


if __name__ == "__main__":
    main()

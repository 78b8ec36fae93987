"""Fine-tune (or train from scratch) MedMamba, VMamba or any `AutoModelForImageClassification` with the `Trainer`.

Arguments follow transformers' ``examples/pytorch/image-classification/run_image_classification.py``: ``--do_train``,
``--do_eval`` and ``--do_predict`` are off unless given, and a run resumes from the last checkpoint in
``--output_dir`` unless ``--overwrite_output_dir`` is given.

Data, exactly one of: ``--dataset_name`` (a Hub dataset, or a local dataset folder), ``--train_dir`` /
``--validation_dir`` (one imagefolder per split), ``--data_dir`` (an imagefolder with ``train/`` and ``test/`` or
``validation/`` sub-folders) or ``--medmnist_file`` (a MedMNIST v2 ``.npz`` with its official train / validation /
test split). Class names come from the dataset's `ClassLabel` (MedMNIST: ``--id2label`` or MedMNIST's own names).
The evaluation split (``--do_eval``, and checkpoint selection with ``--load_best_model_at_end``) is the validation
split when there is one; ``--do_predict`` reports on a separate test split.

Model, first match wins: ``--model_name_or_path`` (a saved or converted folder, or a Hub id with
``--model_revision`` and ``--token``), ``--config_name`` (a config file or folder, random init), ``--model_type``
(any transformers model type with the default config, e.g. ``convnext``, random init), ``--preset``
(``medmamba-t/s/b``, ``vmamba-s``, random init). ``--config_overrides`` takes a JSON object of config settings.

``--recipe medmamba`` fills the upstream MedMamba defaults (Adam 1e-4, constant LR, batch 32, 100 epochs,
RandomResizedCrop + horizontal flip, 224 px); explicit arguments override it.

    python examples/run_image_classification.py --medmnist_file examples/data/medmnist/breastmnist.npz \\
        --recipe medmamba --image_size 64 --do_train --do_eval --do_predict --eval_strategy epoch \\
        --save_strategy epoch --load_best_model_at_end --metric_for_best_model auc --output_dir outputs/breastmnist

Distributed (on CPU the script sets ``use_cpu`` itself, so this runs two gloo processes):

    torchrun --nproc_per_node 2 examples/run_image_classification.py ...

Writes to ``output_dir``: the model and its image processor (loadable with
``pipeline("image-classification", model=output_dir, trust_remote_code=True)``), ``all_results.json`` (``eval_*`` and
``test_*`` metrics, AUC included), ``eval_report.json`` / ``test_report.json`` (per-class metrics and the confusion
matrix), the confusion matrices as PNG and, for MedMamba and VMamba, a model card. ``--push_to_hub`` (with
``--hub_model_id``, ``--hub_private_repo``, ``--hub_token``) uploads that folder once, after evaluation.
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

from example_data import (
    ImageDataArguments,
    SeededAugmentation,
    check_splits,
    load_image_datasets,
    prepare_splits,
    split_roles,
    to_uint8_array,
)
from example_publishing import HubPublisher, finish_run, take_hub_settings
from example_training import AugmentationEpochCallback, make_trainer, train_and_evaluate
from example_utils import (
    ModelLoadingArguments,
    RecipeTrainingArguments,
    hub_kwargs,
    json_safe,
    log_process,
    parse_arguments,
    parse_json_argument,
    setup_logging,
)

import hf_medmamba


logger = logging.getLogger(__name__)

PRESETS = {
    **dict.fromkeys(hf_medmamba.MEDMAMBA_PRESETS, hf_medmamba.MedMambaConfig),
    **dict.fromkeys(hf_medmamba.VMAMBA_PRESETS, hf_medmamba.VMambaConfig),
}
SCALAR_METRICS = ("accuracy", "precision", "sensitivity", "specificity", "f1", "auc")


@dataclass
class ModelArguments(ModelLoadingArguments):
    """Which model to fine-tune or train from scratch."""

    preset: str | None = field(
        default=None, metadata={"help": "A MedMamba/VMamba preset, from scratch.", "choices": sorted(PRESETS)}
    )


@dataclass
class DataTrainingArguments(ImageDataArguments):
    """Which data to train and evaluate on, and how to prepare it."""

    medmnist_file: str | None = field(
        default=None,
        metadata={"help": "A MedMNIST v2 .npz file: its official train / validation / test split is used."},
    )
    label_column_name: str = field(default="label", metadata={"help": "The column holding the class labels."})
    id2label: str | None = field(
        default=None,
        metadata={
            "help": 'Class names of a --medmnist_file, JSON inline or a .json file: {"0": "malignant", ...} '
            "(default: MedMNIST's names for BreastMNIST and PneumoniaMNIST, else the class indices)."
        },
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
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs(model_args), **kwargs)
    if model_args.config_name:
        return AutoConfig.from_pretrained(model_args.config_name, **hub_kwargs(model_args), **kwargs)
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
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **hub_kwargs(model_args),
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
            processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs(model_args))
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
    """OA and macro precision, sensitivity, specificity, F1 and AUC (`hf_medmamba.tools.metrics`)."""
    from hf_medmamba.tools.metrics import classification_metrics  # scikit-learn and MONAI: imported only when needed

    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    metrics = classification_metrics(np.asarray(eval_prediction.label_ids).astype(np.int64), logits)
    return {key: metrics[key] for key in SCALAR_METRICS}


def write_report(output_dir, prediction, names, prefix):
    """Full metrics of a prediction (per class, confusion matrix) as ``{prefix}_report.json`` and the confusion matrix
    as a PNG (``confusion_matrix.png`` for the evaluation split, ``test_confusion_matrix.png`` for the test split)."""
    from hf_medmamba.tools.metrics import classification_metrics, plot_confusion_matrix

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    labels = np.asarray(prediction.label_ids).astype(np.int64)
    metrics = classification_metrics(labels, logits, num_classes=len(names))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"class_names": names, **metrics}
    (output_dir / f"{prefix}_report.json").write_text(json.dumps(json_safe(report), indent=2))
    png_name = "confusion_matrix.png" if prefix == "eval" else f"{prefix}_confusion_matrix.png"
    png = plot_confusion_matrix(metrics["confusion_matrix"], names, output_dir / png_name)
    logger.info(f"Confusion matrix on {prefix} (rows true, columns predicted) {names}: {report['confusion_matrix']}")
    return report, str(png)


def main(argv=None, callbacks=None):
    """Run the script with command-line arguments ``argv``; returns the metrics and the paths it wrote."""
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataTrainingArguments, RecipeTrainingArguments), argv
    )
    hub = take_hub_settings(training_args)
    setup_logging(training_args, logger)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    id2label = parse_json_argument(data_args.id2label, "--id2label")
    if id2label is not None and not data_args.medmnist_file:
        raise ValueError("--id2label names the classes of a --medmnist_file; imagefolders and datasets name their own")
    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_image_datasets(data_args, model_args.cache_dir, model_args.token, id2label)
    splits = split_roles(dataset, data_args, training_args.seed)
    check_splits(splits, training_args)
    names, label2id = class_names(splits.eval if splits.train is None else splits.train, data_args.label_column_name)
    id2label = dict(enumerate(names))

    config = build_config(model_args, id2label)
    publisher = HubPublisher.prepare(hub, config, training_args)
    model = build_model(model_args, config)
    processor = build_processor(model_args, data_args, config)
    height, width = input_size(processor)
    logger.info(f"Model {type(model).__name__} ({model.num_parameters():,} parameters), input {height}x{width}")

    augmentation = build_augmentation(data_args.augmentation, (height, width), training_args.seed)
    columns = (data_args.image_column_name, data_args.label_column_name, label2id)
    sizes = prepare_splits(
        splits,
        data_args,
        training_args.seed,
        ClassificationTransform(processor, *columns),
        ClassificationTransform(processor, *columns, augmentation),
    )
    log_process(training_args, sizes["num_train_examples"], sizes["num_eval_examples"])

    trainer = make_trainer(
        model,
        training_args,
        callbacks=[*([AugmentationEpochCallback(augmentation)] if augmentation else []), *(callbacks or [])],
        train_dataset=splits.train if training_args.do_train else None,
        eval_dataset=splits.eval if training_args.do_eval else None,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        processing_class=processor,
    )

    sizes["num_parameters"] = model.num_parameters()
    results = {"output_dir": training_args.output_dir, "class_names": names, "trainer": trainer, **sizes}
    predictions = train_and_evaluate(trainer, processor, splits, results)
    if not trainer.is_world_process_zero():
        return results
    for prefix, prediction in predictions.items():
        if prediction is not None:
            results[f"{prefix}_report"], results[f"{prefix}_confusion_matrix_png"] = write_report(
                training_args.output_dir, prediction, names, prefix
            )
    finish_run(trainer, model_args, data_args, splits, results, "classification", publisher)
    return results


if __name__ == "__main__":
    main()

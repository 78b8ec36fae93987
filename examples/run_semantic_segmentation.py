"""Fine-tune (or train from scratch) VM-UNet, or any `AutoModelForSemanticSegmentation`, with the `Trainer`.

Data: a local imagefolder (``--data_dir``) whose ``metadata.csv`` names a mask per image (``mask_file_name`` becomes
the ``mask`` column, ``label_file_name`` the ``label`` column; the mask column is found automatically or given with
``--mask_column_name``), or a dataset on the Hub (``--dataset_name``). Masks are {0, 255} or {0, 1} images for binary
tasks and class-index images otherwise. Class names: ``--id2label`` (JSON inline or a .json file), else the preset's
or the model's, else ``{0: background, 1: lesion}``.

Model, first match wins: ``--model_name_or_path`` (a saved or converted folder), ``--config_name`` (config file or
folder, random init), ``--model_type`` (any transformers model type with its default config, e.g. ``segformer`` =
SegFormer-B0, random init), ``--preset`` (``vmunet-paper``, ``vmunet-default``, ``vmunet-synapse``, random init).
``--encoder_name_or_path`` initialises a VM-UNet from a converted VMamba folder as upstream ``load_from`` does.

Recipes (explicit arguments override them): ``--recipe isic`` (AdamW 1e-3, wd 1e-2, cosine T_max 50 stepped per
epoch, 300 epochs, batch 32, flips + rotation, 256 px, BCE + Dice) and ``--recipe synapse`` (the same with T_max 100,
224 px, 9 classes, 1 channel, CE + Dice, rot90/flip or rotation).

    python examples/run_semantic_segmentation.py --data_dir examples/data/busi_seg --preset vmunet-paper \\
        --recipe isic --output_dir outputs/vmunet-busi

Writes to ``output_dir``: the model and its image processor (loadable with
``pipeline("image-segmentation", model=output_dir, trust_remote_code=True)``), ``all_results.json`` and
``overlays/`` (true and predicted masks on a few evaluation images).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation, set_seed
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
    mask_array,
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
from hf_medmamba.configuration_vmunet import BINARY_LABELS
from hf_medmamba.image_processing_common import check_window


logger = logging.getLogger(__name__)

MASK_COLUMNS = ("mask", "label", "annotation", "segmentation_map", "semantic_segmentation", "seg")
BINARY_METRICS = ("miou", "dsc", "accuracy", "specificity", "sensitivity", "mean_image_dice")
# fmt: off
PALETTE = np.array([
    [0, 0, 0], [255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255], [0, 220, 220],
    [255, 128, 0], [128, 255, 128], [255, 128, 200], [160, 160, 255],
], dtype=np.uint8)  # overlay colours of classes 0, 1, 2, ...
# fmt: on


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
        metadata={"help": "A model type with its default config, from scratch (e.g. 'segformer' = SegFormer-B0)."},
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "A VM-UNet preset, from scratch.", "choices": sorted(hf_medmamba.VMUNET_PRESETS)},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object (or .json file) of config settings, e.g. '{\"depths\": [1, 1, 1, 1]}'."},
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A VMamba folder (VMambaForImageClassification or VMambaModel, e.g. converted VMamba-S) whose "
            "weights initialise the VM-UNet encoder, and the decoder's stage 3-i blocks from encoder stage i."
        },
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder (default: the model's, else VMUNetImageProcessor)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for datasets and Hub downloads."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from model folders that are not registered locally."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a head whose size differs from the dataset's classes."}
    )


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to prepare it."""

    data_dir: str | None = field(default=None, metadata={"help": "A local imagefolder directory with masks."})
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (instead of data_dir)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    mask_column_name: str | None = field(
        default=None, metadata={"help": f"The column holding the masks (default: the first of {MASK_COLUMNS})."}
    )
    id2label: str | None = field(
        default=None, metadata={"help": 'Class names, JSON inline or a .json file: {"0": "background", ...}.'}
    )
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
    normalization_mode: str | None = field(
        default=None,
        metadata={
            "help": "VMUNetImageProcessor normalisation for new processors: 'isic' (per-image min-max to [0, 255], "
            "default for 3 channels) or 'standard' (rescale + mean/std, default for 1 channel).",
            "choices": ["isic", "standard"],
        },
    )
    window: list[float] | None = field(
        default=None,
        metadata={
            "help": "Intensity window LOW HIGH stored in the image processor (CT: HU; the synapse recipe: -125 275). "
            "The processor clips data that is not 8-bit (HU slices, volumes) to it and scales it to [0, 1]; 8-bit "
            "images such as the bundled PNG slices are already windowed and pass unchanged."
        },
    )
    augmentation: str = field(
        default="none",
        metadata={
            "help": "Training augmentation: 'isic' = h/v flips (p 0.5) + rotation (p 0.5); 'synapse' = rot90 + "
            "flip (p 0.5) or rotation in [-20, 20] degrees (p 0.25).",
            "choices": ["none", "isic", "synapse"],
        },
    )
    num_overlays: int = field(default=4, metadata={"help": "How many evaluation images to draw overlays for."})


def find_mask_column(dataset, name):
    if name:
        if name not in dataset.column_names:
            raise ValueError(f"no column {name!r} (columns: {dataset.column_names})")
        return name
    for candidate in MASK_COLUMNS:
        if candidate in dataset.column_names:
            return candidate
    raise ValueError(f"no mask column among {dataset.column_names}; set --mask_column_name")


def default_labels(model_args, data_args):
    """id2label from --id2label, else the preset's, else None for a saved model or config, else binary."""
    given = parse_json_argument(data_args.id2label, "--id2label")
    if given is not None:
        return {int(k): str(v) for k, v in given.items()}
    if model_args.model_name_or_path or model_args.config_name:
        return None
    if model_args.preset and not model_args.model_type:
        return dict(hf_medmamba.VMUNET_PRESETS[model_args.preset].get("id2label", BINARY_LABELS))
    return dict(BINARY_LABELS)


def build_config(model_args, id2label):
    """The config, from the first of model_name_or_path, config_name, model_type, preset."""
    kwargs = {}
    if id2label is not None:
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
        return hf_medmamba.VMUNetConfig.from_preset(model_args.preset, **kwargs)
    raise ValueError("Give one of --model_name_or_path, --config_name, --model_type or --preset.")


def build_model(model_args, config):
    if model_args.model_name_or_path:
        return AutoModelForSemanticSegmentation.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            cache_dir=model_args.cache_dir,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
    return AutoModelForSemanticSegmentation.from_config(config, trust_remote_code=model_args.trust_remote_code)


def init_from_vmamba(model_args, config):
    """A VM-UNet for ``config`` initialised from a VMamba folder as upstream ``VMUNet.load_from`` does, with
    `hf_medmamba.convert.init_vmunet_from_vmamba`: encoder tensors copied by name (patch embedding, stage blocks up to
    the model's depth, patch merging), decoder stage 3-i blocks from encoder stage i blocks; VMamba's norm and head,
    the decoder's upsampling, ``final_up`` and ``final_conv`` keep their random initialisation."""
    from hf_medmamba.convert import init_vmunet_from_vmamba

    if config.model_type != "vmunet":
        raise ValueError(f"--encoder_name_or_path initialises a VM-UNet, not a {config.model_type} model")
    if model_args.model_name_or_path:
        raise ValueError("give either --model_name_or_path or --encoder_name_or_path, not both")
    encoder = AutoModel.from_pretrained(
        model_args.encoder_name_or_path,
        cache_dir=model_args.cache_dir,
        trust_remote_code=model_args.trust_remote_code,
    )
    model, report = init_vmunet_from_vmamba(encoder.state_dict(), config)
    logger.info(f"Initialised from {model_args.encoder_name_or_path}:\n{report.summary()}")
    return model.train()


def build_processor(model_args, data_args, config, mask_mode):
    """The model's image processor, else a `VMUNetImageProcessor` for this data, sized to ``--image_size``."""
    size = {"height": data_args.image_size, "width": data_args.image_size} if data_args.image_size else None
    source = model_args.image_processor_name or model_args.model_name_or_path
    processor = None
    if source:
        try:
            processor = AutoImageProcessor.from_pretrained(
                source, cache_dir=model_args.cache_dir, trust_remote_code=model_args.trust_remote_code
            )
        except OSError:
            if model_args.image_processor_name:
                raise
    window = list(check_window(data_args.window)) if data_args.window else None
    if processor is not None:
        if size:
            processor.size = size
        if window and hasattr(processor, "window"):
            processor.window = window
        if hasattr(processor, "mask_mode"):
            processor.mask_mode = mask_mode
        return processor
    channels = getattr(config, "num_channels", 3)
    mode = data_args.normalization_mode or ("standard" if channels == 1 else "isic")
    kwargs = {"size": size} if size else {}
    if window:
        kwargs["window"] = window
    return hf_medmamba.VMUNetImageProcessor(
        num_channels=channels, normalization_mode=mode, mask_mode=mask_mode, **kwargs
    )


def build_augmentation(name, seed):
    """The albumentations pipeline of ``name`` (None for 'none'); images and masks move together."""
    if name == "none":
        return None
    import albumentations as A

    if name == "isic":
        # upstream draws its rotation angle once per run (a quirk); here every image draws its own in [0, 360)
        compose = A.Compose(
            [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.Rotate(limit=(0, 360), p=0.5, fill=0, fill_mask=0)]
        )
    elif name == "synapse":
        # upstream: with p 0.5 rot90 (k random) + a flip, else with p 0.5 a rotation in [-20, 20] degrees
        rot_flip = A.Compose(
            [A.RandomRotate90(p=1.0), A.OneOf([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)], p=1.0)], p=2 / 3
        )
        rotate = A.Rotate(limit=(-20, 20), p=1 / 3, fill=0, fill_mask=0)
        compose = A.Compose([A.OneOf([rot_flip, rotate], p=0.75)])
    else:
        raise ValueError(f"unknown augmentation {name!r}")
    return SeededAugmentation(compose, seed)


class SegmentationTransform:
    """`datasets` on-the-fly transform: image and mask -> augmentation -> processor -> ``pixel_values``, ``labels``."""

    def __init__(self, processor, image_column, mask_column, augmentation=None):
        self.processor, self.image_column, self.mask_column = processor, image_column, mask_column
        self.augmentation = augmentation

    def __call__(self, batch):
        window = getattr(self.processor, "window", None)
        images = [to_uint8_array(image, window) for image in batch[self.image_column]]
        masks = [mask_array(mask) for mask in batch[self.mask_column]]
        if self.augmentation is not None:
            pairs = [self.augmentation(i, image=x, mask=m) for i, x, m in zip(batch["example_index"], images, masks)]
            images, masks = [p["image"] for p in pairs], [p["mask"] for p in pairs]
        encoded = self.processor(images, segmentation_maps=masks)
        out = {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}
        if "example_index" in batch:
            out["example_index"] = batch["example_index"]
        return out


def collate_fn(examples):
    batch = {
        "pixel_values": torch.stack([torch.as_tensor(np.asarray(e["pixel_values"])) for e in examples]),
        "labels": torch.stack([torch.as_tensor(np.asarray(e["labels"]), dtype=torch.long) for e in examples]),
    }
    if "example_index" in examples[0]:
        batch["example_index"] = torch.tensor([int(e["example_index"]) for e in examples])
    return batch


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


def make_compute_metrics(id2label, ignore_index=255):
    """Binary: the ISIC pooled mIoU, DSC, accuracy, specificity, sensitivity and the mean per-image Dice
    (`hf_medmamba.metrics.binary_segmentation_metrics`); multi-class: per-class and mean Dice and pixel accuracy
    over all pixels (`hf_medmamba.metrics.multiclass_segmentation_metrics`)."""

    def compute_metrics(eval_prediction):
        from hf_medmamba.metrics import binary_segmentation_metrics, multiclass_segmentation_metrics  # needs MONAI

        predictions = np.asarray(eval_prediction.predictions)
        labels = np.asarray(eval_prediction.label_ids)
        if len(id2label) > 2:
            result = multiclass_segmentation_metrics(predictions, labels, len(id2label), ignore_index)
            metrics = {f"dice_{id2label[k].replace(' ', '_')}": dice for k, dice in enumerate(result["dice"]) if k}
            return {**metrics, "mean_dice": result["mean_dice"], "pixel_accuracy": result["pixel_accuracy"]}
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
    mask_column = find_mask_column(train_dataset, data_args.mask_column_name)

    config = build_config(model_args, default_labels(model_args, data_args))
    id2label = {int(k): v for k, v in config.id2label.items()}
    if model_args.encoder_name_or_path:
        model = init_from_vmamba(model_args, config)
    else:
        model = build_model(model_args, config)
    mask_mode = "binary" if len(id2label) == 2 else "index"
    processor = build_processor(model_args, data_args, config, mask_mode)
    logger.info(f"Model {type(model).__name__} ({model.num_parameters():,} parameters), classes {id2label}")

    train_dataset = with_example_index(limit(train_dataset, data_args.max_train_samples, training_args.seed))
    eval_dataset = limit(eval_dataset, data_args.max_eval_samples, training_args.seed)
    raw_eval = eval_dataset
    log_process(training_args, len(train_dataset), len(eval_dataset))
    sizes = {"num_train_examples": len(train_dataset), "num_eval_examples": len(eval_dataset)}
    augmentation = build_augmentation(data_args.augmentation, training_args.seed)
    columns = (data_args.image_column_name, mask_column)
    train_dataset = train_dataset.with_transform(SegmentationTransform(processor, *columns, augmentation))
    eval_dataset = eval_dataset.with_transform(SegmentationTransform(processor, *columns))

    ignore_index = getattr(config, "semantic_loss_ignore_index", 255)
    trainer = make_trainer(
        model,
        training_args,
        callbacks=[*([AugmentationEpochCallback(augmentation)] if augmentation else []), *(callbacks or [])],
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        data_collator=collate_fn,
        compute_metrics=make_compute_metrics(id2label, ignore_index),
        preprocess_logits_for_metrics=reduce_logits,
        processing_class=processor,
    )

    sizes["num_parameters"] = model.num_parameters()
    results = {"output_dir": training_args.output_dir, "id2label": id2label, "trainer": trainer, **sizes}
    prediction = train_and_evaluate(trainer, processor, eval_dataset, results)
    if prediction is not None and trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "eval_report.json").write_text(
            json.dumps(json_safe({"id2label": id2label, **prediction.metrics}), indent=2)
        )
        count = min(data_args.num_overlays, len(raw_eval))
        if count > 0:
            results["overlays"] = write_overlays(
                output_dir / "overlays",
                raw_eval.select(range(count)),
                prediction.predictions[:count],
                data_args.image_column_name,
                mask_column,
                id2label,
                mask_mode,
            )

    if training_args.do_train and trainer.is_world_process_zero():
        run = {"task": "image-segmentation", "eval_split": eval_split, **sizes}
        results["model_card"] = write_model_card(trainer, model_args, data_args, run, results.get("eval"))
    return results


if __name__ == "__main__":
    main()

"""Fine-tune (or train from scratch) VM-UNet, or any `AutoModelForSemanticSegmentation`, with the `Trainer`.

Arguments follow transformers' ``examples/pytorch/semantic-segmentation/run_semantic_segmentation.py``:
``--do_train``, ``--do_eval`` and ``--do_predict`` are off unless given, ``--do_reduce_labels`` ignores mask value 0
and shifts the others down by one, and a run resumes from the last checkpoint in ``--output_dir`` unless
``--overwrite_output_dir`` is given.

Data, exactly one of: ``--dataset_name`` (a Hub dataset, or a local dataset folder), ``--train_dir`` /
``--validation_dir`` (one imagefolder per split) or ``--data_dir`` (an imagefolder with split sub-folders). An
imagefolder's ``metadata.csv`` names a mask per image (``mask_file_name`` becomes the ``mask`` column,
``label_file_name`` the ``label`` column; the mask column is found automatically or given with
``--mask_column_name``). Masks are {0, 255} or {0, 1} images for binary tasks and class-index images otherwise.
Class names: ``--id2label`` (JSON inline or a .json file), else the dataset's ``id2label.json`` (at the top of the Hub
dataset repository, or in the local dataset folder), else the model's or the preset's, else
``{0: background, 1: lesion}``.

Model, first match wins: ``--model_name_or_path`` (a saved or converted folder, or a Hub id with
``--model_revision`` and ``--token``), ``--config_name`` (config file or folder, random init), ``--model_type`` (any
transformers model type with its default config, e.g. ``segformer`` = SegFormer-B0, random init), ``--preset``
(``vmunet-paper``, ``vmunet-default``, ``vmunet-synapse``, random init). ``--encoder_name_or_path`` initialises a
VM-UNet from a converted VMamba folder as upstream ``load_from`` does.

Recipes (explicit arguments override them): ``--recipe isic`` (AdamW 1e-3, wd 1e-2, cosine T_max 50 stepped per
epoch, 300 epochs, batch 32, flips + rotation, 256 px, BCE + Dice) and ``--recipe synapse`` (the same with T_max 100,
224 px, 9 classes, 1 channel, CE + Dice, rot90/flip or rotation).

    python examples/run_semantic_segmentation.py --data_dir examples/data/busi_seg --preset vmunet-paper \\
        --recipe isic --do_train --do_eval --output_dir outputs/vmunet-busi

Writes to ``output_dir``: the model and its image processor (loadable with
``pipeline("image-segmentation", model=output_dir, trust_remote_code=True)``), ``all_results.json``,
``eval_report.json`` / ``test_report.json``, ``overlays/`` (true and predicted masks on a few evaluation images) and,
for VM-UNet, a model card. ``--push_to_hub`` (with ``--hub_model_id``, ``--hub_private_repo``, ``--hub_token``)
uploads that folder once, after evaluation.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSemanticSegmentation, set_seed
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # 5.17 exports a torchvision stub


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from example_data import (
    ImageDataArguments,
    SeededAugmentation,
    check_splits,
    dataset_id2label,
    load_image_datasets,
    mask_array,
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
from segmentation_evaluation import make_compute_metrics, reduce_logits, write_overlays

import hf_medmamba
from hf_medmamba.configuration_vmunet import BINARY_LABELS
from hf_medmamba.image_processing_common import check_window


logger = logging.getLogger(__name__)

MASK_COLUMNS = ("mask", "label", "annotation", "segmentation_map", "semantic_segmentation", "seg")


@dataclass
class ModelArguments(ModelLoadingArguments):
    """Which model to fine-tune or train from scratch."""

    preset: str | None = field(
        default=None,
        metadata={"help": "A VM-UNet preset, from scratch.", "choices": sorted(hf_medmamba.VMUNET_PRESETS)},
    )
    encoder_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A VMamba folder (VMambaForImageClassification or VMambaModel, e.g. converted VMamba-S) whose "
            "weights initialise the VM-UNet encoder, and the decoder's stage 3-i blocks from encoder stage i."
        },
    )


@dataclass
class DataTrainingArguments(ImageDataArguments):
    """Which data to train and evaluate on, and how to prepare it."""

    mask_column_name: str | None = field(
        default=None, metadata={"help": f"The column holding the masks (default: the first of {MASK_COLUMNS})."}
    )
    id2label: str | None = field(
        default=None,
        metadata={
            "help": 'Class names, JSON inline or a .json file: {"0": "background", ...} (default: the dataset\'s '
            "id2label.json, else the model's or the preset's, else background / lesion)."
        },
    )
    do_reduce_labels: bool = field(
        default=False,
        metadata={
            "help": "Class-index masks: mask value 0 becomes 255 (ignored) and every other value drops by one "
            "(transformers' convention, e.g. ADE20K); the class names then describe the reduced labels."
        },
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
    """id2label from --id2label, else the dataset's id2label.json, else None for a saved model or config (which keeps
    its own), else the preset's, else binary."""
    given = parse_json_argument(data_args.id2label, "--id2label")
    if given is not None:
        return {int(k): str(v) for k, v in given.items()}
    from_dataset = dataset_id2label(data_args, model_args.cache_dir, model_args.token)
    if from_dataset is not None:
        return from_dataset
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
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(model_args.model_name_or_path, **hub_kwargs(model_args), **kwargs)
    if model_args.config_name:
        return AutoConfig.from_pretrained(model_args.config_name, **hub_kwargs(model_args), **kwargs)
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
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **hub_kwargs(model_args),
        )
    return AutoModelForSemanticSegmentation.from_config(config, trust_remote_code=model_args.trust_remote_code)


def init_from_vmamba(model_args, config):
    """A VM-UNet for ``config`` initialised from a VMamba folder as upstream ``VMUNet.load_from`` does, with
    `hf_medmamba.tools.vmunet_init.init_vmunet_from_vmamba`: encoder tensors copied by name (patch embedding, stage
    blocks up to the model's depth, patch merging), decoder stage 3-i blocks from encoder stage i blocks; VMamba's norm
    and head, the decoder's upsampling, ``final_up`` and ``final_conv`` keep their random initialisation."""
    from hf_medmamba.tools.vmunet_init import init_vmunet_from_vmamba

    if config.model_type != "vmunet":
        raise ValueError(f"--encoder_name_or_path initialises a VM-UNet, not a {config.model_type} model")
    if model_args.model_name_or_path:
        raise ValueError("give either --model_name_or_path or --encoder_name_or_path, not both")
    encoder = AutoModel.from_pretrained(
        model_args.encoder_name_or_path,
        cache_dir=model_args.cache_dir,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )
    model, report = init_vmunet_from_vmamba(encoder.state_dict(), config)
    logger.info(f"Initialised from {model_args.encoder_name_or_path}:\n{report.summary()}")
    return model.train()


def build_processor(model_args, data_args, config, mask_mode):
    """The model's image processor, else a `VMUNetImageProcessor` for this data, sized to ``--image_size``, reducing
    the labels with ``--do_reduce_labels``."""
    size = {"height": data_args.image_size, "width": data_args.image_size} if data_args.image_size else None
    source = model_args.image_processor_name or model_args.model_name_or_path
    processor = None
    if source:
        try:
            processor = AutoImageProcessor.from_pretrained(source, **hub_kwargs(model_args))
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
        if hasattr(processor, "do_reduce_labels"):
            processor.do_reduce_labels = data_args.do_reduce_labels
        elif data_args.do_reduce_labels:
            raise ValueError(f"--do_reduce_labels: {type(processor).__name__} cannot reduce labels")
        return processor
    channels = getattr(config, "num_channels", 3)
    mode = data_args.normalization_mode or ("standard" if channels == 1 else "isic")
    kwargs = {"size": size} if size else {}
    if window:
        kwargs["window"] = window
    return hf_medmamba.VMUNetImageProcessor(
        num_channels=channels,
        normalization_mode=mode,
        mask_mode=mask_mode,
        do_reduce_labels=data_args.do_reduce_labels,
        **kwargs,
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


def main(argv=None, callbacks=None):
    """Run the script with command-line arguments ``argv``; returns the metrics and the paths it wrote."""
    model_args, data_args, training_args = parse_arguments(
        (ModelArguments, DataTrainingArguments, RecipeTrainingArguments), argv
    )
    hub = take_hub_settings(training_args)
    setup_logging(training_args, logger)
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        dataset = load_image_datasets(data_args, model_args.cache_dir, model_args.token)
    splits = split_roles(dataset, data_args, training_args.seed)
    check_splits(splits, training_args)
    mask_column = find_mask_column(splits.eval, data_args.mask_column_name)

    config = build_config(model_args, default_labels(model_args, data_args))
    publisher = HubPublisher.prepare(hub, config, training_args)
    id2label = {int(k): v for k, v in config.id2label.items()}
    if model_args.encoder_name_or_path:
        model = init_from_vmamba(model_args, config)
    else:
        model = build_model(model_args, config)
    mask_mode = "binary" if len(id2label) == 2 and not data_args.do_reduce_labels else "index"
    processor = build_processor(model_args, data_args, config, mask_mode)
    logger.info(f"Model {type(model).__name__} ({model.num_parameters():,} parameters), classes {id2label}")

    augmentation = build_augmentation(data_args.augmentation, training_args.seed)
    columns = (data_args.image_column_name, mask_column)
    sizes = prepare_splits(
        splits,
        data_args,
        training_args.seed,
        SegmentationTransform(processor, *columns),
        SegmentationTransform(processor, *columns, augmentation),
    )
    log_process(training_args, sizes["num_train_examples"], sizes["num_eval_examples"])

    ignore_index = getattr(config, "semantic_loss_ignore_index", 255)
    trainer = make_trainer(
        model,
        training_args,
        callbacks=[*([AugmentationEpochCallback(augmentation)] if augmentation else []), *(callbacks or [])],
        train_dataset=splits.train if training_args.do_train else None,
        eval_dataset=splits.eval if training_args.do_eval else None,
        data_collator=collate_fn,
        compute_metrics=make_compute_metrics(id2label, ignore_index, data_args.do_reduce_labels),
        preprocess_logits_for_metrics=reduce_logits,
        processing_class=processor,
    )

    sizes["num_parameters"] = model.num_parameters()
    results = {"output_dir": training_args.output_dir, "id2label": id2label, "trainer": trainer, **sizes}
    predictions = train_and_evaluate(trainer, processor, splits, results)
    if not trainer.is_world_process_zero():
        return results
    output_dir = Path(training_args.output_dir)
    for prefix, prediction in predictions.items():
        if prediction is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            report = json_safe({"id2label": id2label, **prediction.metrics})
            (output_dir / f"{prefix}_report.json").write_text(json.dumps(report, indent=2))
    count = min(data_args.num_overlays, len(splits.eval))
    if predictions["eval"] is not None and count > 0:
        results["overlays"] = write_overlays(
            output_dir / "overlays",
            splits.eval.with_format(None).select(range(count)),  # the images and masks as loaded
            predictions["eval"].predictions[:count],
            data_args.image_column_name,
            mask_column,
            id2label,
            mask_mode,
        )
    card_metrics = "binary-segmentation" if mask_mode == "binary" else "multiclass-segmentation"
    finish_run(trainer, model_args, data_args, splits, results, card_metrics, publisher)
    return results


if __name__ == "__main__":
    main()

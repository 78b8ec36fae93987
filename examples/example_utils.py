"""What `run_image_classification.py` and `run_semantic_segmentation.py` share: the upstream training recipes, the
argument parsing that applies them, the exact upstream optimizers and the per-epoch cosine schedule, a `Trainer`
subclass that uses them, data loading from `datasets`, reproducible augmentation and the per-process logging of
distributed runs.

Nothing here downloads anything, and nothing needs torchvision.
"""

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from hf_medmamba.image_processing_common import apply_window


os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would otherwise ask PyPI for its version

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Recipes. A recipe's "preset" is only the default architecture: --model_name_or_path, --config_name and
# --model_type take precedence over it (so a ConvNeXt or SegFormer trains with exactly the same recipe).
# ----------------------------------------------------------------------------------------------------------------------

_UPSTREAM_ADAMW = {
    "torch_optimizer": "adamw",
    "learning_rate": 1e-3,
    "weight_decay": 1e-2,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "epoch_cosine_eta_min": 1e-5,
    "warmup_steps": 0,
    "num_train_epochs": 300,
    "per_device_train_batch_size": 32,
    "seed": 42,
}

RECIPES = {
    # MedMamba `train.py`: Adam(lr 1e-4), no weight decay, no scheduler, batch 32, 100 epochs,
    # RandomResizedCrop(224) + horizontal flip, mean = std = 0.5 (the processor's defaults).
    "medmamba": {
        "torch_optimizer": "adam",
        "learning_rate": 1e-4,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "num_train_epochs": 100,
        "per_device_train_batch_size": 32,
        "augmentation": "medmamba",
        "image_size": 224,
        "preset": "medmamba-t",
    },
    # VM-UNet ISIC 2017/2018: AdamW(1e-3, wd 1e-2), CosineAnnealingLR(T_max 50, eta_min 1e-5) stepped once per epoch,
    # 300 epochs, batch 32, flips + rotation, 256 px, BCE + Dice (the model's loss with the one-channel head).
    "isic": {
        **_UPSTREAM_ADAMW,
        "epoch_cosine_t_max": 50,
        "augmentation": "isic",
        "image_size": 256,
        "preset": "vmunet-paper",
    },
    # VM-UNet Synapse: as ISIC with T_max 100, 224 px, 9 classes, gray slices, CE + Dice, rot90/flip or rotation.
    "synapse": {
        **_UPSTREAM_ADAMW,
        "epoch_cosine_t_max": 100,
        "augmentation": "synapse",
        "image_size": 224,
        "normalization_mode": "standard",
        "window": [-125.0, 275.0],  # TransUNet's CT window (HU), stored in the processor for inputs in HU
        "preset": "vmunet-synapse",
    },
}


@dataclass
class RecipeTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the upstream optimizers, the per-epoch cosine schedule and a wall-clock budget."""

    recipe: str | None = field(
        default=None,
        metadata={
            "help": "Fill the defaults of an upstream training recipe: 'medmamba' (Adam 1e-4, constant, 100 epochs), "
            "'isic' (AdamW 1e-3, per-epoch cosine T_max 50, 300 epochs) or 'synapse' (as isic, T_max 100). "
            "Arguments given explicitly override the recipe.",
            "choices": sorted(RECIPES),
        },
    )
    torch_optimizer: str | None = field(
        default=None,
        metadata={
            "help": "Use exactly torch.optim.Adam or torch.optim.AdamW over all parameters (as upstream, weight decay "
            "on every parameter) instead of the Trainer's `optim`; lr, betas, eps and weight decay come from "
            "learning_rate, adam_beta1/2, adam_epsilon and weight_decay.",
            "choices": ["adam", "adamw"],
        },
    )
    epoch_cosine_t_max: int | None = field(
        default=None,
        metadata={
            "help": "Cosine annealing stepped once per epoch, as torch's CosineAnnealingLR(T_max) called at each "
            "epoch end (periodic beyond T_max); replaces lr_scheduler_type."
        },
    )
    epoch_cosine_eta_min: float = field(default=0.0, metadata={"help": "eta_min of the per-epoch cosine schedule."})
    max_train_minutes: float | None = field(
        default=None,
        metadata={"help": "Stop training after this many minutes of wall time (all processes stop at the same step)."},
    )
    shard_report: bool = field(
        default=False,
        metadata={"help": "Write the indices of the training examples each process saw to output_dir/train_shards/."},
    )


def has_accelerator():
    """Whether torch sees any accelerator (CUDA, ROCm, XPU, MPS, ...)."""
    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator is not None and accelerator.is_available())


def parse_arguments(dataclass_types, argv=None, recipes=RECIPES, defaults=None):
    """Parse the command line (or one JSON file) into ``dataclass_types`` after applying a recipe's defaults.

    Precedence: explicit arguments > the ``--recipe`` > ``defaults`` (the script's own) > the dataclass defaults. On a
    machine without an accelerator ``use_cpu`` defaults to True, so that a multi-process launch trains with gloo.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    base = dict(defaults or {})
    if not has_accelerator():
        base["use_cpu"] = True
    dests = {action.dest for action in parser._actions}

    def merged(recipe):
        values = dict(base)
        if recipe is not None:
            values.update(recipes[recipe])
        unknown = set(values) - dests
        if unknown:
            raise ValueError(f"recipe {recipe!r} sets unknown arguments {sorted(unknown)}")
        return values

    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text())
        return parser.parse_dict({**merged(given.get("recipe")), **given})
    recipe = None  # read --recipe before the real parse, to install its defaults
    for i, arg in enumerate(argv):
        if arg == "--recipe" and i + 1 < len(argv):
            recipe = argv[i + 1]
        elif arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1]
    if recipe is not None and recipe not in recipes:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(recipes)}")
    parser.set_defaults(**merged(recipe))
    return parser.parse_args_into_dataclasses(args=argv)


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer, per-epoch cosine schedule, Trainer
# ----------------------------------------------------------------------------------------------------------------------


def build_optimizer(model, args):
    """``torch.optim.Adam`` / ``AdamW`` over all trainable parameters, as the upstream scripts build them."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = {
        "lr": args.learning_rate,
        "betas": (args.adam_beta1, args.adam_beta2),
        "eps": args.adam_epsilon,
        "weight_decay": args.weight_decay,
    }
    if args.torch_optimizer == "adam":
        return torch.optim.Adam(params, **kwargs)
    if args.torch_optimizer == "adamw":
        return torch.optim.AdamW(params, amsgrad=False, **kwargs)
    raise ValueError(f"unknown torch_optimizer {args.torch_optimizer!r}")


class EpochCosineFactor:
    """LR factor at optimizer step ``step``: CosineAnnealingLR's value for the epoch ``step // steps_per_epoch``.

    The closed form ``eta_min + (base - eta_min) * (1 + cos(pi * epoch / t_max)) / 2`` is what torch's scheduler gives
    when stepped once per epoch, also beyond ``t_max`` (it keeps oscillating with period ``2 * t_max``). A callable
    object rather than a lambda, so that `LambdaLR.state_dict` saves its settings with the checkpoint.
    """

    def __init__(self, base_lr, t_max, eta_min, steps_per_epoch):
        self.base_lr, self.t_max, self.eta_min, self.steps_per_epoch = base_lr, t_max, eta_min, steps_per_epoch

    def __call__(self, step):
        epoch = step // self.steps_per_epoch
        lr = self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.t_max)) / 2
        return lr / self.base_lr


def epoch_cosine_schedule(optimizer, t_max, eta_min, steps_per_epoch):
    """A `LambdaLR` (stepped by the Trainer after every optimizer step) that changes the LR only at epoch starts."""
    if t_max < 1 or steps_per_epoch < 1:
        raise ValueError(f"t_max and steps_per_epoch must be positive, got {t_max} and {steps_per_epoch}")
    factors = [EpochCosineFactor(group["lr"], t_max, eta_min, steps_per_epoch) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


class RecipeTrainer(Trainer):
    """`Trainer` with the recipes' per-epoch cosine schedule, a per-process record of the training examples seen, and
    the plain per-batch mean losses of vision models.

    The models' ``forward(**kwargs)`` would make the Trainer believe that they normalise their loss by
    ``num_items_in_batch``; they do not, so ``model_accepts_loss_kwargs`` is turned off (else the loss would be
    multiplied by the number of processes and not divided by the gradient-accumulation steps).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.update_steps_per_epoch = None
        self.seen_examples = []

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self.update_steps_per_epoch = values[1]
        return values

    def create_scheduler(self, num_training_steps, optimizer=None):
        t_max = getattr(self.args, "epoch_cosine_t_max", None)
        if self.lr_scheduler is None and t_max:
            if self.update_steps_per_epoch is None:
                raise RuntimeError("the per-epoch schedule needs the number of optimizer steps per epoch")
            self.lr_scheduler = epoch_cosine_schedule(
                optimizer or self.optimizer, t_max, self.args.epoch_cosine_eta_min, self.update_steps_per_epoch
            )
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model, inputs, num_items_in_batch=None):
        indices = inputs.pop("example_index", None)
        if indices is not None:
            self.seen_examples.extend(int(i) for i in indices.reshape(-1).tolist())
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("example_index", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def make_trainer(model, training_args, callbacks=None, **kwargs):
    """A `RecipeTrainer`, given ``optimizers=(Adam/AdamW, None)`` when the arguments ask for an upstream optimizer."""
    optimizers = (None, None)
    if training_args.torch_optimizer:
        optimizers = (build_optimizer(model, training_args), None)
    callbacks = list(callbacks or [])
    if training_args.max_train_minutes:
        callbacks.append(TimeBudgetCallback(training_args.max_train_minutes))
    return RecipeTrainer(model=model, args=training_args, optimizers=optimizers, callbacks=callbacks, **kwargs)


class TimeBudgetCallback(TrainerCallback):
    """Stop training once ``minutes`` of wall time have passed; in distributed runs the processes agree on the step."""

    def __init__(self, minutes):
        self.seconds = 60.0 * minutes
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        over = torch.tensor([float(time.perf_counter() - self.start > self.seconds)], device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
        if over.item():
            logger.info(f"Time budget of {self.seconds / 60:g} min reached at step {state.global_step}; stopping.")
            control.should_training_stop = True
        return control


class AugmentationEpochCallback(TrainerCallback):
    """Tell a `SeededAugmentation` which epoch starts, so that its per-example random seeds change every epoch."""

    def __init__(self, augmentation):
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.epoch = math.floor((state.epoch or 0.0) + 1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_image_datasets(data_args, cache_dir=None):
    """A `DatasetDict` from ``data_args.dataset_name`` (Hub or local script) or a local imagefolder ``data_dir``."""
    from datasets import load_dataset

    if data_args.dataset_name:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    if data_args.data_dir:
        if not Path(data_args.data_dir).is_dir():
            raise FileNotFoundError(f"--data_dir {data_args.data_dir} is not a directory")
        return load_dataset("imagefolder", data_dir=data_args.data_dir, cache_dir=cache_dir)
    raise ValueError("Give --data_dir (a local imagefolder) or --dataset_name (a dataset on the Hub).")


def train_eval_splits(dataset, data_args, seed):
    """(train, eval, eval split name): the named eval split, else 'validation'/'val'/'test', else a split of train."""
    if "train" not in dataset:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(dataset)})")
    names = [data_args.eval_split_name] if data_args.eval_split_name else ["validation", "valid", "val", "test"]
    for name in names:
        if name in dataset:
            return dataset["train"], dataset[name], name
    if data_args.eval_split_name:
        raise ValueError(f"no split {data_args.eval_split_name!r} in the dataset (splits: {list(dataset)})")
    split = dataset["train"].train_test_split(test_size=data_args.train_val_split, seed=seed)
    return split["train"], split["test"], f"held-out {data_args.train_val_split:g} of train (seed {seed})"


def limit(dataset, max_samples, seed):
    """At most ``max_samples`` examples, a seeded random subset (all of them when None)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def with_example_index(dataset):
    """Add an ``example_index`` column (0..N-1): it seeds the augmentation and records which process saw what."""
    return dataset.add_column("example_index", list(range(len(dataset))))


def to_uint8_array(image, window=None):
    """An 8-bit (H, W) or (H, W, 3) array from a PIL image (or an array), the input albumentations works on. Data that
    is not 8-bit is windowed to ``window`` (the image processor's, as it would) when one is given."""
    if isinstance(image, PIL.Image.Image):
        if image.mode in ("L", "RGB"):
            return np.array(image)
        if image.mode in ("1", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr"):
            return np.array(image.convert("RGB" if image.mode not in ("1", "LA") else "L"))
        image = np.array(image)  # 16-bit or float: the processor's rules bring it to 8 bits
    array = np.asarray(image)
    if array.dtype != np.uint8 and window is not None:
        return np.rint(apply_window(array, window) * 255.0).astype(np.uint8)
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        scale = 255.0 if low >= 0.0 and high <= 1.0 and array.dtype.kind == "f" else 255.0 / max(high - low, 1e-12)
        offset = 0.0 if scale == 255.0 else low
        array = np.clip(np.rint((array - offset) * scale), 0, 255).astype(np.uint8)
    return array


def mask_array(mask):
    """A 2-D integer array from a mask image or array (uint8 when it fits, as albumentations and cv2 want)."""
    array = np.array(mask) if isinstance(mask, PIL.Image.Image) else np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {array.shape}")
    if array.dtype == np.bool_ or (array.size and array.min() >= 0 and array.max() <= 255):
        return array.astype(np.uint8)
    return array.astype(np.int32)


class SeededAugmentation:
    """An albumentations pipeline whose randomness is a function of (seed, epoch, example index) only.

    So the augmentation of an example is the same whatever the number of processes or data-loader workers, and a run
    resumed from a checkpoint sees exactly the augmentations of an uninterrupted one (the Trainer's RNG state is not
    involved). `AugmentationEpochCallback` keeps ``epoch`` current.
    """

    def __init__(self, compose, seed):
        self.compose, self.seed, self.epoch = compose, int(seed), 0

    def __call__(self, index, **data):
        state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0]
        self.compose.set_random_seed(int(state))
        return self.compose(**data)


def parse_json_argument(value, what):
    """A JSON object given inline or as a path to a JSON file."""
    if value is None:
        return None
    path = Path(value)
    text = path.read_text() if path.suffix == ".json" and path.is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} must be a JSON object or a .json file, got {value!r}: {err}") from None


# ----------------------------------------------------------------------------------------------------------------------
# Logging and per-process reports
# ----------------------------------------------------------------------------------------------------------------------


def setup_logging(training_args, *loggers):
    """transformers-style logging: INFO on the main process, warnings only on the others (for ``loggers`` too)."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for module_logger in (logger, *loggers):
        module_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def log_process(training_args, num_train, num_eval):
    """One line per process (a warning in distributed runs, so that every rank prints it): device and data share."""
    world = training_args.world_size
    logger.log(
        logging.WARNING if world > 1 else logging.INFO,
        f"Process rank {training_args.process_index} of world size {world} (local rank "
        f"{training_args.local_process_index}), device {training_args.device}, "
        f"distributed: {training_args.parallel_mode.value == 'distributed'}, bf16: {training_args.bf16}, "
        f"fp16: {training_args.fp16}; dataset: {num_train} train / {num_eval} eval examples, about "
        f"{math.ceil(num_train / world)} train examples per process",
    )


def report_shards(trainer):
    """Log (every process) and optionally write the training examples this process trained on."""
    args = trainer.args
    seen = trainer.seen_examples
    distinct = sorted(set(seen))
    logger.log(
        logging.WARNING if args.world_size > 1 else logging.INFO,
        f"Process rank {args.process_index} of world size {args.world_size} trained on {len(seen)} examples "
        f"({len(distinct)} distinct local examples; first indices {distinct[:8]})",
    )
    if args.shard_report and args.output_dir:
        folder = Path(args.output_dir) / "train_shards"
        folder.mkdir(parents=True, exist_ok=True)
        report = {
            "rank": args.process_index,
            "world_size": args.world_size,
            "examples_seen": len(seen),
            "distinct_examples": distinct,
        }
        (folder / f"rank_{args.process_index}.json").write_text(json.dumps(report))


def resolve_checkpoint(training_args):
    """``--resume_from_checkpoint``: a folder, or 'last' for the newest checkpoint in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint in ("last", "latest"):
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: none in output_dir")
    return checkpoint


def json_safe(value):
    """Metrics as JSON-ready Python values (numpy scalars and arrays converted)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def train_and_evaluate(trainer, processor, eval_dataset, results):
    """The scripts' common run: with ``--do_train`` train, save the model, its processor, the metrics and the trainer
    state; with ``--do_eval`` predict on ``eval_dataset`` and save those metrics. Fills ``results["train"]`` and
    ``results["eval"]``; returns the evaluation's `PredictionOutput` (None without ``--do_eval``)."""
    args = trainer.args
    if args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resolve_checkpoint(args))
        trainer.save_model()
        if trainer.is_world_process_zero():
            processor.save_pretrained(args.output_dir)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        report_shards(trainer)
        results["train"] = train_result.metrics
    if not args.do_eval:
        return None
    prediction = trainer.predict(eval_dataset, metric_key_prefix="eval")
    trainer.log_metrics("eval", prediction.metrics)
    trainer.save_metrics("eval", prediction.metrics)
    results["eval"] = prediction.metrics
    return prediction


# ----------------------------------------------------------------------------------------------------------------------
# Model card of a trained folder
# ----------------------------------------------------------------------------------------------------------------------

SCRIPTS = {"image-classification": "run_image_classification.py", "image-segmentation": "run_semantic_segmentation.py"}
CARD_METRICS = {  # eval metric key -> (model-index metric type, display name)
    "image-classification": {
        "accuracy": ("accuracy", "Accuracy"),
        "precision": ("precision", "Macro precision"),
        "sensitivity": ("recall", "Macro sensitivity"),
        "specificity": ("specificity", "Macro specificity"),
        "f1": ("f1", "Macro F1"),
        "auc": ("roc_auc", "One-vs-rest AUC"),
    },
    "image-segmentation": {
        "dsc": ("dice", "DSC (pooled over all pixels)"),
        "miou": ("iou", "mIoU (pooled foreground IoU)"),
        "accuracy": ("accuracy", "Pixel accuracy"),
        "specificity": ("specificity", "Specificity"),
        "sensitivity": ("recall", "Sensitivity"),
        "mean_image_dice": ("dice", "Mean per-image Dice"),
        "mean_dice": ("dice", "Mean Dice over the foreground classes"),
        "pixel_accuracy": ("accuracy", "Pixel accuracy"),
    },
}


def write_model_card(trainer, model_args, data_args, run, eval_metrics=None):
    """README.md for a trained hf_medmamba folder (``trainer.args.output_dir``): the card of
    `hf_medmamba.model_card`, whose model-index holds this run's final evaluation. ``run`` holds the ``task``, the
    ``eval_split`` name and the ``num_train_examples`` / ``num_eval_examples``. Other architectures (ConvNeXt,
    SegFormer) get no card here. Returns the card's path, or None."""
    from hf_medmamba.model_card import build_model_card

    args, state, config = trainer.args, trainer.state, trainer.model.config
    if config.model_type not in ("medmamba", "vmamba", "vmunet"):
        return None
    if data_args.dataset_name:
        dataset_type, dataset_name = data_args.dataset_name, data_args.dataset_name
    else:
        dataset_type = Path(data_args.data_dir).resolve().name
        dataset_name = f"{dataset_type} (local imagefolder)"
    results = []
    task, eval_split, script = run["task"], run["eval_split"], SCRIPTS[run["task"]]
    for key, (metric_type, metric_name) in CARD_METRICS[task].items():
        value = (eval_metrics or {}).get(f"eval_{key}")
        if value is not None and math.isfinite(value):
            results.append(
                {
                    "task_type": task,
                    "dataset_type": dataset_type,
                    "dataset_name": dataset_name,
                    "dataset_split": eval_split,
                    "metric_type": metric_type,
                    "metric_name": metric_name,
                    "metric_value": round(float(value), 4),
                }
            )
    start = model_args.model_name_or_path or getattr(model_args, "encoder_name_or_path", None)
    # Weights trained from scratch here owe nothing to upstream's: they get the package's licence.
    license = None if start else "apache-2.0"
    start = f"`{start}`" if start else "a random initialisation (no upstream weights)"
    training_data = [
        f"Fine-tuned with hf_medmamba's `examples/{script}` on {dataset_name}: {run['num_train_examples']} "
        f"training examples; evaluated on {run['num_eval_examples']} examples of the '{eval_split}' split.",
        f"Training: {state.epoch or 0:g} epochs ({state.global_step} optimiser steps), learning rate "
        f"{args.learning_rate:g}, batch {args.per_device_train_batch_size} per device, seed {args.seed}; the weights "
        f"started from {start}.",
        "The data's own licence applies (for the bundled BUSI copies, see examples/data/README.md).",
    ]
    path = Path(args.output_dir) / "README.md"
    build_model_card(
        config,
        trainer.processing_class,
        model_name=path.parent.name,
        status="trained",
        eval_results=results or None,
        training_data=training_data,
        license=license,
    ).save(path)
    return str(path)

"""What `run_image_classification.py` and `run_semantic_segmentation.py` share: the model arguments, the upstream
training recipes and the argument parsing that applies them, the per-process logging of distributed runs, and JSON
helpers. Their optimizer, schedule, `Trainer` and train / evaluate / test sequence live in `example_training`, their
data in `example_data`, their card and Hub upload in `example_publishing`.

Nothing here downloads anything, and nothing needs torchvision.
"""

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser, TrainingArguments


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
class ModelLoadingArguments:
    """Where the model comes from (the fields both scripts share; each adds its presets)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved or converted model folder, or a Hub model id, to fine-tune."}
    )
    model_revision: str = field(
        default="main",
        metadata={"help": "The Hub model version to use (a branch name, tag name or commit id)."},
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": "The token for Hub downloads (models, datasets, id2label.json); default: the one saved by `hf auth "
            "login` or HF_TOKEN. Pushing uses --hub_token."
        },
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config.json file or folder: train this architecture from scratch."}
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "A transformers model type with its default config, from scratch (e.g. convnext)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "JSON object (or .json file) of config settings, e.g. '{\"depths\": [1, 1, 1, 1]}'."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder or Hub id (default: the model's)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder for datasets and Hub downloads."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from model folders that are not registered locally."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a head whose size differs from the dataset's classes."}
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id of the converted weights this run starts from, for the model card's base_model (default: "
            "--model_name_or_path / --encoder_name_or_path when it is a Hub id)."
        },
    )


def hub_kwargs(model_args):
    """The download settings of ``from_pretrained``: cache, revision, token, remote code."""
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
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
            "epoch end (periodic beyond T_max), after --warmup_steps of linear warm-up; replaces lr_scheduler_type."
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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train from scratch even when output_dir holds checkpoints (by default the run resumes from the "
            "last one)."
        },
    )


# The scripts' own defaults: keep the image columns for the on-the-fly transforms; publish once, at the end.
SCRIPT_DEFAULTS = {"remove_unused_columns": False, "hub_strategy": "end"}


def has_accelerator():
    """Whether torch sees any accelerator (CUDA, ROCm, XPU, MPS, ...)."""
    if torch.cuda.is_available():
        return True
    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator is not None and accelerator.is_available())


def parse_arguments(dataclass_types, argv=None, recipes=RECIPES, defaults=None):
    """Parse the command line (or one JSON file) into ``dataclass_types`` after applying a recipe's defaults.

    Precedence: explicit arguments > the ``--recipe`` > ``defaults`` (the script's own) > `SCRIPT_DEFAULTS` > the
    dataclass defaults. On a machine without an accelerator ``use_cpu`` defaults to True, so that a multi-process
    launch trains with gloo. As in transformers' scripts, ``do_train``, ``do_eval`` and ``do_predict`` are off unless
    given.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    base = {**SCRIPT_DEFAULTS, **(defaults or {})}
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
    """transformers-style logging: INFO on the main process, warnings only on the others (for the helper modules'
    loggers and ``loggers`` too)."""
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
    helpers = [logging.getLogger(name) for name in ("example_data", "example_publishing", "medmnist_npz")]
    for module_logger in (logger, *helpers, *loggers):
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

"""Publishing what the example scripts train: the model card of the trained folder and its upload to the Hub.

The card is the package's (`hf_medmamba.tools.model_card`): the run's base model, data and final metrics (the test split
when there is one, else the evaluation split) in its metadata and model-index. The upload goes through
`hf_medmamba.tools.hub.push_folder`, the code and rules of ``conversion/push_to_hub.py``: no pickle files (so no
``training_args.bin``), no checkpoint folders, the remote code scanned, a fresh-process load check, one commit.

The Trainer never pushes anything: `take_hub_settings` reads transformers' hub flags (``--push_to_hub``,
``--hub_model_id``, ``--hub_private_repo``, ``--hub_token``, ``--hub_revision``) and turns the Trainer's
``push_to_hub`` off; the scripts push once, after training, evaluation and the card.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path


logger = logging.getLogger(__name__)


HF_MEDMAMBA_MODEL_TYPES = ("medmamba", "vmamba", "vmunet")
SCRIPTS = {"image-classification": "run_image_classification.py", "image-segmentation": "run_semantic_segmentation.py"}
CARD_METRICS = {  # metric key -> (model-index metric type, display name), per kind of run
    "classification": {
        "accuracy": ("accuracy", "Accuracy"),
        "precision": ("precision", "Macro precision"),
        "sensitivity": ("recall", "Macro sensitivity"),
        "specificity": ("specificity", "Macro specificity"),
        "f1": ("f1", "Macro F1"),
        "auc": ("roc_auc", "One-vs-rest AUC"),
    },
    "binary-segmentation": {
        "dsc": ("dice", "DSC (pooled over all pixels)"),
        "miou": ("iou", "mIoU (pooled foreground IoU)"),
        "accuracy": ("accuracy", "Pixel accuracy"),
        "specificity": ("specificity", "Specificity"),
        "sensitivity": ("recall", "Sensitivity"),
        "mean_image_dice": ("dice", "Mean per-image Dice"),
    },
    "multiclass-segmentation": {
        "mean_dice": ("dice", "Mean Dice over the classes"),
        "miou": ("mean_iou", "Mean IoU over the classes"),
        "pixel_accuracy": ("accuracy", "Pixel accuracy"),
    },
}


# ----------------------------------------------------------------------------------------------------------------------
# Hub settings
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class HubSettings:
    """transformers' hub flags, as the scripts read them after the run."""

    push: bool
    model_id: str | None = None
    private: bool | None = None
    token: str | None = field(default=None, repr=False)
    revision: str | None = None


def take_hub_settings(training_args):
    """The hub flags of ``training_args``, with the Trainer's own pushing turned off. Only ``--hub_strategy end`` is
    accepted: the folder is published once, complete, after evaluation."""
    strategy = getattr(training_args.hub_strategy, "value", training_args.hub_strategy)
    if strategy != "end":
        raise ValueError(
            f"--hub_strategy {strategy} is not supported: the example scripts publish the finished folder once, after "
            "training, evaluation and the model card (checkpoints are never pushed). Use --hub_strategy end (the "
            "default here) or leave it out."
        )
    settings = HubSettings(
        push=bool(training_args.push_to_hub),
        model_id=training_args.hub_model_id,
        private=training_args.hub_private_repo,
        token=training_args.hub_token,
        revision=getattr(training_args, "hub_revision", None),
    )
    training_args.push_to_hub = False
    return settings


class HubPublisher:
    """Checks before training that the run can be published and resolves the repository id (read-only calls);
    `push` uploads the folder after the card is written."""

    def __init__(self, settings, output_dir, api, repo_id):
        self.settings, self.output_dir, self.api, self.repo_id = settings, Path(output_dir), api, repo_id

    @classmethod
    def prepare(cls, settings, config, training_args):
        """None without ``--push_to_hub``; on processes other than the first, None too (only it pushes)."""
        if not settings.push:
            return None
        if not training_args.do_train:
            raise ValueError("--push_to_hub publishes the model this run trains: add --do_train")
        if config.model_type not in HF_MEDMAMBA_MODEL_TYPES:
            raise ValueError(
                f"--push_to_hub publishes hf_medmamba models (MedMamba, VMamba, VM-UNet) with their model card and "
                f"remote code; a {config.model_type!r} model is not one. Upload its folder with huggingface_hub."
            )
        if training_args.process_index != 0:
            return None
        from huggingface_hub import HfApi

        api = HfApi(token=settings.token)
        repo_id = settings.model_id or Path(training_args.output_dir).resolve().name
        if "/" not in repo_id:  # transformers' rule: a bare name goes to the token owner's namespace
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        return cls(settings, training_args.output_dir, api, repo_id)

    def push(self, log):
        from hf_medmamba.tools.hub import push_folder

        result = push_folder(
            self.output_dir,
            self.repo_id,
            private=self.settings.private,
            revision=self.settings.revision,
            commit_message=f"Trained with hf_medmamba's example scripts ({self.output_dir.name})",
            api=self.api,
            log=log,
        )
        return {
            "repo_id": self.repo_id,
            "commit_url": result.commit_url,
            "files": [f.path_in_repo for f in result.files],
        }


# ----------------------------------------------------------------------------------------------------------------------
# Model card of a trained folder
# ----------------------------------------------------------------------------------------------------------------------


def _is_local(path):
    return path is not None and Path(path).exists()


def describe_data(data_args):
    """(model-index dataset type, dataset name, Hub dataset ids for the ``datasets`` metadata) of the run's data."""
    name = data_args.dataset_name
    if name:
        return (name, name, None if _is_local(name) else [name])
    medmnist_file = getattr(data_args, "medmnist_file", None)
    if medmnist_file:
        from medmnist_npz import medmnist_name

        kind = medmnist_name(medmnist_file)
        return kind, f"{kind} (MedMNIST v2 .npz, official split)", None
    folder = Path(data_args.data_dir or data_args.train_dir or data_args.validation_dir).resolve()
    if not data_args.data_dir and folder.name in ("train", "training", "validation", "val", "test"):
        folder = folder.parent
    return folder.name, f"{folder.name} (local imagefolder)", None


def finish_run(trainer, model_args, data_args, splits, results, card_metrics, publisher=None):
    """After training and evaluation, on the first process: with ``--do_train`` the model card (its model-index
    from the test metrics when the run has them, else the evaluation metrics), then with ``--push_to_hub`` the one
    upload. Adds ``model_card`` and ``hub`` to ``results``."""
    if trainer.args.do_train:
        prefix = "test" if "test" in results else "eval"
        run = {
            "task": "image-classification" if card_metrics == "classification" else "image-segmentation",
            "metrics": card_metrics,
            "prefix": prefix,
            "split": splits.test_name if prefix == "test" else splits.eval_name,
            "eval_split": splits.eval_name,
            "num_train_examples": results["num_train_examples"],
            "num_reported_examples": results[f"num_{prefix}_examples"],
        }
        repo_id = publisher.repo_id if publisher else None
        results["model_card"] = write_model_card(trainer, model_args, data_args, run, results.get(prefix), repo_id)
    if publisher:
        results["hub"] = publisher.push(logger.info)


def write_model_card(trainer, model_args, data_args, run, metrics=None, repo_id=None):
    """README.md for a trained hf_medmamba folder (``trainer.args.output_dir``): the card of
    `hf_medmamba.tools.model_card`, whose model-index holds this run's final metrics (``run["prefix"]`` ``eval`` or
    ``test``, on the split ``run["split"]``), with ``base_model`` (``--base_model``, else the starting weights when
    they are a Hub id) and ``datasets`` (the Hub dataset). ``run`` also holds ``task``, ``metrics`` (a key of
    `CARD_METRICS`), ``num_train_examples`` and ``num_reported_examples``. Other architectures (ConvNeXt, SegFormer)
    get no card here. Returns the card's path, or None."""
    from hf_medmamba.tools.model_card import build_model_card

    args, state, config = trainer.args, trainer.state, trainer.model.config
    if config.model_type not in HF_MEDMAMBA_MODEL_TYPES:
        return None
    dataset_type, dataset_name, hub_datasets = describe_data(data_args)
    results = []
    for key, (metric_type, metric_name) in CARD_METRICS[run["metrics"]].items():
        value = (metrics or {}).get(f"{run['prefix']}_{key}")
        if value is not None and math.isfinite(value):
            results.append(
                {
                    "task_type": run["task"],
                    "dataset_type": dataset_type,
                    "dataset_name": dataset_name,
                    "dataset_split": run["split"],
                    "metric_type": metric_type,
                    "metric_name": metric_name,
                    "metric_value": round(float(value), 4),
                }
            )
    start = model_args.model_name_or_path or getattr(model_args, "encoder_name_or_path", None)
    base_model = model_args.base_model or (start if start and not _is_local(start) else None)
    # Weights trained from scratch here owe nothing to upstream's: they get the package's licence.
    license = None if start else "apache-2.0"
    origin = f"`{start}`" if start else "a random initialisation (no upstream weights)"
    training_data = [
        f"Fine-tuned with hf_medmamba's `examples/{SCRIPTS[run['task']]}` on {dataset_name}: "
        f"{run['num_train_examples']} training examples; evaluated on {run['num_reported_examples']} examples of the "
        f"'{run['split']}' split.",
        f"Training: {state.epoch or 0:g} epochs ({state.global_step} optimiser steps), learning rate "
        f"{args.learning_rate:g}, batch {args.per_device_train_batch_size} per device, seed {args.seed}; the weights "
        f"started from {origin}.",
    ]
    if args.load_best_model_at_end and state.best_model_checkpoint:
        training_data.append(
            f"The weights are those of the checkpoint with the best {args.metric_for_best_model or 'loss'} on the "
            f"'{run['eval_split']}' split ({Path(state.best_model_checkpoint).name})."
        )
    training_data.append("The data's own licence applies (for the bundled copies, see examples/data/README.md).")
    path = Path(args.output_dir) / "README.md"
    card = build_model_card(
        config,
        trainer.processing_class,
        model_name=path.parent.name,
        repo_id=repo_id,
        status="trained",
        base_model=base_model,
        eval_results=results or None,
        training_data=training_data,
        license=license,
    )
    card.data.datasets = hub_datasets  # the run's data only, not the defaults of the model kind
    card.save(path)
    return str(path)

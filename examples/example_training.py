"""The training side of `run_image_classification.py` and `run_semantic_segmentation.py`: the exact upstream
optimizers, the per-epoch cosine schedule, a `Trainer` subclass that uses them, the time-budget and augmentation-epoch
callbacks, and the train / evaluate / test sequence with automatic resumption. Their arguments and logging live in
`example_utils`, their data in `example_data`.
"""

import logging
import math
import os
import time

import torch
from example_utils import report_shards
from transformers import Trainer, TrainerCallback


logger = logging.getLogger(__name__)


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
    """LR factor at optimizer step ``step``: CosineAnnealingLR's value for the epoch ``step // steps_per_epoch``, times
    a linear warm-up over the first ``warmup_steps`` steps (transformers' ``step / warmup_steps``; none by default).

    The closed form ``eta_min + (base - eta_min) * (1 + cos(pi * epoch / t_max)) / 2`` is what torch's scheduler gives
    when stepped once per epoch, also beyond ``t_max`` (it keeps oscillating with period ``2 * t_max``). A callable
    object rather than a lambda, so that `LambdaLR.state_dict` saves its settings with the checkpoint.
    """

    def __init__(self, base_lr, t_max, eta_min, steps_per_epoch, warmup_steps=0):
        self.base_lr, self.t_max, self.eta_min, self.steps_per_epoch = base_lr, t_max, eta_min, steps_per_epoch
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        epoch = step // self.steps_per_epoch
        lr = self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.t_max)) / 2
        warmup = step / self.warmup_steps if step < self.warmup_steps else 1.0
        return warmup * lr / self.base_lr


def epoch_cosine_schedule(optimizer, t_max, eta_min, steps_per_epoch, warmup_steps=0):
    """A `LambdaLR` (stepped by the Trainer after every optimizer step) that changes the LR only at epoch starts, after
    an optional linear warm-up over the first ``warmup_steps`` optimizer steps."""
    if t_max < 1 or steps_per_epoch < 1:
        raise ValueError(f"t_max and steps_per_epoch must be positive, got {t_max} and {steps_per_epoch}")
    settings = (t_max, eta_min, steps_per_epoch, warmup_steps)
    factors = [EpochCosineFactor(group["lr"], *settings) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


class RecipeTrainer(Trainer):
    """`Trainer` with the recipes' per-epoch cosine schedule (after ``--warmup_steps`` of linear warm-up), a
    per-process record of the training examples seen, and the plain per-batch mean losses of vision models.

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
                optimizer or self.optimizer,
                t_max,
                self.args.epoch_cosine_eta_min,
                self.update_steps_per_epoch,
                self.args.get_warmup_steps(num_training_steps),  # --warmup_steps (a fraction < 1: of all steps)
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


def resolve_checkpoint(training_args):
    """The checkpoint to resume from: ``--resume_from_checkpoint`` (a folder, or 'last' for the newest in
    output_dir), else the newest checkpoint in output_dir unless ``--overwrite_output_dir`` (transformers' rule)."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    if checkpoint in ("last", "latest"):
        checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: none in {output_dir}")
    elif checkpoint is None and not training_args.overwrite_output_dir and os.path.isdir(output_dir):
        checkpoint = get_last_checkpoint(output_dir)
        if checkpoint is not None:
            logger.info(
                f"Checkpoint detected, resuming training at {checkpoint}. To train from scratch instead, give "
                "--overwrite_output_dir or another --output_dir."
            )
    if checkpoint is not None and os.path.isdir(checkpoint) and not _holds_optimizer_state(checkpoint):
        raise ValueError(
            f"{checkpoint} holds the model only (it was saved with --save_only_model), so training cannot resume from "
            "it: the optimizer and the learning-rate schedule would start again. Give --overwrite_output_dir (or "
            "another --output_dir) to train from scratch, or --model_name_or_path with this folder to start a new run "
            "from its weights."
        )
    return checkpoint


def _holds_optimizer_state(checkpoint):
    """Whether ``checkpoint`` has the Trainer's optimizer state (a file or, with DeepSpeed / FSDP, a folder)."""
    return any("optimizer" in name or name.startswith("global_step") for name in os.listdir(checkpoint))


def _evaluate(trainer, dataset, prefix, results):
    prediction = trainer.predict(dataset, metric_key_prefix=prefix)
    trainer.log_metrics(prefix, prediction.metrics)
    trainer.save_metrics(prefix, prediction.metrics)
    results[prefix] = prediction.metrics
    return prediction


def train_and_evaluate(trainer, processor, splits, results):
    """The scripts' common run, in transformers' order: with ``--do_train`` train (resuming as `resolve_checkpoint`
    says), save the model (the best checkpoint's with ``--load_best_model_at_end``), its processor, the metrics and
    the trainer state; with ``--do_eval`` predict on ``splits.eval``; with ``--do_predict`` on ``splits.test``.
    Fills ``results["train"]``, ``["eval"]`` and ``["test"]``; returns {"eval": ..., "test": ...} `PredictionOutput`
    objects (None for a step not asked for)."""
    args = trainer.args
    if not (args.do_train or args.do_eval or args.do_predict):
        logger.warning("Nothing to do: give --do_train, --do_eval and/or --do_predict.")
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
    return {
        "eval": _evaluate(trainer, splits.eval, "eval", results) if args.do_eval else None,
        "test": _evaluate(trainer, splits.test, "test", results) if args.do_predict else None,
    }

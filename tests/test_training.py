"""Training machinery of the example scripts: the recipes' optimizers and schedules, CPU defaults, bf16 on CPU, the
time budget, exact resumption from a checkpoint, and a real two-process (gloo) run that shards the data."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from .conftest import DATA, EXAMPLES, TINY_MEDMAMBA, TINY_VMUNET, common_args, data_dir, example, shared_path


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


class RecordLearningRates(TrainerCallback):
    """The learning rate each optimizer step uses, with the epoch it belongs to."""

    def __init__(self):
        self.rates = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append((math.floor(state.epoch + 1e-6), optimizer.param_groups[0]["lr"]))


class StopAt(TrainerCallback):
    """Interrupt training after ``step`` optimizer steps (saving a checkpoint there)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


class CountSteps(TrainerCallback):
    """How many optimizer steps this run made (a resumed run makes only the missing ones)."""

    def __init__(self):
        self.count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += 1


def max_difference(expected, actual):
    return max((expected[k].double() - actual[k].double()).abs().max().item() for k in expected)


def classification_args(output_dir, cache_dir, *extra):
    return [
        "--data_dir", data_dir("busi_cls"), "--preset", "medmamba-t", "--config_overrides", TINY_MEDMAMBA,
        "--image_size", "32", "--do_train", *common_args(output_dir, cache_dir), *extra,
    ]  # fmt: skip


def segmentation_args(output_dir, cache_dir, *extra):
    return [
        "--data_dir", data_dir("busi_seg"), "--config_overrides", TINY_VMUNET, "--image_size", "32",
        "--do_train", *common_args(output_dir, cache_dir), *extra,
    ]  # fmt: skip


def test_recipes_fill_defaults_that_explicit_arguments_override(monkeypatch):
    utils = example("example_utils")
    script = example("run_semantic_segmentation")
    types = (script.ModelArguments, script.DataTrainingArguments, utils.RecipeTrainingArguments)
    model_args, data_args, args = utils.parse_arguments(types, ["--recipe", "isic", "--learning_rate", "5e-4"])
    assert args.learning_rate == 5e-4  # explicit
    assert (args.weight_decay, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (1e-2, 0.9, 0.999, 1e-8)
    assert (args.torch_optimizer, args.epoch_cosine_t_max, args.epoch_cosine_eta_min) == ("adamw", 50, 1e-5)
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.seed) == (300, 32, 42)
    assert (model_args.preset, data_args.image_size, data_args.augmentation) == ("vmunet-paper", 256, "isic")

    model_args, data_args, args = utils.parse_arguments(types, ["--recipe", "synapse", "--preset", "vmunet-default"])
    assert (model_args.preset, args.epoch_cosine_t_max, data_args.image_size) == ("vmunet-default", 100, 224)
    assert data_args.normalization_mode == "standard"

    classification = example("run_image_classification")
    types = (classification.ModelArguments, classification.DataTrainingArguments, utils.RecipeTrainingArguments)
    _, data_args, args = utils.parse_arguments(types, ["--recipe", "medmamba", "--num_train_epochs", "3"])
    assert (args.torch_optimizer, args.learning_rate, args.weight_decay) == ("adam", 1e-4, 0.0)
    assert (args.lr_scheduler_type.value, args.per_device_train_batch_size, args.num_train_epochs) == (
        "constant",
        32,
        3,
    )
    assert (data_args.augmentation, data_args.image_size) == ("medmamba", 224)

    # without an accelerator the scripts train on CPU (gloo when distributed); with one they leave the choice alone
    monkeypatch.setattr(utils, "has_accelerator", lambda: False)
    assert utils.parse_arguments(types, [])[2].use_cpu is True
    monkeypatch.setattr(utils, "has_accelerator", lambda: True)
    assert utils.parse_arguments(types, [])[2].use_cpu is False
    with pytest.raises(ValueError, match="unknown recipe"):
        utils.parse_arguments(types, ["--recipe", "imagenet"])


def test_medmamba_recipe_trains_with_adam_and_a_constant_rate(tmp_path, datasets_cache):
    rates = RecordLearningRates()
    results = example("run_image_classification").main(
        classification_args(
            tmp_path, datasets_cache, "--recipe", "medmamba", "--image_size", "32", "--max_train_samples", "4",
            "--per_device_train_batch_size", "2", "--max_steps", "3",
        ),
        callbacks=[rates],
    )  # fmt: skip
    optimizer = results["trainer"].optimizer.optimizer  # inside accelerate's wrapper
    assert type(optimizer) is torch.optim.Adam  # not AdamW (a subclass of Adam in recent torch)
    (group,) = optimizer.param_groups
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-4, 0.0, (0.9, 0.999), 1e-8)
    assert len(group["params"]) == len(list(results["trainer"].model.parameters()))
    assert [lr for _, lr in rates.rates] == [1e-4] * 3


def test_isic_recipe_adamw_with_cosine_stepped_once_per_epoch(tmp_path, datasets_cache):
    """The LR changes only at epoch boundaries and follows CosineAnnealingLR stepped per epoch, periodic after T_max."""
    rates = RecordLearningRates()
    results = example("run_semantic_segmentation").main(
        segmentation_args(
            tmp_path, datasets_cache, "--recipe", "isic", "--max_train_samples", "4",
            "--per_device_train_batch_size", "2", "--num_train_epochs", "6", "--epoch_cosine_t_max", "2",
            "--save_strategy", "no",
        ),
        callbacks=[rates],
    )  # fmt: skip
    trainer = results["trainer"]
    optimizer = trainer.optimizer.optimizer
    assert type(optimizer) is torch.optim.AdamW
    (group,) = optimizer.param_groups
    assert (group["weight_decay"], group["betas"], group["eps"], group["amsgrad"]) == (1e-2, (0.9, 0.999), 1e-8, False)
    assert trainer.update_steps_per_epoch == 2

    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=2, eta_min=1e-5)
    expected = []
    for _ in range(6):
        expected += [reference.param_groups[0]["lr"]] * 2  # two optimizer steps per epoch, same LR
        reference.step()
        cosine.step()  # once per epoch, as upstream
    assert [epoch for epoch, _ in rates.rates] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [lr for _, lr in rates.rates] == pytest.approx(expected, rel=1e-9)
    by_epoch = [lr for _, lr in rates.rates[::2]]
    assert (
        by_epoch[0] == pytest.approx(1e-3) and by_epoch[2] == pytest.approx(1e-5) and by_epoch[4] == pytest.approx(1e-3)
    )

    # the recipe's own T_max = 50 over its 300 epochs: 3 full oscillations (minimum at epochs 50, 150, 250)
    training = example("example_training")

    def optimizer():
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)

    factor = training.epoch_cosine_schedule(optimizer(), 50, 1e-5, steps_per_epoch=3).lr_lambdas[0]
    reference = optimizer()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=50, eta_min=1e-5)
    upstream = []
    for _ in range(300):
        upstream.append(cosine.get_last_lr()[0])
        reference.step()
        cosine.step()
    ours = [1e-3 * factor(3 * epoch + offset) for epoch in range(300) for offset in range(3)]
    assert ours == pytest.approx([lr for lr in upstream for _ in range(3)], rel=1e-6, abs=1e-12)
    for epoch, lr in [(25, (1e-3 + 1e-5) / 2), (50, 1e-5), (100, 1e-3), (150, 1e-5), (200, 1e-3), (250, 1e-5)]:
        assert ours[3 * epoch] == pytest.approx(lr, rel=1e-6), epoch


def test_warmup_steps_warm_up_the_per_epoch_cosine(tmp_path, datasets_cache):
    """--warmup_steps with a recipe's per-epoch cosine: a linear ramp (transformers' step / warmup_steps) times the
    cosine's value for the step's epoch, then the cosine alone."""
    rates = RecordLearningRates()
    example("run_semantic_segmentation").main(
        segmentation_args(
            tmp_path, datasets_cache, "--recipe", "isic", "--max_train_samples", "4",
            "--per_device_train_batch_size", "2", "--num_train_epochs", "4", "--epoch_cosine_t_max", "2",
            "--warmup_steps", "3", "--save_strategy", "no",
        ),
        callbacks=[rates],
    )  # fmt: skip
    cosine = [1e-3, (1e-3 + 1e-5) / 2, 1e-5, (1e-3 + 1e-5) / 2]  # CosineAnnealingLR(T_max=2) at epochs 0..3
    expected = [cosine[step // 2] * min(1.0, step / 3) for step in range(8)]
    assert [lr for _, lr in rates.rates] == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_bf16_on_cpu_and_the_time_budget(tmp_path, datasets_cache):
    """--bf16 runs as CPU autocast; --max_train_minutes stops at the first step past the budget."""
    results = example("run_image_classification").main(
        classification_args(
            tmp_path, datasets_cache, "--bf16", "--max_train_samples", "4", "--per_device_train_batch_size", "2",
            "--num_train_epochs", "5", "--max_train_minutes", "1e-6", "--save_strategy", "no",
        )
    )  # fmt: skip
    trainer = results["trainer"]
    assert trainer.args.use_cpu and trainer.args.bf16
    assert trainer.state.global_step == 1
    assert math.isfinite(results["train"]["train_loss"])


def test_resumed_training_reaches_the_weights_of_an_uninterrupted_run(tmp_path, datasets_cache):
    """Interrupted after 3 of 8 steps (mid-epoch) and resumed, with --resume_from_checkpoint or by running the same
    command again in the same output_dir: bitwise the same final weights, with augmentation, stochastic depth, AdamW
    and the per-epoch schedule in play. Checkpoints are safetensors. --overwrite_output_dir starts afresh."""
    script = example("run_image_classification")

    def run(name, *extra, callbacks=None):
        args = classification_args(
            tmp_path / name, datasets_cache, "--recipe", "medmamba", "--image_size", "32", "--max_train_samples", "8",
            "--per_device_train_batch_size", "2", "--num_train_epochs", "2", "--torch_optimizer", "adamw",
            "--weight_decay", "0.05", "--epoch_cosine_t_max", "2", "--save_strategy", "steps", "--save_steps", "3",
            *extra,
        )  # fmt: skip
        return script.main(args, callbacks=callbacks)

    run("uninterrupted")
    interrupted = run("interrupted", callbacks=[StopAt(3)])
    assert interrupted["trainer"].state.global_step == 3
    checkpoint = tmp_path / "interrupted" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file() and not (checkpoint / "pytorch_model.bin").exists()
    partial = load_file(tmp_path / "interrupted" / "model.safetensors")
    resumed = run("resumed", "--resume_from_checkpoint", str(checkpoint))
    assert resumed["trainer"].state.global_step == 8

    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    actual = load_file(tmp_path / "resumed" / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert max_difference(expected, actual) <= 1e-6
    assert max_difference(expected, partial) > 1e-4

    # The same command again in the interrupted run's output_dir resumes from its last checkpoint by itself ...
    steps = CountSteps()
    run("interrupted", callbacks=[steps])
    assert (
        steps.count == 5 and max_difference(expected, load_file(tmp_path / "interrupted" / "model.safetensors")) <= 1e-6
    )
    # ... unless --overwrite_output_dir: then it trains from scratch, though checkpoints are there
    steps = CountSteps()
    run("interrupted", "--overwrite_output_dir", "--max_steps", "2", callbacks=[steps])
    assert steps.count == 2 and (tmp_path / "interrupted" / "checkpoint-8").is_dir()


def test_a_model_only_checkpoint_is_not_resumed_from(tmp_path, datasets_cache):
    """A --save_only_model checkpoint has no optimizer or scheduler state: resuming from it (by itself or with
    --resume_from_checkpoint) is refused with the way out, and its weights can start a new run instead."""
    script = example("run_image_classification")
    args = ["--max_train_samples", "4", "--per_device_train_batch_size", "2", "--save_strategy", "steps"]
    args += ["--save_steps", "1", "--save_only_model", "True"]
    first = script.main(classification_args(tmp_path / "first", datasets_cache, *args, "--max_steps", "1"))
    checkpoint = tmp_path / "first" / "checkpoint-1"
    assert first["trainer"].state.global_step == 1 and not any("optimizer" in p.name for p in checkpoint.iterdir())
    for extra in ([], ["--resume_from_checkpoint", str(checkpoint)]):
        with pytest.raises(ValueError, match=r"holds the model only.*--overwrite_output_dir"):
            script.main(classification_args(tmp_path / "first", datasets_cache, *args, "--max_steps", "2", *extra))
    missing = str(tmp_path / "no-such-checkpoint")  # a wrong path keeps transformers' own error, not ours
    with pytest.raises(ValueError, match="Can't find a valid checkpoint"):
        script.main(classification_args(tmp_path / "first", datasets_cache, *args, "--resume_from_checkpoint", missing))
    again = script.main(
        classification_args(tmp_path / "second", datasets_cache, "--model_name_or_path", str(checkpoint), "--max_steps",
                            "1", "--max_train_samples", "4", "--per_device_train_batch_size", "2")
    )  # fmt: skip
    assert again["trainer"].state.global_step == 1


def test_two_processes_with_gloo_share_the_data(tmp_path, datasets_cache):
    """torchrun with 2 processes on CPU: world size 2 (use_cpu set by the script), disjoint shards covering the data,
    and a loss that is not multiplied by the number of processes."""
    out = tmp_path / "ddp"
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env.pop("HF_MEDMAMBA_SCAN_BACKEND", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(EXAMPLES / "run_image_classification.py"),
        *classification_args(out, datasets_cache), "--max_train_samples", "16", "--per_device_train_batch_size", "4",
        "--num_train_epochs", "1", "--shard_report", "--save_strategy", "no", "--logging_steps", "1",
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    for rank in (0, 1):
        assert f"Process rank {rank} of world size 2" in output
        assert f"Process rank {rank} of world size 2 trained on 8 examples (8 distinct" in output
    reports = [json.loads((out / "train_shards" / f"rank_{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    shards = [set(r["distinct_examples"]) for r in reports]
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(16))
    train_loss = json.loads((out / "all_results.json").read_text())["train_loss"]
    assert 0.5 < train_loss < 1.6  # about ln 3 for 3 classes; doubled (2.2) if the loss were scaled by world size
    assert (out / "model.safetensors").is_file()


@pytest.mark.shared
def test_bundled_data_matches_the_shared_copy():
    """examples/data is a copy of the shared datasets (same files, same bytes for a sample)."""
    shared = shared_path("data")
    for name in ("busi_cls", "busi_seg", "ct_abdomen_organs"):
        ours = sorted(str(p.relative_to(DATA / name)) for p in (DATA / name).rglob("*") if p.is_file())
        theirs = sorted(str(p.relative_to(shared / name)) for p in (shared / name).rglob("*") if p.is_file())
        assert ours == theirs, name
    sample = Path("busi_seg/test/masks/benign_0032.png")
    assert (DATA / sample).read_bytes() == (shared / sample).read_bytes()
    breastmnist = Path("medmnist/breastmnist.npz")
    assert (DATA / breastmnist).read_bytes() == (shared / breastmnist).read_bytes()
    assert (DATA / "README.md").is_file()

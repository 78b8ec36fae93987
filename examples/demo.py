"""The README's main job: fine-tune MedMamba on BUSI ultrasound classes and VM-UNet on BUSI lesion segmentation,
evaluate both with the papers' metrics, run `pipeline(...)` inference on test images, and write a short report.

    python examples/demo.py                      # about 10 minutes on a 2-core CPU; report in outputs/demo/report.md

This is a DEMO configuration, not the papers' recipes: small models trained from scratch at 128 px for a few
epochs, so that everything finishes in minutes on a laptop CPU. It reuses the functions of
`run_image_classification.py` and `run_semantic_segmentation.py`; the paper recipes are their ``--recipe medmamba``
and ``--recipe isic`` (100 and 300 epochs at 224 / 256 px, which take hours on a GPU). ``--smoke`` runs the same code
path with tiny models and a few images in seconds (used by the tests; its numbers mean nothing).
"""

import os


# OpenMP threads that busy-wait collapse (5-10x slower) when the CPU is shared with other processes; waiting passively
# costs little on an idle machine. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_image_classification
import run_semantic_segmentation


HERE = Path(__file__).resolve().parent

# The demo configuration, chosen so that both runs together take about 6-8 minutes on 2 idle CPU cores and learn
# visibly (test accuracy about 60 % against 33 % chance; lesion DSC about 0.5 against 0 for all-background):
# - classification: MedMamba with half MedMamba-T's depth and a third of its width, 128 px, 30 epochs, the MedMamba
#   recipe (Adam, RandomResizedCrop + flip) with a 10x learning rate decayed by a cosine (the recipe keeps 1e-4
#   constant for 100 epochs);
# - segmentation: VM-UNet with the paper's depths at a third of the width, 128 px, 30 epochs, batch 4, the ISIC recipe
#   (AdamW, per-epoch cosine, flips + rotation, BCE + Dice) with one cosine half-period over the run and inputs scaled
#   to [0, 1] (the ISIC min-max to [0, 255] suits the pretrained encoder but trains slower from scratch).
DEMO = {
    "classification": {
        "config_overrides": {"depths": [1, 1, 2, 1], "dims": [32, 64, 128, 256]},
        "image_size": 128,
        "epochs": 30,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
    },
    "segmentation": {
        "config_overrides": {"depths": [2, 2, 2, 2], "depths_decoder": [2, 2, 2, 1], "dims": [32, 64, 128, 256]},
        "image_size": 128,
        "epochs": 30,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "cosine_t_max": 30,
        "normalization_mode": "standard",
    },
}
SMOKE = {
    "classification": {
        "config_overrides": {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
        "image_size": 32,
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "max_train_samples": 8,
        "max_eval_samples": 6,
    },
    "segmentation": {
        "config_overrides": {"depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "dims": [16, 32, 64, 128]},
        "image_size": 64,
        "epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "cosine_t_max": 1,
        "normalization_mode": "standard",
        "max_train_samples": 8,
        "max_eval_samples": 4,
    },
}
CLASSIFICATION_METRICS = [
    ("accuracy", "OA"),
    ("precision", "Precision"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("f1", "F1"),
    ("auc", "AUC"),
]
SEGMENTATION_METRICS = [
    ("miou", "mIoU"),
    ("dsc", "DSC"),
    ("accuracy", "Accuracy"),
    ("specificity", "Specificity"),
    ("sensitivity", "Sensitivity"),
    ("mean_image_dice", "mean image Dice"),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo", help="Where the models and the report go.")
    parser.add_argument("--data_dir", default=str(HERE / "data"), help="Folder with busi_cls/ and busi_seg/.")
    parser.add_argument("--smoke", action="store_true", help="Tiny models and a few images: a quick code check.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache_dir", default=None, help="Cache folder for the datasets (default: the HF cache).")
    return parser.parse_args(argv)


def common_arguments(settings, output_dir, seed, cache_dir=None):
    arguments = [
        "--do_train", "--do_eval", "--output_dir", str(output_dir), "--overwrite_output_dir",
        "--seed", str(seed), "--image_size", str(settings["image_size"]),
        "--config_overrides", json.dumps(settings["config_overrides"]),
        "--num_train_epochs", str(settings["epochs"]), "--per_device_train_batch_size", str(settings["batch_size"]),
        "--per_device_eval_batch_size", "32", "--learning_rate", str(settings["learning_rate"]),
        "--eval_strategy", "epoch", "--logging_strategy", "epoch", "--save_strategy", "no",
        "--log_level", "warning", "--disable_tqdm", "True",
    ]  # fmt: skip
    for key in ("max_train_samples", "max_eval_samples"):
        if key in settings:
            arguments += [f"--{key}", str(settings[key])]
    if cache_dir:
        arguments += ["--cache_dir", str(cache_dir)]
    return arguments


def classification_arguments(settings, data_dir, output_dir, seed, cache_dir=None):
    """The MedMamba recipe (Adam, RandomResizedCrop + flip, mean/std 0.5) with the demo's model, size and schedule."""
    return [
        "--data_dir", str(Path(data_dir) / "busi_cls"), "--recipe", "medmamba", "--preset", "medmamba-t",
        "--lr_scheduler_type", settings["lr_scheduler_type"], *common_arguments(settings, output_dir, seed, cache_dir),
    ]  # fmt: skip


def segmentation_arguments(settings, data_dir, output_dir, seed, cache_dir=None):
    """The ISIC recipe (AdamW, per-epoch cosine, flips + rotation, BCE + Dice) with the demo's model, size, schedule
    (one cosine half-period over the run) and input scaling."""
    return [
        "--data_dir", str(Path(data_dir) / "busi_seg"), "--recipe", "isic", "--preset", "vmunet-paper",
        "--epoch_cosine_t_max", str(settings["cosine_t_max"]), "--normalization_mode", settings["normalization_mode"],
        "--num_overlays", "4", *common_arguments(settings, output_dir, seed, cache_dir),
    ]  # fmt: skip


def run_pipelines(classifier_dir, segmenter_dir, data_dir, per_class=2, num_segmentations=4):
    """`pipeline(...)` on a few test images of each task; returns rows for the report."""
    from transformers import pipeline
    from transformers.utils import logging as transformers_logging

    classifier = pipeline("image-classification", model=str(classifier_dir), trust_remote_code=True)
    rows = []
    for folder in sorted((Path(data_dir) / "busi_cls" / "test").iterdir()):
        for path in sorted(folder.glob("*.png"))[:per_class]:
            with PIL.Image.open(path) as image:
                top = classifier(image.convert("RGB"), top_k=1)[0]
            rows.append({"image": path.name, "true": folder.name, "predicted": top["label"], "score": top["score"]})

    # transformers' segmentation pipeline checks the model class against its built-in list only and logs an error
    # for registered or remote-code models such as VM-UNet, although it then runs them fine: silence that check
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity(transformers_logging.CRITICAL)
    try:
        segmenter = pipeline("image-segmentation", model=str(segmenter_dir), trust_remote_code=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    segments = []
    test = Path(data_dir) / "busi_seg" / "test"
    for path in sorted((test / "images").glob("*.png"))[:num_segmentations]:
        with PIL.Image.open(path) as image, PIL.Image.open(test / "masks" / path.name) as mask:
            result = segmenter(image.convert("RGB"))
            truth = np.array(mask) > 127
        lesion = next((r["mask"] for r in result if r["label"] == "lesion"), None)
        predicted = np.zeros_like(truth) if lesion is None else np.array(lesion) > 127
        total = truth.sum() + predicted.sum()
        dice = 2.0 * (truth & predicted).sum() / total if total else 1.0
        segments.append(
            {
                "image": path.name,
                "true_lesion_percent": 100.0 * truth.mean(),
                "predicted_lesion_percent": 100.0 * predicted.mean(),
                "dice": float(dice),
            }
        )
    return {"classification": rows, "segmentation": segments}


def lesion_fraction(data_dir):
    """Fraction of lesion pixels over the BUSI segmentation test masks (an all-background prediction's error)."""
    masks = sorted((Path(data_dir) / "busi_seg" / "test" / "masks").glob("*.png"))
    counts = [(np.array(PIL.Image.open(p)) > 127).mean() for p in masks]
    return float(np.mean(counts))


def learning_curves(trainer, metric, path, title):
    """Training loss and an evaluation metric per epoch, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = trainer.state.log_history
    train = [(h["epoch"], h["loss"]) for h in history if "loss" in h and "eval_loss" not in h]
    evals = [(h["epoch"], h[f"eval_{metric}"]) for h in history if f"eval_{metric}" in h]
    figure = Figure(figsize=(7, 3), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    if train:
        left.plot(*zip(*train), marker=".")
    left.set(xlabel="epoch", ylabel="training loss", title=f"{title}: loss")
    if evals:
        right.plot(*zip(*evals), marker=".", color="tab:orange")
    right.set(xlabel="epoch", ylabel=metric, title=f"{title}: test {metric}")
    figure.savefig(path, format="png", dpi=100)
    return path


def percent(value):
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def write_report(output_dir, config, classification, segmentation, pipelines, timings, background_fraction, smoke):
    output_dir = Path(output_dir)
    cls_eval, seg_eval = classification["eval"], segmentation["eval"]
    cls_dir, seg_dir = Path(classification["output_dir"]), Path(segmentation["output_dir"])
    rel = lambda path: Path(path).resolve().relative_to(output_dir.resolve()).as_posix()  # noqa: E731
    cls_settings, seg_settings = config["classification"], config["segmentation"]
    names = classification["class_names"]
    report = classification["eval_report"]
    lines = [
        "# hf-medmamba demo report",
        "",
        "> **Demo configuration, not the paper recipes.** Small models trained from scratch on the bundled BUSI",
        f"> subsets ({cls_settings['epochs']} and {seg_settings['epochs']} epochs at {cls_settings['image_size']} and "
        f"{seg_settings['image_size']} px on CPU).",
        "> The numbers show that the models learn; they are not comparable to the papers' results. The paper",
        "> recipes are `--recipe medmamba` and `--recipe isic` of the two `run_*.py` scripts.",
        *(
            [
                "",
                "> **Smoke test** (`--smoke`): tiny models on a few images, a check of the code path only; the numbers "
                "below mean nothing.",
            ]
            if smoke
            else []
        ),
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads. Wall time: classification {timings['classification']:.0f} s, "
        f"segmentation {timings['segmentation']:.0f} s, pipelines {timings['pipelines']:.0f} s, total "
        f"{timings['total']:.0f} s.",
        "",
        "## 1. MedMamba: breast ultrasound classification (benign / malignant / normal)",
        "",
        f"Data `busi_cls`: {classification['num_train_examples']} training and "
        f"{classification['num_eval_examples']} test images (balanced: chance accuracy is {100 / len(names):.1f} %). "
        f"Model: MedMamba, depths {cls_settings['config_overrides']['depths']}, dims "
        f"{cls_settings['config_overrides']['dims']} ({classification['num_parameters'] / 1e6:.2f} M parameters), "
        "random init; MedMamba recipe (Adam, RandomResizedCrop + flip, mean/std 0.5) with lr "
        f"{cls_settings['learning_rate']:g} and a {cls_settings['lr_scheduler_type']} schedule (the recipe: 1e-4 "
        f"constant), batch {cls_settings['batch_size']}.",
        "",
        "| " + " | ".join(label for _, label in CLASSIFICATION_METRICS) + " |",
        "|" + "---|" * len(CLASSIFICATION_METRICS),
        "| " + " | ".join(percent(cls_eval[f"eval_{key}"]) for key, _ in CLASSIFICATION_METRICS) + " |",
        "",
        "Macro averages over the classes, in % (AUC one-vs-rest, x 100). Per class:",
        "",
        "| class | precision | sensitivity | specificity | F1 | AUC | test images |",
        "|---|---|---|---|---|---|---|",
    ]
    per_class = report["per_class"]
    for k, name in enumerate(names):
        values = [percent(per_class[key][k]) for key in ("precision", "sensitivity", "specificity", "f1", "auc")]
        lines.append(f"| {name} | " + " | ".join(values) + f" | {per_class['support'][k]} |")
    lines += [
        "",
        f"![confusion matrix]({rel(classification['eval_confusion_matrix_png'])})",
        f"![learning curves]({rel(classification['curves'])})",
        "",
        "## 2. VM-UNet: breast ultrasound lesion segmentation",
        "",
        f"Data `busi_seg`: {segmentation['num_train_examples']} training and {segmentation['num_eval_examples']} "
        f"test images with lesion masks. Model: VM-UNet, encoder depths {seg_settings['config_overrides']['depths']}, "
        f"decoder {seg_settings['config_overrides']['depths_decoder']}, dims "
        f"{seg_settings['config_overrides']['dims']} ({segmentation['num_parameters'] / 1e6:.2f} M parameters), "
        f"random init; ISIC recipe (AdamW, cosine stepped per epoch with T_max {seg_settings['cosine_t_max']}, "
        f"flips + rotation, BCE + Dice) with lr {seg_settings['learning_rate']:g}, batch {seg_settings['batch_size']}, "
        f"inputs scaled to [0, 1] ({seg_settings['normalization_mode']} mode; the recipe: per-image min-max to "
        "[0, 255]).",
        "",
        "| " + " | ".join(label for _, label in SEGMENTATION_METRICS) + " |",
        "|" + "---|" * len(SEGMENTATION_METRICS),
        "| " + " | ".join(percent(seg_eval[f"eval_{key}"]) for key, _ in SEGMENTATION_METRICS) + " |",
        "",
        "ISIC protocol: one confusion matrix over all test pixels (mIoU = foreground IoU), in %; mean image Dice is",
        "the mean of per-image Dice. Predicting background everywhere would give DSC 0 and accuracy "
        f"{100 * (1 - background_fraction):.1f} %",
        f"(lesions cover {100 * background_fraction:.1f} % of the test pixels).",
        "",
        f"![learning curves]({rel(segmentation['curves'])})",
        "",
        "True (middle) and predicted (right) lesion masks on test images:",
        "",
        *[f"![overlay]({rel(path)})" for path in segmentation["overlays"]],
        "",
        "## 3. Inference with `pipeline(...)` on the saved folders",
        "",
        f'`pipeline("image-classification", model="{rel(cls_dir)}", trust_remote_code=True)`:',
        "",
        "| image | true class | predicted | score |",
        "|---|---|---|---|",
        *[f"| {r['image']} | {r['true']} | {r['predicted']} | {r['score']:.2f} |" for r in pipelines["classification"]],
        "",
        f'`pipeline("image-segmentation", model="{rel(seg_dir)}", trust_remote_code=True)`:',
        "",
        "| image | true lesion area | predicted lesion area | Dice |",
        "|---|---|---|---|",
        *[
            f"| {r['image']} | {r['true_lesion_percent']:.1f} % | {r['predicted_lesion_percent']:.1f} % | "
            f"{r['dice']:.2f} |"
            for r in pipelines["segmentation"]
        ],
        "",
        "Every metric above is in the folders' `all_results.json` and `eval_report.json`.",
        "",
    ]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_task(script, arguments, metric, title, output_dir):
    start = time.perf_counter()
    results = script.main(arguments)
    trainer = results.pop("trainer")
    results["curves"] = learning_curves(trainer, metric, Path(output_dir) / "learning_curves.png", title)
    return results, time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    config = SMOKE if args.smoke else DEMO
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    label = (
        "SMOKE TEST (tiny models, meaningless numbers)" if args.smoke else "DEMO configuration, not the paper recipe"
    )
    print(f"hf-medmamba demo: {label}; outputs in {output_dir}", flush=True)

    timings = {}
    print("[1/3] MedMamba on BUSI classification (busi_cls) ...", flush=True)
    cls_dir = output_dir / "medmamba-busi"
    arguments = classification_arguments(config["classification"], args.data_dir, cls_dir, args.seed, args.cache_dir)
    classification, timings["classification"] = run_task(
        run_image_classification, arguments, "accuracy", "MedMamba", cls_dir
    )
    print(f"      test accuracy {percent(classification['eval']['eval_accuracy'])} % in "
          f"{timings['classification']:.0f} s", flush=True)  # fmt: skip

    print("[2/3] VM-UNet on BUSI lesion segmentation (busi_seg) ...", flush=True)
    seg_dir = output_dir / "vmunet-busi"
    arguments = segmentation_arguments(config["segmentation"], args.data_dir, seg_dir, args.seed, args.cache_dir)
    segmentation, timings["segmentation"] = run_task(run_semantic_segmentation, arguments, "dsc", "VM-UNet", seg_dir)
    print(
        f"      test DSC {percent(segmentation['eval']['eval_dsc'])} % in {timings['segmentation']:.0f} s", flush=True
    )

    print("[3/3] pipeline(...) inference on test images ...", flush=True)
    pipeline_start = time.perf_counter()
    pipelines = run_pipelines(cls_dir, seg_dir, args.data_dir)
    timings["pipelines"] = time.perf_counter() - pipeline_start
    timings["total"] = time.perf_counter() - start
    background = lesion_fraction(args.data_dir)
    report = write_report(output_dir, config, classification, segmentation, pipelines, timings, background, args.smoke)
    summary = {
        "classification": {k: classification["eval"][f"eval_{k}"] for k, _ in CLASSIFICATION_METRICS},
        "segmentation": {k: segmentation["eval"][f"eval_{k}"] for k, _ in SEGMENTATION_METRICS},
        "seconds": timings,
        "smoke": args.smoke,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    c, s = summary["classification"], summary["segmentation"]
    print()
    print(f"=== hf-medmamba demo ({label}) ===")
    print(f"MedMamba, BUSI 3 classes: accuracy {percent(c['accuracy'])} % (chance 33.3 %), macro F1 "
          f"{percent(c['f1'])} %, AUC {percent(c['auc'])}")  # fmt: skip
    print(f"VM-UNet, BUSI lesions:    DSC {percent(s['dsc'])} %, mIoU {percent(s['miou'])} %, mean image Dice "
          f"{percent(s['mean_image_dice'])} % (all-background: DSC 0)")  # fmt: skip
    print(f"Wall time {timings['total']:.0f} s (classification {timings['classification']:.0f} s, segmentation "
          f"{timings['segmentation']:.0f} s, pipelines {timings['pipelines']:.0f} s)")  # fmt: skip
    print(f"Report: {report.resolve()}")
    return {"report": report, **summary}


if __name__ == "__main__":
    main()

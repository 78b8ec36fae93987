"""Regenerate every number of examples/RESULTS.md: run the trainings behind each table, then rebuild the tables.

    python examples/reproduce.py                                   # every run, then examples/RESULTS.md
    python examples/reproduce.py --quick --output_dir /tmp/quick   # one seed, a few steps: DIR/RESULTS.md only

Each run is one call of ``examples/run_image_classification.py`` or ``examples/run_semantic_segmentation.py`` in its
own process, with its seed, writing ``all_results.json`` into ``<output_dir>/runs/<name>``; a run whose
``all_results.json`` and ``run.json`` exist is skipped, so an interrupted reproduction resumes where it stopped (the
run it was in starts again: its checkpoints hold no optimiser state). ``--only PREFIX`` runs a subset, so that two
processes can share the runs (with ``OMP_NUM_THREADS=1`` each on 2 cores). The tables (mean ± sd over the seeds) are
then built only from those JSON files and the run records (``run.json``: the exact command, its wall time, machine and
versions).

The tables:

- **BreastMNIST** (MedMNIST v2, the official 546 / 78 / 156 split): MedMamba-T, ConvNeXt-T and ResNet-18, from random
  initialisation, with MedMamba's recipe (Adam 1e-4, batch 32, 100 epochs, RandomResizedCrop + flip, mean/std 0.5) at
  32 x 32 px (the multiple of 32 closest to MedMNIST's 28 px); the checkpoint with the best validation accuracy
  (upstream's rule) is reported on the test split.
- **BUSI lesion segmentation** (`examples/data/busi_seg`; 20 % of train held out for validation, the test split only
  reported): VM-UNet (paper configuration), SegFormer-B0 and SegFormer-B2, from random initialisation, with VM-UNet's
  ISIC recipe (AdamW 1e-3, cosine, flips + rotation) at 128 x 128 px and batch 8, at **equal epochs** (60 each) and
  at **equal training time**: every model gets the steps that fit in the time VM-UNet's 60 epochs take, from training
  step times measured in this process (round-robin medians, so a busy machine slows all models alike; stored in
  ``step_times.json`` so that a resumed reproduction keeps its budgets).
- **Follow-ups**: the equal-epoch setting with one change each (every seed), testing an explanation of a result
  above (``FOLLOW_UPS``: the question each one asks and its arguments).

Budgets: runs are fixed in epochs or steps (never in minutes, so that a busy machine changes their wall time but not
their numbers); each full run takes at most about 20 minutes alone on this project's 2-core CPU, and the whole
reproduction about 12 CPU core-hours, about 6 hours on 2 cores (the tables state the wall time of every run).
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


EXAMPLES = Path(__file__).resolve().parent
REPO = EXAMPLES.parent
RESULTS_FILE = EXAMPLES / "RESULTS.md"
SEEDS = (0, 1, 2)

BREASTMNIST = str(Path("examples") / "data" / "medmnist" / "breastmnist.npz")
BUSI_SEG = str(Path("examples") / "data" / "busi_seg")
RESNET18 = '{"layer_type": "basic", "depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512]}'
SEGFORMER_B2 = '{"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768}'

CLASSIFIERS = {  # label -> model arguments
    "MedMamba-T (ours)": ["--preset", "medmamba-t"],
    "ConvNeXt-T (transformers)": ["--model_type", "convnext"],
    "ResNet-18 (transformers)": ["--model_type", "resnet", "--config_overrides", RESNET18],
}
SEGMENTERS = {
    "VM-UNet, paper configuration (ours)": ["--preset", "vmunet-paper"],
    "SegFormer-B0 (transformers)": ["--model_type", "segformer"],
    "SegFormer-B2 (transformers)": ["--model_type", "segformer", "--config_overrides", SEGFORMER_B2],
}
EQUAL_EPOCHS = 60
SEG_BATCH, SEG_SIZE, SEG_TRAIN_IMAGES = 8, 128, 60  # 80 % of busi_seg's 75 training images


@dataclass
class Run:
    name: str  # folder under runs/
    table: str
    model: str
    seed: int
    script: str
    args: list = field(default_factory=list)
    protocol: str = ""


def classification_runs(seeds, quick):
    common = ["--medmnist_file", BREASTMNIST, "--recipe", "medmamba", "--image_size", "32"]
    common += ["--do_train", "--do_eval", "--do_predict", "--eval_strategy", "epoch", "--save_strategy", "epoch"]
    common += ["--save_total_limit", "1", "--save_only_model", "True", "--load_best_model_at_end"]
    common += ["--metric_for_best_model", "accuracy", "--logging_strategy", "epoch", "--per_device_eval_batch_size"]
    common += ["64"]
    if quick:
        common += ["--max_steps", "2", "--max_eval_samples", "16", "--max_predict_samples", "16"]
    runs = []
    for seed in seeds:  # seed-major: an unfinished reproduction has already compared every model
        for label, model in CLASSIFIERS.items():
            slug = label.split(" ")[0].lower()
            runs.append(Run(f"breastmnist/{slug}/seed{seed}", "breastmnist", label, seed,
                            "run_image_classification.py", [*model, *common]))  # fmt: skip
    return runs


def segmentation_runs(seeds, quick, steps=None):
    """Equal-epoch runs, and with ``steps`` ({label: optimiser steps}) the equal-time runs of the other models."""
    common = ["--data_dir", BUSI_SEG, "--recipe", "isic", "--holdout_validation", "--train_val_split", "0.2"]
    common += ["--image_size", str(64 if quick else SEG_SIZE), "--per_device_train_batch_size", str(SEG_BATCH)]
    common += ["--do_train", "--do_eval", "--do_predict", "--eval_strategy", "epoch", "--save_strategy", "epoch"]
    common += ["--save_total_limit", "1", "--save_only_model", "True", "--load_best_model_at_end"]
    common += ["--metric_for_best_model", "dsc", "--logging_strategy", "epoch", "--num_overlays", "0"]
    if quick:
        common += ["--max_eval_samples", "4", "--max_predict_samples", "4"]
    runs = []
    for seed in seeds:
        for label, model in SEGMENTERS.items():
            slug = label.split(",")[0].split(" ")[0].lower()
            budget = ["--max_steps", "2"] if quick else ["--num_train_epochs", str(EQUAL_EPOCHS)]
            runs.append(Run(f"busi_seg/equal_epochs/{slug}/seed{seed}", "segmentation", label, seed,
                            "run_semantic_segmentation.py", [*model, *common, *budget], "equal epochs"))  # fmt: skip
            if steps is not None and not label.startswith("VM-UNet"):  # VM-UNet's equal-time run is its own
                budget = ["--max_steps", str(steps[label]), "--num_train_epochs", "100000"]
                runs.append(Run(f"busi_seg/equal_time/{slug}/seed{seed}", "segmentation", label, seed,
                                "run_semantic_segmentation.py", [*model, *common, *budget], "equal time"))  # fmt: skip
    return runs


# Follow-ups: runs that test an explanation of a result in the tables (label -> (question, extra arguments)).
FOLLOW_UPS = {
    "SegFormer-B2 (transformers), learning rate 1e-4": (
        "Does SegFormer-B2 predict background only at equal epochs because VM-UNet's 1e-3 is too high for it?",
        ["--learning_rate", "1e-4"],
    ),
    "VM-UNet, paper configuration (ours), learning rate 1e-4": (
        "SegFormer-B2 does better at 1e-4: does VM-UNet too (1e-3 is the paper's rate for a pretrained encoder)?",
        ["--learning_rate", "1e-4"],
    ),
    "SegFormer-B0 (transformers), learning rate 1e-4": (
        "And SegFormer-B0, so that the three models also compare at 1e-4?",
        ["--learning_rate", "1e-4"],
    ),
}


def follow_up_runs(seeds, quick):
    """Each follow-up is the equal-epoch segmentation run with the follow-up's arguments added, for every seed."""
    runs = []
    for seed in seeds:
        for label, (question, extra) in FOLLOW_UPS.items():
            base = next(r for r in segmentation_runs([seed], quick) if label.startswith(r.model.split(" ")[0]))
            slug = base.name.split("/")[2] + "-" + "-".join(a.lstrip("-").replace("_", "-") for a in extra)
            runs.append(Run(f"busi_seg/follow_ups/{slug}/seed{seed}", "follow-up", label, seed, base.script,
                            [*base.args, *extra], question))  # fmt: skip
    return runs


# ----------------------------------------------------------------------------------------------------------------------
# Step times for the equal-time budget
# ----------------------------------------------------------------------------------------------------------------------


def build_segmenter(label):
    import transformers

    import hf_medmamba

    if label.startswith("VM-UNet"):
        return hf_medmamba.VMUNetForSegmentation(hf_medmamba.VMUNetConfig.from_preset("vmunet-paper"))
    overrides = json.loads(SEGFORMER_B2) if "B2" in label else {}
    config = transformers.SegformerConfig(num_labels=2, **overrides)
    return transformers.SegformerForSemanticSegmentation(config)


def measure_step_times(size, batch, rounds):
    """Seconds per training step (forward, backward, AdamW) of each segmenter: medians over ``rounds`` round-robin
    rounds after one warm-up step each."""
    import torch

    torch.manual_seed(0)
    models = {label: build_segmenter(label).train() for label in SEGMENTERS}
    optimisers = {label: torch.optim.AdamW(model.parameters(), lr=1e-3) for label, model in models.items()}
    pixels = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 2, (batch, size, size))

    def step(label):
        optimisers[label].zero_grad()
        models[label](pixel_values=pixels, labels=labels).loss.backward()
        optimisers[label].step()

    times = {label: [] for label in models}
    for label in models:
        step(label)
    for _ in range(rounds):
        for label in models:
            start = time.perf_counter()
            step(label)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def equal_time_steps(step_times, quick):
    """Optimiser steps of each model in the time of VM-UNet's equal-epoch run."""
    vmunet = next(label for label in SEGMENTERS if label.startswith("VM-UNet"))
    vmunet_steps = 2 if quick else EQUAL_EPOCHS * -(-SEG_TRAIN_IMAGES // SEG_BATCH)
    budget = vmunet_steps * step_times[vmunet]
    return {label: max(1, round(budget / seconds)) for label, seconds in step_times.items()}, budget


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def machine():
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def command(run, output_dir):
    return [sys.executable, str(EXAMPLES / run.script), *run.args, "--seed", str(run.seed),
            "--output_dir", str(output_dir), "--disable_tqdm", "True"]  # fmt: skip


def execute(run, root, log):
    """Run ``run`` unless its ``all_results.json`` exists; record the command, wall time, machine and versions."""
    folder = root / "runs" / run.name
    if finished(root, run):
        log(f"skip {run.name} (all_results.json exists)")
        return
    if folder.exists():  # an interrupted run: its checkpoints hold no optimiser state, so start it again
        log(f"clear {run.name} (interrupted before all_results.json)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cmd = command(run, folder)
    log(f"run  {run.name}")
    start = time.time()
    with open(folder / "log.txt", "w") as out:
        status = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.time() - start
    if status != 0:
        raise RuntimeError(f"{run.name} failed (exit status {status}); see {folder / 'log.txt'}")
    record = {"name": run.name, "command": cmd[1:], "wall_seconds": wall, "machine": machine(), "seed": run.seed}
    (folder / "run.json").write_text(json.dumps(record, indent=1))


# ----------------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------------


def finished(root, run):
    folder = root / "runs" / run.name
    return (folder / "all_results.json").is_file() and (folder / "run.json").is_file()


def load(root, run):
    folder = root / "runs" / run.name
    results = json.loads((folder / "all_results.json").read_text())
    record = json.loads((folder / "run.json").read_text())
    state = json.loads((folder / "trainer_state.json").read_text()) if (folder / "trainer_state.json").is_file() else {}
    return results, record, state


def threads(record):
    """The torch threads a run used (records written before they were recorded: torch's default, one per CPU)."""
    return record["machine"].get("torch_threads", record["machine"]["logical_cpus"])


def mean_sd(values, scale=100.0, digits=1):
    values = [scale * v for v in values]
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def breastmnist_table(root, runs):
    lines = [
        "| model | seeds | test OA (%) | test AUC | test macro F1 (%) | validation OA of the chosen checkpoint (%) | "
        "optimiser steps | wall time per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in CLASSIFIERS:
        chosen = [r for r in runs if r.model == label]
        rows = [load(root, r) for r in chosen if finished(root, r)]
        if not rows:
            lines.append(f"| {label} | 0 of {len(chosen)} | not run yet | | | | | |")
            continue
        results = [r for r, _, _ in rows]
        lines.append(
            f"| {label} | {len(rows)} of {len(chosen)} | {mean_sd([r['test_accuracy'] for r in results])} | "
            f"{mean_sd([r['test_auc'] for r in results], scale=1.0, digits=3)} | "
            f"{mean_sd([r['test_f1'] for r in results])} | "
            f"{mean_sd([state.get('best_metric', float('nan')) for _, _, state in rows])} | "
            f"{round(statistics.fmean(state.get('global_step', 0) for _, _, state in rows))} | "
            f"{statistics.fmean(rec['wall_seconds'] for _, rec, _ in rows) / 60:.1f} min |"
        )
    return lines


def segmentation_table(root, runs, protocol, steps=None):
    lines = [
        "| model | seeds | test DSC (%) | test mIoU (%) | test mean per-image Dice (%) | optimiser steps | "
        "wall time per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in SEGMENTERS:
        chosen = [r for r in runs if r.model == label and r.protocol == protocol]
        if protocol == "equal time" and label.startswith("VM-UNet"):
            chosen = [r for r in runs if r.model == label and r.protocol == "equal epochs"]
        rows = [load(root, r) for r in chosen if finished(root, r)]
        if not rows:
            lines.append(f"| {label} | 0 of {len(chosen)} | not run yet | | | | |")
            continue
        lines.append(
            f"| {label} | {len(rows)} of {len(chosen)} | {segmentation_cells(rows)} | "
            f"{statistics.fmean(rec['wall_seconds'] for _, rec, _ in rows) / 60:.1f} min |"
        )
    return lines


def segmentation_cells(rows):
    """The DSC, mIoU, mean per-image Dice (mean ± sd) and mean optimiser-step cells of finished segmentation runs."""
    results = [r for r, _, _ in rows]
    return (
        f"{mean_sd([r['test_dsc'] for r in results])} | {mean_sd([r['test_miou'] for r in results])} | "
        f"{mean_sd([r['test_mean_image_dice'] for r in results])} | "
        f"{round(statistics.fmean(state.get('global_step', 0) for _, _, state in rows))}"
    )


def follow_up_table(root, runs):
    lines = [
        "| model, change | question | seeds | test DSC (%) | test mIoU (%) | test mean per-image Dice (%) | "
        "optimiser steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, (question, _) in FOLLOW_UPS.items():
        chosen = [r for r in runs if r.model == label]
        rows = [load(root, r) for r in chosen if finished(root, r)]
        if not rows:
            lines.append(f"| {label} | {question} | 0 of {len(chosen)} | not run yet | | | |")
            continue
        lines.append(f"| {label} | {question} | {len(rows)} of {len(chosen)} | {segmentation_cells(rows)} |")
    return lines


def tables(root, runs, timing, quick):
    """The markdown of every table, built from the JSON files of the finished runs."""
    done = [r for r in runs if finished(root, r)]
    if not done:
        raise FileNotFoundError(f"no finished run in {root / 'runs'}: run examples/reproduce.py first")
    records = [load(root, r)[1] for r in done]
    m = records[0]["machine"]
    total = sum(record["wall_seconds"] for record in records)
    core_hours = sum(record["wall_seconds"] * threads(record) for record in records) / 3600
    partial = (
        f" **Unfinished: {len(done)} of {len(runs)} runs so far** (the seeds column says which rows are complete; "
        "`python examples/reproduce.py` runs the rest)."
        if len(done) < len(runs)
        else ""
    )
    cls = [r for r in runs if r.table == "breastmnist"]
    seg = [r for r in runs if r.table == "segmentation"]
    follow_ups = [r for r in runs if r.table == "follow-up"]
    seeds = sorted({r.seed for r in runs})
    out = [
        "## Reproduction summary",
        "",
        f"Built by `python examples/reproduce.py{' --quick' if quick else ''}` from the `all_results.json` of "
        f"{len(runs)} runs (seeds {', '.join(map(str, seeds))}; mean ± sample sd over the seeds). Machine: {m['cpu']}, "
        f"{m['logical_cpus']} logical CPUs, Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}. Total wall time of the finished runs: {total / 3600:.2f} h; CPU core-hours (wall time x "
        f"threads of each run): {core_hours:.1f}.{partial}",
        "",
        "### BreastMNIST (test split; checkpoint chosen on the validation split)",
        "",
        *breastmnist_table(root, cls),
        "",
        "### BUSI lesion segmentation, equal epochs (test split; checkpoint chosen on 20 % of train held out)",
        "",
        *segmentation_table(root, seg, "equal epochs"),
        "",
        "### BUSI lesion segmentation, equal training time",
        "",
        f"Training step times (s, batch {SEG_BATCH}, round-robin medians): "
        + ", ".join(f"{label.split(',')[0]} {seconds:.3f}" for label, seconds in timing["step_seconds"].items())
        + f"; budget {timing['budget_seconds'] / 60:.1f} min of training steps (VM-UNet's equal-epoch run).",
        "",
        *segmentation_table(root, seg, "equal time"),
        "",
        "### Follow-ups (equal-epoch setting with one change)",
        "",
        *follow_up_table(root, follow_ups),
        "",
        "Commands (each run also adds `--seed S --output_dir DIR --disable_tqdm True`):",
        "",
        "```bash",
    ]
    seen = set()
    for run in runs:
        key = (run.model, run.protocol, run.table)
        if key not in seen:
            seen.add(key)
            out.append("python examples/" + run.script + " " + " ".join(_quote(a) for a in run.args))
    out += ["```", ""]
    return "\n".join(out)


BEGIN, END = "<!-- reproduce.py: begin -->", "<!-- reproduce.py: end -->"


def write_section(path, text):
    """Replace the generated section of ``path`` (between the BEGIN and END markers) by ``text``."""
    current = path.read_text()
    if BEGIN not in current or END not in current:
        raise ValueError(f"{path} has no generated section ({BEGIN} ... {END})")
    head, rest = current.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def _quote(arg):
    return f"'{arg}'" if any(c in arg for c in ' {}"[],') else arg


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/reproduce", help="Where the runs and their tables go.")
    parser.add_argument("--quick", action="store_true", help="One seed and a few steps per run (<= 2 min in all).")
    parser.add_argument("--only", default="", help="Run only the runs whose folder name starts with this (e.g. "
                        "busi_seg), to share the work between processes; the tables are then not rebuilt.")  # fmt: skip
    parser.add_argument("--tables_only", action="store_true", help="Run nothing: build the tables from the runs "
                        "finished so far (rows say how many seeds they hold).")  # fmt: skip
    args = parser.parse_args(argv)
    root = Path(args.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS[:1] if args.quick else SEEDS

    def log(message):
        print(f"[reproduce {time.strftime('%H:%M:%S')}] {message}", flush=True)

    timing_file = root / "step_times.json"
    if timing_file.is_file():
        timing = json.loads(timing_file.read_text())
    else:
        log("measuring training step times of the segmenters")
        step_seconds = measure_step_times(64 if args.quick else SEG_SIZE, SEG_BATCH, 1 if args.quick else 5)
        steps, budget = equal_time_steps(step_seconds, args.quick)
        timing = {"step_seconds": step_seconds, "steps": steps, "budget_seconds": budget}
        timing_file.write_text(json.dumps(timing, indent=1))
    runs = classification_runs(seeds, args.quick) + segmentation_runs(seeds, args.quick, timing["steps"])
    runs += follow_up_runs(seeds, args.quick)
    for run in runs:
        if run.name.startswith(args.only) and not args.tables_only:
            execute(run, root, log)
    if args.only:
        return None
    text = tables(root, runs, timing, args.quick)
    (root / "RESULTS.md").write_text(text)
    log(f"tables written to {root / 'RESULTS.md'}")
    if not args.quick:  # the full reproduction's tables are examples/RESULTS.md's generated section
        write_section(RESULTS_FILE, text)
        log(f"tables written into {RESULTS_FILE}")
    return text


if __name__ == "__main__":
    main()

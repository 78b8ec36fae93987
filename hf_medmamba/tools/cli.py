"""The ``hf-medmamba`` command line. ``hf-medmamba predict MODEL INPUTS... --output DIR`` runs an image classifier or a
semantic segmenter (the task follows the model) over images, DICOM files, NIfTI volumes and DICOM series.

Outputs (all written to a hidden staging folder inside DIR and moved into place at the end; ``summary.json`` last):

- classification: ``predictions.csv``, one row per image, DICOM frame or volume slice, with the top-k labels and scores;
- segmentation: ``<name>_mask.png`` (label values; 0/255 for binary models) and ``<name>_overlay.png`` per 2-D image
  or DICOM frame (``<name>_frameNNNN_*`` for multi-frame files), ``<name>_seg.nii.gz`` per NIfTI volume or DICOM
  series (the input's voxel order and affine), and ``legend.png`` / ``legend.json`` for multi-class models.

Outputs of files found in a folder argument (or by a glob) mirror their sub-folders below it (below the glob's
wildcard-free part); files named explicitly have theirs directly in DIR. Medical files are read through `medical_io`
(the path of ``examples/evaluate_volumes.py`` and the Space): volumes are brought to RAS and sliced along a RAS axis
in radiological display orientation, and every input is windowed as `medical_io` says (``--window``, the processor's
window, the DICOM VOI LUT / window, the data's range). Inputs that cannot be read or predicted are skipped and listed
at the end and in ``summary.json``; the exit status is then 1 (2 for usage errors, 0 when everything ran).
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm import tqdm
from transformers.utils import logging as transformers_logging

from .. import __version__
from . import medical_io
from .cli_inputs import (
    SUPPORTED,
    VOLUME_KINDS,
    CLIError,
    Source,
    check_requirements,
    collect_inputs,
    display_image,
    output_stems,
    source_kind,
)
from .cli_model import Predictor, load_model, resolve_device
from .cli_outputs import StagedOutputs, label_colors, legend_image, mask_image, overlay


DTYPES = ("float32", "bfloat16", "float16")
SUMMARY = "summary.json"
PREDICTIONS = "predictions.csv"


class Run:
    """One ``predict`` run: feeds the frames of every input through the model in batches and writes the outputs."""

    def __init__(self, predictor, outputs, batch_size, alpha, progress):
        self.predictor, self.outputs = predictor, outputs
        self.batch_size, self.alpha, self.progress = batch_size, alpha, progress
        self.failures, self.rows, self.succeeded, self.images = [], [], 0, 0
        self.colors = label_colors(predictor.num_labels)

    def fail(self, source, reason):
        if source.failed:
            return
        source.failed = True
        source.release()
        self.failures.append({"file": str(source.path), "reason": reason})
        self.progress.update(1)

    def feed(self, sources, axis, window):
        queue = []
        for source in sources:
            self.progress.set_postfix_str(source.path.name, refresh=False)
            try:
                source.read(axis, window, self.predictor.processor)
            except CLIError:
                raise
            except ImportError as err:  # a package missing for this input (checked up front for the usual ones)
                raise CLIError(str(err)) from None
            except Exception as err:
                self.fail(source, describe(err))
                continue
            for position in range(len(source.frames)):
                queue.append((source, position))
                if len(queue) >= self.batch_size:
                    self.predict(queue)
                    queue = []
        if queue:
            self.predict(queue)

    def predict(self, items):
        items = [(source, position) for source, position in items if not source.failed]
        if not items:
            return
        try:
            results = self.predictor([source.frames[position] for source, position in items])
        except Exception as err:
            if len(items) > 1:  # find the frame that fails; the others still run
                for item in items:
                    self.predict([item])
                return
            source, position = items[0]
            number = source.numbers[position]
            self.fail(source, describe(err) if number is None else f"slice {number}: {describe(err)}")
            return
        for (source, position), result in zip(items, results):
            source.results[position] = result
            if source.done:
                self.finish(source)

    def finish(self, source):
        written = []
        try:
            if self.predictor.task == "classification":
                rows = [
                    [str(source.path), "" if source.numbers[p] is None else source.numbers[p]]
                    + [v for label, score in source.results[p] for v in (label, f"{score:.6f}")]
                    for p in range(len(source.frames))
                ]
            else:
                rows = []
                self.write_segmentation(source, written)
        except Exception as err:
            self.outputs.discard(written)
            self.fail(source, f"writing outputs: {describe(err)}")
            return
        self.rows.extend(rows)
        source.outputs = written
        self.succeeded += 1
        self.images += len(source.frames)
        source.release()
        source.results = {}
        self.progress.update(1)

    def write_segmentation(self, source, written):
        num_labels = self.predictor.num_labels
        if source.kind in VOLUME_KINDS:
            slices = np.stack([source.results[position] for position in range(len(source.frames))])
            relative = source.stem.with_name(source.stem.name + "_seg.nii.gz")
            written.append(relative)
            labels = medical_io.stack_slices(slices, source.axis)
            medical_io.write_label_volume(source.volume, labels, self.outputs.path(relative))
            return
        for position, number in enumerate(source.numbers):
            labels = source.results[position]
            name = source.stem.name if number is None else f"{source.stem.name}_frame{number:04d}"
            mask = mask_image(labels, num_labels)
            blended = overlay(display_image(source.frames[position]), labels, self.colors, self.alpha)
            for suffix, image in (("_mask.png", mask), ("_overlay.png", PIL.Image.fromarray(blended))):
                relative = source.stem.with_name(name + suffix)
                written.append(relative)
                image.save(self.outputs.path(relative))

    def write_legend(self):
        entries = [
            {"value": i, "label": self.predictor.id2label.get(i, str(i)), "color": self.colors[i].tolist()}
            for i in range(self.predictor.num_labels)
        ]
        legend_image(entries).save(self.outputs.path("legend.png"))
        text = json.dumps({"background_drawn": False, "labels": entries}, indent=2)
        self.outputs.path("legend.json").write_text(text + "\n", encoding="utf-8")

    def write_predictions(self):
        k = self.predictor.top_k
        header = ["file", "slice"] + [f"{name}_{i}" for i in range(1, k + 1) for name in ("label", "score")]
        with open(self.outputs.path(PREDICTIONS), "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(self.rows)


def describe(err):
    return f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------------


def predict(args):
    """The ``predict`` command; returns the exit status."""
    start = time.time()
    output = Path(args.output)
    found, unmatched = collect_inputs(args.inputs, exclude=output, series=args.dicom_series)
    if not found:
        raise CLIError(f"no input files found in {' '.join(args.inputs)} (supported: {SUPPORTED}).")
    check_requirements({source_kind(file) for file, _ in found})
    device = resolve_device(args.device)
    bars = transformers_logging.is_progress_bar_enabled()
    if args.quiet:
        transformers_logging.disable_progress_bar()
    try:
        model, processor, task = load_model(args.model, args.trust_remote_code, args.revision, args.dtype, device)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    predictor = Predictor(model, processor, task, args.top_k)
    window = tuple(args.window) if args.window else None

    try:
        output.mkdir(parents=True, exist_ok=True)
        (output / SUMMARY).unlink(missing_ok=True)  # a summary is only there once a run has finished
        outputs = StagedOutputs(output)
    except OSError as err:
        raise CLIError(f"cannot write to {output}: {err}") from None
    stems = output_stems([relative for _, relative in found], {relative for file, relative in found if file.is_dir()})
    sources = [Source(file, stem) for (file, _), stem in zip(found, stems)]
    progress = tqdm(total=len(sources), unit="file", desc="predict", disable=args.quiet, file=sys.stderr)
    try:
        run = Run(predictor, outputs, args.batch_size, args.overlay_alpha, progress)
        for pattern in unmatched:
            run.failures.append({"file": pattern, "reason": f"no supported file matches it (supported: {SUPPORTED})"})
        run.feed(sources, args.axis, window)
        progress.close()
        if task == "classification":
            run.write_predictions()
        elif predictor.num_labels > 2:
            run.write_legend()
        outputs.commit()
        summary = {
            "status": "failed" if run.failures else "ok",
            "model": args.model,
            "task": task,
            "model_type": model.config.model_type,
            "labels": {str(k): v for k, v in predictor.id2label.items()},
            "hf_medmamba_version": __version__,
            "arguments": {
                "inputs": args.inputs,
                "output": str(output),
                "top_k": predictor.top_k,
                "window": list(window) if window else None,
                "axis": medical_io.AXES[args.axis],
                "dicom_series": args.dicom_series,
                "batch_size": args.batch_size,
                "device": str(device),
                "dtype": args.dtype,
            },
            "counts": {
                "inputs": len(sources),
                "succeeded": run.succeeded,
                "failed": len(run.failures),
                "images": run.images,
                "outputs": len(outputs.files),
            },
            "inputs": [
                {
                    "file": str(s.path),
                    "status": "failed" if s.failed else "ok",
                    "images": 0 if s.failed else len(s.frames),
                    "intensity": None if s.failed else s.intensity,
                    "outputs": [str(f) for f in s.outputs],
                }
                for s in sources
            ],
            "outputs": [str(f) for f in outputs.files],
            "failures": run.failures,
            "seconds": round(time.time() - start, 3),
        }
        outputs.write_last(SUMMARY, json.dumps(summary, indent=2) + "\n")
    finally:
        progress.close()
        outputs.cleanup()
    if not args.quiet:
        print(f"{run.succeeded} of {len(sources)} input file(s) predicted ({run.images} image(s)); outputs in {output}")
    if run.failures:
        print(f"hf-medmamba predict: {len(run.failures)} input(s) failed; the others were written:", file=sys.stderr)
        for failure in run.failures:
            print(f"  {failure['file']}: {failure['reason']}", file=sys.stderr)
        return 1
    return 0


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _axis(text):
    """A RAS axis: 0 / sagittal, 1 / coronal, 2 / axial (-1 .. -3 count from the end)."""
    name = text.strip().lower()
    if name in medical_io.AXES:
        return medical_io.AXES.index(name)
    try:
        value = int(name)
    except ValueError:
        value = None
    if value not in (0, 1, 2, -1, -2, -3):
        raise argparse.ArgumentTypeError(f"must be 0 / sagittal, 1 / coronal or 2 / axial, got {text!r}")
    return value % 3


def _fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hf-medmamba", description="MedMamba, VMamba and VM-UNet (hf_medmamba) from the command line."
    )
    parser.add_argument("--version", action="version", version=f"hf-medmamba {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub = commands.add_parser(
        "predict",
        help="classify or segment images, DICOM files and NIfTI volumes",
        description=(
            "Run an image classifier or a semantic segmenter (the task follows the model) over image files (PNG, "
            "JPEG, BMP, TIFF), DICOM files (each frame as an image), NIfTI volumes and DICOM series (--dicom-series; "
            "volumes are brought to RAS and cut into slices along --axis, in radiological display orientation). "
            "Classification writes predictions.csv (top-k labels and scores per image or slice); segmentation writes "
            "a mask and an overlay PNG per image or DICOM frame, a label volume per NIfTI file or DICOM series (in the "
            "input's voxel order and affine) and, for multi-class models, legend.png/legend.json. summary.json, with "
            "the intensity window each input got, is written last. Unreadable inputs are skipped and reported; the "
            "exit status is then 1."
        ),
    )
    sub.add_argument("model", metavar="MODEL", help="a saved model folder or a Hub id (with its image processor)")
    sub.add_argument("inputs", metavar="INPUTS", nargs="+", help="files, folders (recursive) and glob patterns")
    sub.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    sub.add_argument(
        "--top-k", type=_positive_int, default=3, metavar="K", help="labels per row of predictions.csv (default 3)"
    )
    sub.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help=(
            "clip intensities (modality units: CT in HU, e.g. -125 275) to [LOW, HIGH] and scale them to [0, 1]; "
            "default: the processor's window (preprocessor_config.json), else the DICOM file's VOI LUT / window, "
            "else the volume's (or image's) range. 8-bit images are used as they are"
        ),
    )
    sub.add_argument(
        "--axis",
        type=_axis,
        default=2,
        metavar="AXIS",
        help=(
            "RAS axis along which volumes are cut into slices: 0 / sagittal, 1 / coronal, 2 / axial (default); "
            "slices are in radiological display orientation, whatever the input's voxel order"
        ),
    )
    sub.add_argument(
        "--dicom-series",
        action="store_true",
        help=(
            "each folder argument (or folder a glob matches) is one DICOM series, read as a volume from the DICOM "
            "files directly inside it and written as <folder>_seg.nii.gz; without it, folders are searched for files"
        ),
    )
    sub.add_argument(
        "--batch-size", type=_positive_int, default=8, metavar="N", help="images per forward pass (default 8)"
    )
    sub.add_argument("--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:1, ...")
    sub.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    sub.add_argument(
        "--overlay-alpha",
        type=_fraction,
        default=0.5,
        metavar="A",
        help="opacity of the mask colours in overlays (default 0.5)",
    )
    sub.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")
    sub.add_argument("--revision", metavar="REV", help="Hub revision (branch, tag or commit) of MODEL")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no final line (errors still)")
    sub.set_defaults(func=predict)
    return parser


def main(argv=None):
    """Entry point of ``hf-medmamba``; returns the exit status (0 ok, 1 some inputs failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "predict" and args.window and args.window[0] >= args.window[1]:
        print(f"hf-medmamba predict: error: --window needs LOW < HIGH, got {args.window}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except CLIError as err:
        print(f"hf-medmamba {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hf-medmamba {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

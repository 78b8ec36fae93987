"""The ``hf-medmamba`` command line. ``hf-medmamba predict MODEL INPUTS... --output DIR`` runs an image classifier or a
semantic segmenter (the task follows the model) over images, DICOM files and NIfTI volumes.

Outputs (all written to a hidden staging folder inside DIR and moved into place at the end; ``summary.json`` last):

- classification: ``predictions.csv``, one row per image, DICOM frame or volume slice, with the top-k labels and scores;
- segmentation: ``<name>_mask.png`` (label values; 0/255 for binary models) and ``<name>_overlay.png`` per 2-D image
  or DICOM frame (``<name>_frameNNNN_*`` for multi-frame files), ``<name>_seg.nii.gz`` per NIfTI volume (the input's
  shape, affine and header geometry), and ``legend.png`` / ``legend.json`` for multi-class models.

Outputs of files found in a folder argument (or by a glob) mirror their sub-folders below it (below the glob's
wildcard-free part); files named explicitly have theirs directly in DIR. NIfTI slices reach the model in voxel order
(rows along the first in-plane axis), not reoriented. Inputs that cannot be read or predicted are skipped and listed at
the end and in ``summary.json``; the exit status is then 1 (2 for usage errors, 0 when everything ran).

This module is not imported by the model, configuration or processing files (it is not part of the Hub remote code).
"""

import argparse
import colorsys
import csv
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from PIL import ImageDraw, ImageFont
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # see hf_medmamba/__init__.py
from transformers.utils import logging as transformers_logging

from . import __version__
from .image_processing_common import ImageInputError, pil_to_array, to_model_array


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
SUPPORTED = ", ".join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS)
DTYPES = ("float32", "bfloat16", "float16")
SUMMARY = "summary.json"
PREDICTIONS = "predictions.csv"
# Background first (never drawn), then 20 distinct colours (Trubetskoy's list); more labels get generated hues.
PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]


class CLIError(Exception):
    """A problem with the command as a whole (arguments, model, missing package): reported, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def input_kind(path):
    """``"image"``, ``"dicom"``, ``"nifti"`` from the file name, or None for an unsupported extension."""
    name = path.name.lower()
    if name.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if name.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if name.endswith(IMAGE_EXTENSIONS):
        return "image"
    return None


def sniff_kind(path):
    """The kind of a file named explicitly: by extension, else DICOM when it has the ``DICM`` preamble marker."""
    kind = input_kind(path)
    if kind is None:
        with open(path, "rb") as file:
            if file.read(132)[128:] == b"DICM":
                return "dicom"
    return kind


def strip_extension(name):
    lower = name.lower()
    for extension in NIFTI_EXTENSIONS + DICOM_EXTENSIONS + IMAGE_EXTENSIONS:
        if lower.endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem


def _is_inside(path, folder):
    """Whether ``path`` is ``folder`` or below it."""
    if folder is None:
        return False
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(os.path.join(folder, ""))


def _scan_folder(folder, exclude):
    """Supported files below ``folder`` (recursively, sorted), hidden files and the output folder left out."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _is_inside(os.path.join(root, d), exclude))
        found.extend(Path(root, n) for n in sorted(names) if not n.startswith(".") and input_kind(Path(n)))
    return found


def _glob_base(pattern):
    """The folder part of a glob pattern before its first wildcard (outputs mirror the matches below it)."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    return Path(*parts[:first]) if first else Path()


def collect_inputs(patterns, exclude=None):
    """Files from paths, folders (recursive, supported extensions only) and glob patterns, in argument order without
    duplicates, each with its path relative to its folder argument or glob base (just its name for a file named
    explicitly); also the arguments that matched nothing. Hidden files and the ``exclude`` folder are left out."""
    files, unmatched = {}, []
    for pattern in patterns:
        path = Path(os.path.expanduser(pattern))
        if path.is_dir():
            found = [(f, f.relative_to(path)) for f in _scan_folder(path, exclude)]
        elif path.is_file():
            found = [(path, Path(path.name))]  # named explicitly: kept whatever its extension (refused if unsupported)
        elif any(c in pattern for c in "*?["):
            base, found = _glob_base(path), []
            for match in sorted(glob.glob(str(path), recursive=True)):
                match = Path(match)
                if _is_inside(match, exclude) or match.name.startswith("."):
                    continue
                if match.is_dir():
                    found.extend((f, f.relative_to(base)) for f in _scan_folder(match, exclude))
                elif match.is_file() and input_kind(match):
                    found.append((match, match.relative_to(base)))
        else:
            found = []
        if not found:
            unmatched.append(pattern)
        for file, relative in found:
            files.setdefault(os.path.normcase(os.path.abspath(file)), (file, relative))
    return list(files.values()), unmatched


def output_stems(relatives):
    """Output name stem of each input (its relative path without extension), unique: where two share a stem the
    whole name is used (dots as underscores), then a counter."""
    stems = [r.with_name(strip_extension(r.name)) for r in relatives]
    counts = Counter(stems)
    stems = [s if counts[s] == 1 else r.with_name(r.name.replace(".", "_")) for s, r in zip(stems, relatives)]
    seen, unique = Counter(), []
    for stem in stems:
        seen[stem] += 1
        unique.append(stem if seen[stem] == 1 else stem.with_name(f"{stem.name}_{seen[stem]}"))
    return unique


def require(module, what):
    """Import an optional reader (pydicom, nibabel) or fail with the install command."""
    try:
        return __import__(module)
    except ImportError:
        raise CLIError(f"reading {what} files needs {module}: pip install hf-medmamba[medical]") from None


def apply_window(image, window):
    """Clip intensities to ``window = (low, high)`` and scale them to [0, 1] (float32); PIL images become arrays."""
    low, high = window
    array = pil_to_array(image) if isinstance(image, PIL.Image.Image) else np.asarray(image)
    return np.clip((array.astype(np.float32) - low) / np.float32(high - low), 0.0, 1.0)


def read_image(path):
    """PIL images of a file (several for multi-page TIFF), decoded now so that corrupt files fail here."""
    with PIL.Image.open(path) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()
            frames.append(image.copy())
    return frames


def _dicom_rescale(ds, index):
    """(slope, intercept) of one frame: per-frame, shared, or top-level Rescale Slope / Intercept."""
    for name, position in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(name)
        if groups and len(groups) > position:
            transform = groups[position].get("PixelValueTransformationSequence")
            if transform:
                return float(transform[0].get("RescaleSlope", 1) or 1), float(
                    transform[0].get("RescaleIntercept", 0) or 0
                )
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def read_dicom(path):
    """Frames of a DICOM file in modality units (Rescale Slope / Intercept or Modality LUT applied), RGB for colour
    data; MONOCHROME1 is returned with its flag so that it can be inverted after windowing."""
    pydicom = require("pydicom", "DICOM")
    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ImageInputError("the DICOM file has no pixel data.")
    array = ds.pixel_array
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if count == 1:
        array = array[None]
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        if photometric.startswith("YBR") and not hasattr(pydicom, "pixels"):  # pydicom 2 leaves YCbCr as it is
            from pydicom.pixel_data_handlers.util import convert_color_space

            array = convert_color_space(array, photometric, "RGB")
        return list(array), False
    frames = []
    for index, frame in enumerate(array):
        if "ModalityLUTSequence" in ds:
            try:
                from pydicom.pixels import apply_modality_lut
            except ImportError:  # pydicom 2
                from pydicom.pixel_data_handlers.util import apply_modality_lut
            frame = apply_modality_lut(frame, ds)
        else:
            slope, intercept = _dicom_rescale(ds, index)
            if slope == 1 and intercept.is_integer():
                frame = frame.astype(np.int32) + int(intercept) if intercept else frame
            else:
                frame = frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        frames.append(frame)
    return frames, photometric == "MONOCHROME1"


def read_nifti(path):
    """The nibabel image and its volume as a 3-D array (2-D images get a slice axis; trailing size-1 axes dropped)."""
    nibabel = require("nibabel", "NIfTI")
    image = nibabel.load(str(path))
    volume = np.asanyarray(image.dataobj)
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise ImageInputError(f"expected a 3-D volume, got shape {image.shape}; pass 3-D volumes one at a time.")
    if not np.issubdtype(volume.dtype, np.number) or np.issubdtype(volume.dtype, np.complexfloating):
        raise ImageInputError(f"unsupported voxel type {volume.dtype}.")
    return image, volume


class Source:
    """One input file: its 2-D frames (images, DICOM frames or volume slices), their results and its outputs."""

    def __init__(self, path, stem):
        self.path, self.stem = path, stem
        self.kind = None
        self.frames, self.numbers = [], []  # model inputs and their slice / frame numbers (None for a 2-D image)
        self.results = {}
        self.failed = False
        self.nifti = self.volume_shape = None
        self.invert = False
        self.outputs = []  # written files, relative to the output folder

    def read(self, axis, window):
        self.kind = sniff_kind(self.path)
        if self.kind is None:
            raise ImageInputError(f"unsupported file type (supported: {SUPPORTED}).")
        if self.kind == "image":
            frames = read_image(self.path)
        elif self.kind == "dicom":
            frames, self.invert = read_dicom(self.path)
        else:
            self.nifti, volume = read_nifti(self.path)
            self.volume_shape, self.axis = volume.shape, axis % 3
            frames = [np.take(volume, k, axis=self.axis) for k in range(volume.shape[self.axis])]
        if not frames:
            raise ImageInputError("the file holds no image.")
        volume_like = self.kind == "nifti" or len(frames) > 1
        self.numbers = list(range(len(frames))) if volume_like else [None]
        self.frames = [self.prepare(frame, window) for frame in frames]

    def prepare(self, frame, window):
        """Window (when asked) and MONOCHROME1 inversion; other images go to the processor as they are."""
        if window is not None:
            frame = apply_window(frame, window)
            return 1.0 - frame if self.invert else frame
        if self.invert:
            return frame.max() - frame + frame.min()
        return frame

    @property
    def done(self):
        return len(self.results) == len(self.frames)

    def release(self):
        self.frames = [None] * len(self.frames)


def frame_size(frame):
    """(height, width) of a PIL image or an (H, W) / (H, W, C) array."""
    if isinstance(frame, PIL.Image.Image):
        return frame.height, frame.width
    return tuple(int(s) for s in frame.shape[:2])


def display_image(frame):
    """The frame as 8-bit RGB (H, W, 3) by the processors' input rules: 16-bit and float data stretched per image."""
    array, _ = to_model_array(frame, 3, convert=True)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8).transpose(1, 2, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CLIError(f"invalid --device {name!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name} was asked but CUDA is not available here; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {name} was asked but MPS is not available here; use --device cpu.")
    return device


def _looks_local(name):
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def load_model(name, trust_remote_code=False, revision=None, dtype="float32", device="cpu"):
    """(model, processor, task) with task ``"classification"`` or ``"segmentation"``, following the model's config."""
    if not os.path.isdir(name) and _looks_local(name):
        raise CLIError(f"model folder {name} does not exist.")
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except Exception as err:
        raise CLIError(f"cannot load the configuration of {name}: {err}") from None
    auto_map = getattr(config, "auto_map", None) or {}
    tasks = [
        (task, auto)
        for task, auto in (
            ("segmentation", AutoModelForSemanticSegmentation),
            ("classification", AutoModelForImageClassification),
        )
        if type(config) in auto._model_mapping or auto.__name__ in auto_map
    ]
    if not tasks:
        raise CLIError(
            f"{name} (model type {config.model_type!r}) is neither an image classifier nor a semantic segmenter."
        )
    task, auto = tasks[0]
    if task == "classification" and getattr(config, "problem_type", None) == "regression":
        raise CLIError(f"{name} is a regression model; predict handles classifiers and segmenters.")
    try:
        model = auto.from_pretrained(name, config=config, dtype=getattr(torch, dtype), **kwargs)
    except Exception as err:
        raise CLIError(f"cannot load the model {name}: {err}") from None
    try:
        processor = AutoImageProcessor.from_pretrained(name, **kwargs)
    except Exception as err:
        raise CLIError(f"cannot load the image processor of {name} (preprocessor_config.json): {err}") from None
    return model.to(device).eval(), processor, task


class Predictor:
    """Processor + model on a batch of frames: a (label, score) list or a label map (the frame's size) per frame."""

    def __init__(self, model, processor, task, top_k=3):
        self.model, self.processor, self.task = model, processor, task
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}
        self.num_labels = len(self.id2label)
        self.top_k = min(top_k, self.num_labels)
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    def __call__(self, frames):
        inputs = self.processor(images=frames, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            outputs = self.model(pixel_values=pixel_values)
            if self.task == "segmentation":
                sizes = [frame_size(frame) for frame in frames]
                maps = self.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
                return [m.cpu().numpy() for m in maps]
            logits = outputs.logits.float()
            probabilities = logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)
            scores, ids = probabilities.topk(self.top_k, dim=-1)
        return [
            [(self.id2label.get(i, str(i)), s) for i, s in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


def label_colors(num_labels):
    """(num_labels, 3) uint8 colours: black background, the palette, then golden-ratio hues."""
    colors = list(PALETTE[:num_labels])
    for i in range(len(colors), num_labels):
        hue = (i * 0.618033988749895) % 1.0
        colors.append(tuple(int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95)))
    return np.array(colors, dtype=np.uint8)


def overlay(image, labels, colors, alpha):
    """An (H, W, 3) uint8 image with every non-background pixel blended with its label's colour."""
    out = image.astype(np.float32)
    foreground = labels > 0
    out[foreground] = (1 - alpha) * out[foreground] + alpha * colors[labels[foreground]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mask_image(labels, num_labels):
    """Mask PNG: 0/255 for binary models, label values otherwise (8-bit, or 16-bit past 255 labels)."""
    if num_labels == 2:
        return PIL.Image.fromarray((labels > 0).astype(np.uint8) * 255)
    return PIL.Image.fromarray(labels.astype(np.uint8 if num_labels <= 256 else np.uint16))


def legend_image(entries):
    """A colour legend: a swatch and "value: name" per label."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
    texts = [f"{e['value']}: {e['label']}" + (" (not coloured)" if e["value"] == 0 else "") for e in entries]
    row, swatch = 24, 16
    width = 12 + swatch + 8 + int(max(measure.textlength(t, font=font) for t in texts)) + 12
    image = PIL.Image.new("RGB", (width, 8 + row * len(entries)), "white")
    draw = ImageDraw.Draw(image)
    for i, (entry, text) in enumerate(zip(entries, texts)):
        top = 8 + i * row
        draw.rectangle([12, top, 12 + swatch, top + swatch], fill=tuple(entry["color"]), outline="black")
        draw.text((12 + swatch + 8, top + 2), text, fill="black", font=font)
    return image


class StagedOutputs:
    """Output files written under a hidden staging folder inside the output folder and moved into place (atomic
    ``os.replace``) by `commit`."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".hf-medmamba-", dir=self.root))
        self.files = []

    def path(self, relative):
        """Staging path of an output (relative to the output folder); the output is committed with the others."""
        relative = Path(relative)
        path = self.staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(relative)
        return path

    def discard(self, relatives):
        for relative in relatives:
            (self.staging / relative).unlink(missing_ok=True)
            if relative in self.files:
                self.files.remove(relative)

    def commit(self):
        for relative in self.files:
            final = self.root / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / relative, final)

    def write_last(self, relative, text):
        """Write one file and move it into place now (the summary, after every other output)."""
        path = self.staging / relative
        path.write_text(text, encoding="utf-8")
        os.replace(path, self.root / relative)

    def cleanup(self):
        shutil.rmtree(self.staging, ignore_errors=True)


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
                source.read(axis, window)
            except CLIError:
                raise
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
        if source.kind == "nifti":
            dtype = np.uint8 if num_labels <= 256 else np.int16
            labels = np.zeros(source.volume_shape, dtype=dtype)
            for position, number in enumerate(source.numbers):
                index = [slice(None)] * 3
                index[source.axis] = number
                labels[tuple(index)] = source.results[position]
            relative = source.stem.with_name(source.stem.name + "_seg.nii.gz")
            written.append(relative)
            save_label_volume(source.nifti, labels, self.outputs.path(relative))
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


def save_label_volume(image, labels, path):
    """A NIfTI label volume with ``image``'s class, affine, header, qform and sform, and the input's shape."""
    header = image.header.copy()
    out = type(image)(labels.reshape(image.shape), image.affine, header)
    out.set_data_dtype(labels.dtype)
    out.header.set_slope_inter(1, 0)
    out.header.set_intent("label")
    out.header["cal_min"], out.header["cal_max"] = 0, int(labels.max())
    for form in ("qform", "sform"):
        matrix, code = getattr(image, f"get_{form}")(coded=True)
        getattr(out, f"set_{form}")(matrix, int(code))
    out.to_filename(str(path))


def describe(err):
    return f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------------


def predict(args):
    """The ``predict`` command; returns the exit status."""
    start = time.time()
    output = Path(args.output)
    found, unmatched = collect_inputs(args.inputs, exclude=output)
    if not found:
        raise CLIError(f"no input files found in {' '.join(args.inputs)} (supported: {SUPPORTED}).")
    kinds = {input_kind(file) for file, _ in found}
    if "dicom" in kinds:
        require("pydicom", "DICOM")
    if "nifti" in kinds:
        require("nibabel", "NIfTI")
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
    stems = output_stems([relative for _, relative in found])
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
                "axis": args.axis,
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
            "JPEG, BMP, TIFF), DICOM files (each frame as an image) and NIfTI volumes (slice by slice). "
            "Classification writes predictions.csv (top-k labels and scores per image or slice); segmentation writes "
            "a mask and an overlay PNG per image or DICOM frame, a label volume per NIfTI file (the input's "
            "geometry) and, for multi-class models, legend.png/legend.json. summary.json is written last. Unreadable "
            "inputs are skipped and reported; the exit status is then 1."
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
        help="clip intensities to [LOW, HIGH] and scale to [0, 1] before the processor (CT in HU: -125 275)",
    )
    sub.add_argument(
        "--axis",
        type=int,
        default=-1,
        choices=(0, 1, 2, -1, -2, -3),
        help="slicing axis of NIfTI volumes (default -1, the last: axial); slices keep the voxel order",
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

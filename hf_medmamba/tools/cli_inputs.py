"""Inputs of ``hf-medmamba predict``: finding them (files, recursive folders, globs, DICOM series folders), naming
their outputs, and reading images, DICOM frames, NIfTI volumes and DICOM series into the 2-D frames the model sees,
through `medical_io`, the medical I/O path of the CLI, the example scripts and the Space."""

import glob
import os
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image

from ..image_processing_common import ImageInputError, to_model_array
from . import medical_io
from .medical_io import NIFTI_EXTENSIONS


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
SUPPORTED = ", ".join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS)
VOLUME_KINDS = ("nifti", "series")  # read as RAS volumes and written back as label volumes
# What each kind of input is called in messages, and the optional packages it needs (hf-medmamba[medical]).
REQUIREMENTS = {
    "dicom": ("DICOM files", ("pydicom",)),
    "nifti": ("NIfTI volumes", ("nibabel", "monai")),
    "series": ("DICOM series", ("pydicom", "nibabel", "monai")),
}


class CLIError(Exception):
    """A problem with the command as a whole (arguments, model, missing package): reported, exit status 2."""


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


def source_kind(path, sniff=False):
    """``"series"`` for a folder (a DICOM series), else the file's kind (`sniff_kind` when ``sniff``)."""
    if path.is_dir():
        return "series"
    return sniff_kind(path) if sniff else input_kind(path)


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


def collect_inputs(patterns, exclude=None, series=False):
    """Files from paths, folders (recursive, supported extensions only) and glob patterns, in argument order without
    duplicates, each with its path relative to its folder argument or glob base (just its name for a file named
    explicitly); also the arguments that matched nothing. Hidden files and the ``exclude`` folder are left out. With
    ``series``, each folder argument or folder matched by a glob is one input (a DICOM series), not scanned."""
    files, unmatched = {}, []
    for pattern in patterns:
        path = Path(os.path.expanduser(pattern))
        if path.is_dir() and series:
            found = [] if _is_inside(path, exclude) else [(path, Path(path.resolve().name))]
        elif path.is_dir():
            found = [(f, f.relative_to(path)) for f in _scan_folder(path, exclude)]
        elif path.is_file():
            found = [(path, Path(path.name))]  # named explicitly: kept whatever its extension (refused if unsupported)
        elif any(c in pattern for c in "*?["):
            base, found = _glob_base(path), []
            for match in sorted(glob.glob(str(path), recursive=True)):
                match = Path(match)
                if _is_inside(match, exclude) or match.name.startswith("."):
                    continue
                if match.is_dir() and series:
                    found.append((match, match.relative_to(base)))
                elif match.is_dir():
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


def output_stems(relatives, folders=()):
    """Output name stem of each input (its relative path without extension; whole for the ``folders``, DICOM series),
    unique: where two share a stem the whole name is used (dots as underscores), then a counter."""
    stems = [r if r in folders else r.with_name(strip_extension(r.name)) for r in relatives]
    counts = Counter(stems)
    stems = [s if counts[s] == 1 else r.with_name(r.name.replace(".", "_")) for s, r in zip(stems, relatives)]
    seen, unique = Counter(), []
    for stem in stems:
        seen[stem] += 1
        unique.append(stem if seen[stem] == 1 else stem.with_name(f"{stem.name}_{seen[stem]}"))
    return unique


def check_requirements(kinds):
    """Fail before anything runs, with the install command, when a package that these kinds of input need is
    missing."""
    for kind in sorted(k for k in kinds if k in REQUIREMENTS):
        what, modules = REQUIREMENTS[kind]
        for module in modules:
            try:
                medical_io.require(module, f"reading {what}")
            except ImportError as err:
                raise CLIError(str(err)) from None


def read_image(path):
    """PIL images of a file (several for multi-page TIFF), decoded now so that corrupt files fail here."""
    with PIL.Image.open(path) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()
            frames.append(image.copy())
    return frames


class Source:
    """One input: a file (an image, a DICOM file, a NIfTI volume) or a DICOM series folder; its 2-D frames (images,
    DICOM frames or volume slices, in [0, 1] unless 8-bit), how they were windowed, their results and its outputs."""

    def __init__(self, path, stem):
        self.path, self.stem = path, stem
        self.kind = None
        self.frames, self.numbers = [], []  # model inputs and their slice / frame numbers (None for a 2-D image)
        self.results = {}
        self.failed = False
        self.volume = self.axis = self.intensity = None
        self.outputs = []  # written files, relative to the output folder

    def read(self, axis, window, processor):
        """Read the frames through `medical_io`: volumes in RAS, sliced along the RAS ``axis`` in display orientation;
        every input windowed by ``window``, else the processor's, else the DICOM VOI LUT / window, else its range."""
        self.kind = source_kind(self.path, sniff=True)
        if self.kind is None:
            raise ImageInputError(f"unsupported file type (supported: {SUPPORTED}).")
        if self.kind in VOLUME_KINDS:
            self.volume = medical_io.read_volume(self.path)
            self.axis = axis % 3
            frames, self.intensity = medical_io.volume_frames(self.volume, processor, self.axis, window)
        elif self.kind == "dicom":
            frames, self.intensity = medical_io.dicom_frames(self.path, processor, window)
        else:
            frames, self.intensity = medical_io.image_frames(read_image(self.path), processor, window)
        if not len(frames):
            raise ImageInputError("the file holds no image.")
        volume_like = self.kind in VOLUME_KINDS or len(frames) > 1
        self.numbers = list(range(len(frames))) if volume_like else [None]
        self.frames = list(frames)

    @property
    def done(self):
        return len(self.results) == len(self.frames)

    def release(self):
        self.frames = [None] * len(self.frames)
        self.volume = None


def display_image(frame):
    """The frame as 8-bit RGB (H, W, 3) by the processors' input rules: 16-bit and float data stretched per image."""
    array, _ = to_model_array(frame, 3, convert=True)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8).transpose(1, 2, 0)

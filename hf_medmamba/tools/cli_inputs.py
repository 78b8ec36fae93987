"""Inputs of ``hf-medmamba predict``: finding the files (paths, recursive folders, globs), naming their outputs, and
reading images, DICOM frames (in modality units) and NIfTI volumes into the 2-D frames the model sees."""

import glob
import os
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image

from ..image_processing_common import ImageInputError, pil_to_array, to_model_array


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
SUPPORTED = ", ".join(IMAGE_EXTENSIONS + DICOM_EXTENSIONS + NIFTI_EXTENSIONS)


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

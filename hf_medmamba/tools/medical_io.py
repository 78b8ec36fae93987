"""Medical files in and out of the models: NIfTI volumes and DICOM series read in RAS orientation (MONAI), DICOM
intensities (pydicom: modality LUT, then the file's VOI LUT or window), the intensity window every input gets, slices
in radiological display orientation, their label maps, and label volumes written back in the input's voxel order and
affine.

The one path of ``hf-medmamba predict``, ``examples/evaluate_volumes.py`` and the Space (``examples/space/app.py``)::

    volume = read_volume(path)                                    # a NIfTI file, or a DICOM series (folder or files)
    frames, intensity = volume_frames(volume, processor, axis=2)  # [0, 1] slices in display orientation
    labels = segment_frames(model, processor, frames)             # label maps at the frames' size
    write_label_volume(volume, stack_slices(labels, axis=2), "ct_seg.nii.gz")

Intensities reach the model in [0, 1], windowed with the first of: the caller's window, the processor's ``window``
(``preprocessor_config.json``), the DICOM file's VOI LUT or window (display values; MONOCHROME1 inverted), the data's
own range (per volume or file, never per slice). 8-bit data is a display image, divided by 255 as the processors do;
processors get the windowed frames with ``do_window=False`` (`model_inputs`).

Slices along ``axis`` (0 sagittal, 1 coronal, 2 axial, of the RAS volume) are shown as radiologists view them: axial
with anterior at the top and the patient's right on the image's left (as ``examples/data/ct_abdomen_organs/slices``),
coronal with superior at the top and the patient's right on the left, sagittal with superior at the top and anterior
on the left. MONAI, pydicom and nibabel are imported when first needed (``pip install hf-medmamba[medical]``). Not
part of the Hub remote code.
"""

import copy
import importlib
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..image_processing_common import ImageInputError, apply_window, check_window, pil_to_array


NIFTI_EXTENSIONS = (".nii.gz", ".nii")
AXES = ("sagittal", "coronal", "axial")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient coordinates (LPS) to NIfTI / MONAI world (RAS)


def require(module, what):
    """Import an optional package or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs {module.split('.')[0]}: pip install 'hf-medmamba[medical]'") from None


# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class MedicalVolume:
    """A 3-D image in RAS orientation and what is needed to write results back in the input's geometry.

    ``data``: (X, Y, Z) float32 voxels in modality units (CT: Hounsfield units), RAS voxel order; ``affine``: its RAS
    world affine; ``display``: the same voxels in [0, 1] from the DICOM VOI LUT / window when every slice of a DICOM
    series has one; ``is_8bit``: whether the stored values were 8-bit display values.
    """

    data: np.ndarray
    affine: np.ndarray
    display: np.ndarray | None
    is_8bit: bool
    oriented: object  # the MetaTensor after Orientation("RAS"): its applied operations lead back to the input
    nifti: object | None  # the input nibabel image (header, qform / sform) of a NIfTI input

    @property
    def spacing(self):
        """Voxel size along each RAS axis (mm)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def is_nifti(path):
    return str(path).lower().endswith(NIFTI_EXTENSIONS)


def read_volume(source):
    """A NIfTI file (``.nii``, ``.nii.gz``) or a DICOM series (a folder holding its slices, or a list of the slice
    files) as a `MedicalVolume` in RAS orientation."""
    nifti = None
    if isinstance(source, (list, tuple)) or Path(source).is_dir():
        native, affine, display, is_8bit = read_dicom_series(source)
        channels = torch.from_numpy(native[None] if display is None else np.stack([native, display]))
        metatensor = require("monai.data", "reading DICOM series").MetaTensor
        image = metatensor(channels, affine=torch.from_numpy(affine), meta={"space": "RAS"})
    elif is_nifti(source):
        image, nifti, is_8bit = _load_nifti(source)
    else:
        raise ImageInputError(f"{source}: not a NIfTI file (.nii, .nii.gz) nor a folder or list of DICOM files.")
    oriented = _transforms()[2](image)
    array = oriented.detach().cpu().numpy()
    return MedicalVolume(
        data=array[0].astype(np.float32),
        affine=oriented.affine.numpy().astype(np.float64),
        display=array[1].astype(np.float32) if array.shape[0] == 2 else None,
        is_8bit=is_8bit,
        oriented=oriented,
        nifti=nifti,
    )


@lru_cache(maxsize=1)
def _transforms():
    """MONAI's LoadImage (NIfTI through nibabel), EnsureChannelFirst and Orientation("RAS"), made once (MONAI
    inverts an orientation with the instance that applied it). LoadImage
    instantiates every reader it knows, and MONAI's nvImageCodec DICOM reader logs and warns that it is unavailable
    on machines without it: silenced here, as we read DICOM with pydicom."""
    transforms = require("monai.transforms", "reading NIfTI volumes")
    plugin_logger = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_logger.level
    plugin_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
            loader = transforms.LoadImage(reader="NibabelReader", image_only=True, dtype=None)
    finally:
        plugin_logger.setLevel(level)
    ras = (("L", "R"), ("P", "A"), ("I", "S"))
    return loader, transforms.EnsureChannelFirst(), transforms.Orientation(axcodes="RAS", labels=ras)


def _load_nifti(path):
    """(channel-first MetaTensor, nibabel image, whether 8-bit) of a 3-D NIfTI file."""
    nibabel = require("nibabel", "reading NIfTI volumes")
    loader, channel_first, _ = _transforms()
    image = channel_first(loader(str(path)))
    if image.ndim != 4 or image.shape[0] != 1:
        raise ImageInputError(
            f"{path}: expected one 3-D volume, got data of shape {tuple(image.shape[1:])} with {image.shape[0]} "
            "channel(s); pass 3-D volumes (2-D images as PNG or TIFF)."
        )
    dtype = image.dtype
    if dtype.is_complex or dtype == torch.bool:
        raise ImageInputError(f"{path}: unsupported voxel type {dtype}.")
    return image, nibabel.load(str(path)), dtype == torch.uint8


def read_dicom_series(source):
    """(volume, RAS affine, display volume or None, whether 8-bit) of a DICOM series: a folder of its slice files (other
    files are skipped) or a list of them. Slices are sorted by their position along the slice normal (not by file name
    or Instance Number) and must share orientation, size and pixel spacing and be evenly spaced. The volume is in
    modality units (Rescale Slope / Intercept or Modality LUT applied), voxel order (column, row, slice)."""
    pydicom = require("pydicom", "reading DICOM")
    folder = not isinstance(source, (list, tuple))
    files = sorted(p for p in Path(source).iterdir() if p.is_file()) if folder else [Path(f) for f in source]
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path))
        except pydicom.errors.InvalidDicomError:
            if folder:
                continue  # a folder may hold other files (DICOMDIR is a DICOM file, but without pixels)
            raise ImageInputError(f"{path} is not a DICOM file.") from None
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise ImageInputError(f"{source}: no DICOM image found.")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise ImageInputError(f"{source} holds {len(series)} DICOM series; give each series a folder of its own.")
    missing = [tag for tag in ("ImageOrientationPatient", "ImagePositionPatient") if tag not in datasets[0]]
    if missing or any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ImageInputError(
            f"{source}: a series volume needs single-frame slices with {' and '.join(missing) or 'their geometry'}; "
            "read multi-frame or geometry-less DICOM files as 2-D frames (read_dicom_frames)."
        )
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    for ds in datasets[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4):
            raise ImageInputError(f"{source}: the slices have different orientations (ImageOrientationPatient).")
        if (ds.Rows, ds.Columns) != (datasets[0].Rows, datasets[0].Columns):
            raise ImageInputError(f"{source}: the slices have different sizes.")
        if not np.allclose(_pixel_spacing(ds), _pixel_spacing(datasets[0])):
            raise ImageInputError(f"{source}: the slices have different pixel spacings.")
    datasets.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=np.float64)
    gaps = np.diff(positions @ normal)
    if len(gaps) and (gaps.min() < 1e-3 or gaps.max() - gaps.min() > 1e-2 * max(gaps.mean(), 1e-3)):
        raise ImageInputError(
            f"{source}: slices are not evenly spaced (gaps {gaps.min():.3f} to {gaps.max():.3f} mm along the "
            "normal); a volume needs one slice per position at a constant spacing (is a slice missing or repeated?)."
        )
    if len(datasets) > 1:
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)
    else:
        step = normal * float(datasets[0].get("SpacingBetweenSlices") or datasets[0].get("SliceThickness") or 1.0)
    row_spacing, column_spacing = _pixel_spacing(datasets[0])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * column_spacing, col * row_spacing, step, positions[0]
    slices = [modality_values(ds, ds.pixel_array, 0) for ds in datasets]
    volume = np.stack([s.T for s in slices], axis=-1).astype(np.float32)
    displays = [voi_display(ds, s) for ds, s in zip(datasets, slices)]
    display = None if any(d is None for d in displays) else np.stack([d.T for d in displays], axis=-1)
    return volume, _LPS_TO_RAS @ lps, display, all(s.dtype == np.uint8 for s in slices)


def _pixel_spacing(ds):
    """(row spacing, column spacing) in mm: Pixel Spacing, else Imager Pixel Spacing, else 1."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def modality_values(ds, frame, index):
    """One stored frame in modality units: the Modality LUT, or Rescale Slope / Intercept (per-frame functional
    groups first, then shared, then top level); integers stay integers when the rescale allows."""
    if "ModalityLUTSequence" in ds:
        return require("pydicom.pixels", "reading DICOM").apply_modality_lut(frame, ds)
    slope, intercept = 1.0, 0.0
    for name, position in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(name)
        transform = (
            groups[position].get("PixelValueTransformationSequence") if groups and len(groups) > position else None
        )
        if transform:
            slope = float(transform[0].get("RescaleSlope", 1) or 1)
            intercept = float(transform[0].get("RescaleIntercept", 0) or 0)
            break
    else:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == 0:
        return frame
    if slope == 1 and intercept.is_integer():
        return frame.astype(np.int32) + int(intercept)
    return frame.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def voi_display(ds, values):
    """The file's display values of ``values`` (modality units) in [0, 1], or None when it has no VOI LUT or window.

    pydicom's ``apply_voi_lut`` returns a VOI LUT's entries (0 .. 2**bits - 1, bits from its LUT Descriptor) or, for
    Window Center / Width, values on the stored data's range through the rescale (for example -33792 .. 31743 for
    signed 16-bit CT with intercept -1024), not [0, 1]. The window's range is read back from pydicom itself: values
    below a window map to its bottom, values above it to its top, whatever the VOI LUT Function."""
    processing = require("pydicom.pixels", "reading DICOM")
    sequence = ds.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        low, high = 0.0, float(2 ** int(sequence[0].LUTDescriptor[2]) - 1)
        out = processing.apply_voi_lut(np.rint(values).astype(np.int64), ds)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            low, high = (float(v) for v in processing.apply_voi_lut(np.array([-np.inf, np.inf]), ds))
        out = processing.apply_voi_lut(np.asarray(values, dtype=np.float64), ds)
    else:
        return None
    display = np.clip((out.astype(np.float64) - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return 1.0 - display if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else display


@dataclass
class DicomFrames:
    """The frames of one DICOM file: modality units (RGB as stored for colour data), their display values in [0, 1]
    from the file's VOI LUT / window (None without one, or for colour data) and whether they are 8-bit."""

    frames: list
    display: list | None
    is_8bit: bool


def read_dicom_frames(path):
    """The frames of a DICOM file (one, or several for multi-frame files) as 2-D images in stored orientation."""
    pydicom = require("pydicom", "reading DICOM")
    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ImageInputError(f"{path}: the DICOM file has no pixel data.")
    array = ds.pixel_array  # pydicom 3 converts YBR colour data to RGB
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if count == 1:
        array = array[None]
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        return DicomFrames(list(array), None, array.dtype == np.uint8)
    frames = [modality_values(ds, frame, index) for index, frame in enumerate(array)]
    displays = [voi_display(ds, frame) for frame in frames]
    display = None if any(d is None for d in displays) else displays
    return DicomFrames(frames, display, all(f.dtype == np.uint8 for f in frames))


# ---------------------------------------------------------------------------------------------------------------------
# Intensities and slices
# ---------------------------------------------------------------------------------------------------------------------


def model_window(processor, window=None):
    """(window, source): the caller's window, else the processor's (when ``do_window``), else (None, None)."""
    if window is not None:
        return check_window(window), "window"
    if getattr(processor, "window", None) is not None and getattr(processor, "do_window", True):
        return check_window(processor.window), "processor"
    return None, None


def unit_intensities(values, processor=None, window=None, display=None, is_8bit=False, value_range=None):
    """``values`` (modality units; any shape) in [0, 1] for the model, and how (a JSON-ready dict): see the module
    docstring for the order of the rules. The fallback range is ``value_range`` if given (that of the whole volume
    when ``values`` is one slice of it), else that of ``values``."""
    values = np.asarray(values)
    if is_8bit:
        return values.astype(np.float32) / np.float32(255.0), {"source": "8-bit"}
    chosen, source = model_window(processor, window)
    if chosen is None and display is not None:
        return np.asarray(display, dtype=np.float32), {"source": "dicom voi"}
    if chosen is None:
        chosen = value_range or (float(values.min()), float(values.max()))
        chosen, source = (float(chosen[0]), float(chosen[1])), "range"
        if chosen[1] <= chosen[0]:
            return np.zeros(values.shape, dtype=np.float32), {"source": source, "window": list(chosen)}
    return apply_window(values, chosen), {"source": source, "window": [float(v) for v in chosen]}


def volume_slices(volume, axis=2):
    """(N, H, W) slices of an (X, Y, Z) RAS array along ``axis``, in display orientation (module docstring)."""
    moved = np.moveaxis(np.asarray(volume), axis % 3, 0)
    return np.ascontiguousarray(moved.transpose(0, 2, 1)[:, ::-1, ::-1])


def stack_slices(slices, axis=2):
    """The (X, Y, Z) RAS array of display-oriented slices along ``axis``: the inverse of `volume_slices`."""
    moved = np.asarray(slices)[:, ::-1, ::-1].transpose(0, 2, 1)
    return np.ascontiguousarray(np.moveaxis(moved, 0, axis % 3))


def volume_frames(volume, processor=None, axis=2, window=None):
    """(slices in [0, 1] along ``axis`` in display orientation, how they were windowed) of a `MedicalVolume`."""
    values, intensity = unit_intensities(volume.data, processor, window, volume.display, volume.is_8bit)
    return volume_slices(values, axis), intensity


def volume_frame(volume, index, processor=None, axis=2, window=None):
    """Slice ``index`` of `volume_frames` without windowing the whole volume (the fallback range is still the
    volume's): for viewers that show one slice at a time."""
    data = np.take(volume.data, index, axis=axis % 3)[..., None]
    display = None if volume.display is None else np.take(volume.display, index, axis=axis % 3)[..., None]
    value_range = (float(volume.data.min()), float(volume.data.max()))
    values, intensity = unit_intensities(data, processor, window, display, volume.is_8bit, value_range)
    return volume_slices(np.moveaxis(values, -1, axis % 3), axis)[0], intensity


def dicom_frames(path, processor=None, window=None):
    """(frames in [0, 1], how they were windowed) of a DICOM file; one window (or range) for all its frames."""
    read = read_dicom_frames(path)
    values, intensity = unit_intensities(np.stack(read.frames), processor, window, read.display, read.is_8bit)
    return list(values), intensity


def image_frames(images, processor=None, window=None):
    """(frames for the model, how they were windowed: one record, or one per frame if they differ) of one file's 2-D
    images: 8-bit ones as they are, others windowed to [0, 1] by `unit_intensities` (fallback: each image's range)."""
    frames, records = [], []
    for image in images:
        array = pil_to_array(image) if isinstance(image, PIL.Image.Image) else np.asarray(image)
        eight_bit = array.dtype in (np.uint8, np.bool_)
        frame, record = (image, {"source": "8-bit"}) if eight_bit else unit_intensities(array, processor, window)
        frames.append(frame)
        records.append(record)
    same = records and all(r == records[0] for r in records)
    return frames, records[0] if same else records


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def model_inputs(processor, frames):
    """The processor's tensors for frames of this module (already windowed, so ``do_window=False``)."""
    kwargs = {"do_window": False} if hasattr(processor, "do_window") else {}
    return processor(images=list(frames), return_tensors="pt", **kwargs)


def frame_size(frame):
    """(height, width) of a PIL image or an (H, W) / (H, W, C) array."""
    if isinstance(frame, PIL.Image.Image):
        return frame.height, frame.width
    return tuple(int(s) for s in np.shape(frame)[:2])


def label_maps(model, processor, frames):
    """Label maps of 2-D frames as the Synapse evaluation of TransUNet / VM-UNet makes them: the argmax (the sigmoid
    head: probability >= the processor's ``threshold``) at the model's input size (logits of a smaller size, such as
    SegFormer's, upsampled bilinearly first), resized to each frame's size with nearest neighbour."""
    pixel_values = model_inputs(processor, frames)["pixel_values"].to(model.device, model.dtype)
    with torch.inference_mode():
        logits = model(pixel_values=pixel_values).logits.float()
    if logits.shape[-2:] != pixel_values.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear")
    threshold = getattr(processor, "threshold", 0.5)
    maps = torch.sigmoid(logits[:, 0]) >= threshold if logits.shape[1] == 1 else logits.argmax(dim=1)
    out = []
    for frame, label_map in zip(frames, maps.to(torch.int32).cpu().numpy()):
        height, width = frame_size(frame)
        resized = PIL.Image.fromarray(label_map).resize((width, height), PIL.Image.NEAREST)
        out.append(np.asarray(resized, dtype=np.int64))
    return out


def segment_frames(model, processor, frames, batch_size=8):
    """`label_maps` of many frames, ``batch_size`` at a time, as one (N, H, W) array."""
    maps = []
    for start in range(0, len(frames), batch_size):
        maps.extend(label_maps(model, processor, frames[start : start + batch_size]))
    return np.stack(maps)


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def write_label_volume(volume, labels, path):
    """Save a label volume given in ``volume``'s RAS voxel order as NIfTI in the input's own voxel order and affine
    (a NIfTI input's header, qform and sform; a DICOM series' geometry with scanner-space codes)."""
    nibabel = require("nibabel", "writing NIfTI volumes")
    monai_data = require("monai.data", "writing NIfTI volumes")
    labels = np.asarray(labels)
    if labels.shape != volume.data.shape:
        raise ValueError(f"labels of shape {labels.shape} for a volume of shape {volume.data.shape}.")
    dtype = np.uint8 if labels.min() >= 0 and labels.max() <= 255 else np.int16
    oriented = monai_data.MetaTensor(
        torch.from_numpy(labels.astype(dtype)[None]),
        meta=copy.deepcopy(volume.oriented.meta),
        applied_operations=copy.deepcopy(volume.oriented.applied_operations),
    )
    restored = _transforms()[2].inverse(oriented)
    native = restored[0].detach().cpu().numpy().astype(dtype)
    if volume.nifti is not None:
        source = volume.nifti
        out = type(source)(native.reshape(source.shape), source.affine, source.header.copy())
        for form in ("qform", "sform"):
            matrix, code = getattr(source, f"get_{form}")(coded=True)
            getattr(out, f"set_{form}")(matrix, int(code))
    else:
        affine = restored.affine.numpy().astype(np.float64)
        out = nibabel.Nifti1Image(native, affine)
        out.set_qform(affine, 1)
        out.set_sform(affine, 1)
    out.set_data_dtype(dtype)
    out.header.set_slope_inter(1, 0)
    out.header.set_intent("label")
    out.header["cal_min"], out.header["cal_max"] = 0, int(native.max())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    out.to_filename(str(path))
    return Path(path)

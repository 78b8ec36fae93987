"""Helpers of the medical-file tests (`test_medical_io.py`, `tools/test_cli.py`): a synthetic DICOM series with known
geometry and intensities, a stand-in segmenter whose masks are known, and header-reoriented copies of a NIfTI volume.
pydicom and nibabel are imported when a helper is called (the test modules skip without them)."""

from types import SimpleNamespace

import numpy as np
import torch


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM patient coordinates to NIfTI world coordinates (and back)

# A coronal series: rows run along patient x (left), columns from head to feet, slices step 2.5 mm towards posterior.
ROW, COLUMN = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])  # LPS direction cosines
NORMAL = np.cross(ROW, COLUMN)  # (0, 1, 0): posterior
ORIGIN, STEP, SPACING = np.array([-50.0, -60.0, 30.0]), 2.5, (0.8, 0.7)  # PixelSpacing: row spacing, column spacing


def write_dicom(path, pixels, series_uid, **attributes):
    """A single-frame signed 16-bit CT DICOM file with the given attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = series_uid, "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def synthetic_series(folder, slope=2.0, intercept=-1000.0, skip=None):
    """Four 20 x 24 slices written in shuffled file order with reversed Instance Numbers, a 300 HU box and a 0 HU box in
    -1000 HU air, and a file that is not DICOM; returns the stored-position-ordered HU slices (slice, row, column)."""
    from pydicom.uid import generate_uid

    hu = np.full((4, 20, 24), -1000.0)
    hu[1:3, 5:10, 10:16] = 300.0
    hu[0, 12:15, 2:6] = 0.0
    stored = np.rint((hu - intercept) / slope)
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for rank, k in enumerate([2, 0, 3, 1]):
        if k == skip:
            continue
        write_dicom(
            folder / f"im{rank}.dcm", stored[k], series, InstanceNumber=4 - k,
            ImagePositionPatient=[float(v) for v in ORIGIN + NORMAL * STEP * k],
            ImageOrientationPatient=[float(v) for v in (*ROW, *COLUMN)], PixelSpacing=list(SPACING),
            RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=40, WindowWidth=400,
        )  # fmt: skip
    (folder / "notes.txt").write_text("not a DICOM file")
    return hu


def series_affine():
    """The RAS affine of `synthetic_series`' volume in its own voxel order (column, row, slice)."""
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = ROW * SPACING[1], COLUMN * SPACING[0], NORMAL * STEP, ORIGIN
    return LPS_TO_RAS @ lps


class ThresholdModel(torch.nn.Module):
    """A stand-in segmenter whose masks are known: class 1 where the (windowed) input is above 0.5."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(id2label={0: "background", 1: "bright"}, model_type="threshold")

    device = property(lambda self: self.anchor.device)
    dtype = property(lambda self: self.anchor.dtype)

    def forward(self, pixel_values):
        x = pixel_values[:, :1]
        return SimpleNamespace(logits=torch.cat([0.5 - x, x - 0.5], dim=1))


def reoriented_copies(path, folder):
    """The same anatomy as the NIfTI file ``path`` with other voxel orders: x flipped (LAS), and axes permuted with z
    reversed; {name: path}."""
    import nibabel

    image = nibabel.load(path)
    data, affine = np.asarray(image.dataobj), image.affine
    nx, _, nz = data.shape
    flip_x = np.array([[-1, 0, 0, nx - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    # new voxel (i, j, k) is old voxel (j, k, nz - 1 - i)
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, nz - 1], [0, 0, 0, 1]], dtype=float)
    copies = {
        "las": (data[::-1], affine @ flip_x),
        "permuted": (data.transpose(2, 0, 1)[::-1], affine @ permute),
    }
    paths = {}
    for name, (array, new_affine) in copies.items():
        paths[name] = folder / f"{name}.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array), new_affine), paths[name])
    return paths

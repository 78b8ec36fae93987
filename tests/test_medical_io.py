"""`hf_medmamba.tools.medical_io`, the medical file path of the CLI, the evaluation script and the Space: the bundled CT
volume reaches a model trained on the bundled slices exactly as those slices (orientation and window), the CLI path
and `examples/evaluate_volumes.py` write the same masks, a header-reoriented copy of the volume gives the same masks
in world space, and a synthetic DICOM series comes back as NIfTI masks on the right voxels."""

import csv
import importlib
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from hf_medmamba import VMUNetImageProcessor

from .conftest import TINY_VMUNET, data_path, example


nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
pytest.importorskip("monai")
medical_io = importlib.import_module("hf_medmamba.tools.medical_io")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory):
    """A tiny VM-UNet trained for a few steps on the bundled CT slices with the synapse recipe, and its processor."""
    root = tmp_path_factory.mktemp("ct_model")
    example("run_semantic_segmentation").main(
        [
            "--data_dir", str(data_path("ct_abdomen_organs", "slices")), "--config_overrides", TINY_VMUNET,
            "--recipe", "synapse", "--image_size", "64", "--max_train_samples", "8", "--do_train",
            "--num_overlays", "0", "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--output_dir", str(root / "model"), "--cache_dir", str(root / "cache"), "--disable_tqdm", "True",
            "--seed", "0",
        ]
    )  # fmt: skip
    folder = root / "model"
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    return folder, model, AutoImageProcessor.from_pretrained(folder)


def cli_path(model, processor, source, output, axis=2):
    """What ``hf-medmamba predict`` runs on a volume: read, window and slice, label maps, write back."""
    volume = medical_io.read_volume(source)
    frames, intensity = medical_io.volume_frames(volume, processor, axis=axis)
    labels = medical_io.segment_frames(model, processor, frames, batch_size=8)
    medical_io.write_label_volume(volume, medical_io.stack_slices(labels, axis=axis), output)
    return frames, intensity, labels


def test_ct_volume_reaches_the_model_as_the_training_slices_and_matches_evaluate_volumes(ct_model, tmp_path):
    folder, model, processor = ct_model
    assert processor.window == [-125.0, 275.0]  # the synapse recipe stores the CT window in preprocessor_config.json
    ct = data_path("ct_abdomen_organs", "nifti", "ct.nii.gz")
    frames, intensity, labels = cli_path(model, processor, ct, tmp_path / "cli" / "ct_seg.nii.gz")
    assert intensity == {"source": "processor", "window": [-125.0, 275.0]}

    # the slices the model sees are the bundled training PNGs (8-bit rounding apart): same orientation, same window
    slices = data_path("ct_abdomen_organs", "slices", "train")
    with open(slices / "metadata.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(frames) == 30
    pngs = []
    for row in rows:
        with PIL.Image.open(slices / row["file_name"]) as image:
            pngs.append(image.copy())
        png = np.asarray(pngs[-1], dtype=np.float32)
        assert png.shape == frames[int(row["slice_index"])].shape == (101, 122)
        np.testing.assert_allclose(frames[int(row["slice_index"])] * 255, png, atol=0.5 + 1e-3)
    on_pngs = np.stack(medical_io.label_maps(model, processor, pngs))
    order = [int(row["slice_index"]) for row in rows]
    assert (on_pngs == labels[order]).mean() > 0.99

    # evaluate_volumes.py (same model, no --window: the processor's) writes the same mask volume, voxel for voxel
    nifti = data_path("ct_abdomen_organs", "nifti")
    results = example("evaluate_volumes").main(
        [
            "--model_name_or_path", str(folder), "--images", str(ct), "--labels", str(nifti / "seg_synapse8.nii.gz"),
            "--output_file", str(tmp_path / "eval.json"), "--save_predictions", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    assert results["window_hu"] == [-125.0, 275.0]
    assert results["cases"][0]["intensity"] == intensity
    cli_mask, eval_mask = (
        nibabel.load(tmp_path / "cli" / "ct_seg.nii.gz"),
        nibabel.load(tmp_path / "eval" / "ct_pred.nii.gz"),
    )
    source = nibabel.load(ct)
    np.testing.assert_array_equal(np.asarray(cli_mask.dataobj), np.asarray(eval_mask.dataobj))
    assert cli_mask.shape == source.shape
    np.testing.assert_allclose(cli_mask.affine, source.affine)
    np.testing.assert_allclose(eval_mask.affine, source.affine)
    assert int(cli_mask.header["sform_code"]) == int(source.header["sform_code"])
    assert np.asarray(cli_mask.dataobj).max() > 0  # something was segmented, so the comparison means something


def reoriented_copies(path, folder):
    """The same anatomy with other voxel orders: x flipped (LAS), and axes permuted with z reversed."""
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


def test_reoriented_header_gives_the_same_masks_in_world_space(ct_model, tmp_path):
    _, model, processor = ct_model
    ct = data_path("ct_abdomen_organs", "nifti", "ct.nii.gz")
    cli_path(model, processor, ct, tmp_path / "reference.nii.gz")
    reference = nibabel.as_closest_canonical(nibabel.load(tmp_path / "reference.nii.gz"))
    for name, path in reoriented_copies(ct, tmp_path).items():
        source = nibabel.load(path)
        assert nibabel.aff2axcodes(source.affine) != ("R", "A", "S")
        np.testing.assert_array_equal(  # the copy really is the same anatomy
            np.asarray(nibabel.as_closest_canonical(source).dataobj), np.asarray(nibabel.load(ct).dataobj)
        )
        cli_path(model, processor, path, tmp_path / f"{name}_seg.nii.gz")
        mask = nibabel.load(tmp_path / f"{name}_seg.nii.gz")
        assert mask.shape == source.shape, name  # written back in the input's voxel order and affine
        np.testing.assert_allclose(mask.affine, source.affine)
        canonical = nibabel.as_closest_canonical(mask)
        np.testing.assert_allclose(canonical.affine, reference.affine)
        np.testing.assert_array_equal(np.asarray(canonical.dataobj), np.asarray(reference.dataobj), err_msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------------------------


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


# A coronal series: rows run along patient x (left), columns from head to feet, slices step 2.5 mm towards posterior.
ROW, COLUMN = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])  # LPS direction cosines
NORMAL = np.cross(ROW, COLUMN)  # (0, 1, 0): posterior
ORIGIN, STEP, SPACING = np.array([-50.0, -60.0, 30.0]), 2.5, (0.8, 0.7)  # PixelSpacing: row spacing, column spacing


def synthetic_series(folder, slope=2.0, intercept=-1000.0, skip=None):
    """Four 20 x 24 slices written in shuffled file order with reversed Instance Numbers, a 300 HU box and a 0 HU box in
    -1000 HU air; returns the stored-position-ordered HU slices (slice, row, column)."""
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


class ThresholdModel(torch.nn.Module):
    """A stand-in segmenter whose masks are known: class 1 where the (windowed) input is above 0.5."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    device = property(lambda self: self.anchor.device)
    dtype = property(lambda self: self.anchor.dtype)

    def forward(self, pixel_values):
        x = pixel_values[:, :1]
        return SimpleNamespace(logits=torch.cat([0.5 - x, x - 0.5], dim=1))


def test_dicom_series_round_trips_to_nifti_masks_with_the_right_geometry(tmp_path):
    hu = synthetic_series(tmp_path / "series")
    volume, affine, display, is_8bit = medical_io.read_dicom_series(tmp_path / "series")
    # sorted by position along the normal (not by file name or Instance Number), in modality units: (column, row, slice)
    np.testing.assert_array_equal(volume, hu.transpose(2, 1, 0))
    assert not is_8bit
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # back to DICOM patient coordinates
    for column, row, k in [(0, 0, 0), (23, 19, 3), (5, 7, 2)]:
        expected = ORIGIN + NORMAL * STEP * k + ROW * SPACING[1] * column + COLUMN * SPACING[0] * row
        np.testing.assert_allclose(lps @ [column, row, k, 1], [*expected, 1], atol=1e-9)
    # the file's window (center 40, width 400, DICOM's LINEAR function) in [0, 1], not pydicom's output range
    assert display[0, 0, 0] == 0.0 and display[10, 5, 1] == 1.0
    assert display[2, 12, 0] == pytest.approx((0 - 39.5) / 399 + 0.5, abs=1e-6)

    series = medical_io.read_volume(tmp_path / "series")
    assert series.spacing == pytest.approx((SPACING[1], STEP, SPACING[0]))
    plain = VMUNetImageProcessor(num_channels=1, normalization_mode="standard", size={"height": 20, "width": 24})
    frames, intensity = medical_io.volume_frames(series, plain, axis=1)  # coronal: the acquired planes
    assert intensity == {"source": "dicom voi"} and frames.shape == (4, 20, 24)
    windowed = VMUNetImageProcessor(**{**plain.to_dict(), "window": [-125, 275]})
    ct_frames, ct_intensity = medical_io.volume_frames(series, windowed, axis=1)
    assert ct_intensity == {"source": "processor", "window": [-125.0, 275.0]}
    assert sorted(np.unique(ct_frames).tolist()) == [0.0, 0.3125, 1.0]  # air, water, 300 HU in Synapse's window

    labels = medical_io.segment_frames(ThresholdModel(), plain, frames)
    path = medical_io.write_label_volume(series, medical_io.stack_slices(labels, axis=1), tmp_path / "mask.nii.gz")
    mask = nibabel.load(path)
    assert mask.shape == (24, 20, 4) and int(mask.header["sform_code"]) == 1  # the series' own voxel order
    np.testing.assert_allclose(mask.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), (hu > 0).transpose(2, 1, 0))
    # every mask voxel lies in the 300 HU box, in world coordinates
    voxels = np.argwhere(np.asarray(mask.dataobj) > 0)
    world = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ mask.affine @ np.c_[voxels, np.ones(len(voxels))].T)[:3].T
    corner = ORIGIN + ROW * SPACING[1] * 10 + COLUMN * SPACING[0] * 5 + NORMAL * STEP
    far = ORIGIN + ROW * SPACING[1] * 15 + COLUMN * SPACING[0] * 9 + NORMAL * STEP * 2
    low, high = np.minimum(corner, far) - 1e-4, np.maximum(corner, far) + 1e-4
    assert len(world) == 2 * 5 * 6 and ((world >= low) & (world <= high)).all()


def test_dicom_series_that_are_not_one_volume_raise(tmp_path):
    synthetic_series(tmp_path / "gap", skip=2)
    with pytest.raises(medical_io.ImageInputError, match="not evenly spaced"):
        medical_io.read_volume(tmp_path / "gap")
    synthetic_series(tmp_path / "two")
    synthetic_series(tmp_path / "other")
    (tmp_path / "other" / "im0.dcm").rename(tmp_path / "two" / "extra.dcm")
    with pytest.raises(medical_io.ImageInputError, match="2 DICOM series"):
        medical_io.read_volume(tmp_path / "two")


def test_dicom_file_with_a_voi_lut_sequence_and_monochrome1(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4, 100, 12])  # 4 entries, first input value 100, 12-bit output (0..4095)
    lut.add_new("LUTData", "US", [0, 1000, 3000, 4095])
    pixels = np.array([[90, 100, 101], [102, 103, 200]])
    write_dicom(
        tmp_path / "x.dcm", pixels, generate_uid(), VOILUTSequence=[lut], PhotometricInterpretation="MONOCHROME1"
    )
    read = medical_io.read_dicom_frames(tmp_path / "x.dcm")
    np.testing.assert_array_equal(read.frames[0], pixels)
    expected = 1 - np.array([[0, 0, 1000], [3000, 4095, 4095]]) / 4095  # inverted: MONOCHROME1 shows high as dark
    np.testing.assert_allclose(read.display[0], expected, atol=1e-6)
    frames, intensity = medical_io.dicom_frames(tmp_path / "x.dcm", window=(100, 104))
    assert intensity["source"] == "window"  # an explicit window wins over the file's VOI LUT
    np.testing.assert_allclose(frames[0], np.clip((pixels - 100) / 4, 0, 1))


def test_slices_and_stacks_are_inverse_for_every_axis():
    volume = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    for axis in (0, 1, 2, -1):
        slices = medical_io.volume_slices(volume, axis)
        np.testing.assert_array_equal(medical_io.stack_slices(slices, axis), volume)
    # axial display: anterior (high y) at the top row, patient right (high x) on the left column
    axial = medical_io.volume_slices(volume, 2)
    assert axial.shape == (5, 4, 3) and axial[0, 0, 0] == volume[2, 3, 0]


def test_one_slice_at_a_time_matches_the_whole_volume():
    rng = np.random.default_rng(0)
    volume = SimpleNamespace(data=rng.normal(size=(5, 6, 7)).astype(np.float32), display=None, is_8bit=False)
    for axis in (0, 1, 2):
        frames, intensity = medical_io.volume_frames(volume, axis=axis)
        assert intensity["source"] == "range"  # no window anywhere: the volume's range, not each slice's
        for index in range(volume.data.shape[axis]):
            frame, _ = medical_io.volume_frame(volume, index, axis=axis)
            np.testing.assert_array_equal(frame, frames[index])

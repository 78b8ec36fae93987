"""`hf_medmamba.tools.medical_io`, the medical file path of the CLI, the evaluation script and the Space: the bundled CT
volume reaches a model trained on the bundled slices exactly as those slices (orientation and window), a synthetic
DICOM series comes back as NIfTI masks on the right voxels, DICOM VOI LUTs, slicing and windowing rules. The same
path through ``hf-medmamba predict`` (against `examples/evaluate_volumes.py`, header-reoriented volumes, a DICOM
series folder) is tested in `tools/test_cli.py`."""

import csv
import importlib
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch

from hf_medmamba import VMUNetImageProcessor

from .conftest import data_path
from .medical_helpers import COLUMN, NORMAL, ORIGIN, ROW, SPACING, STEP, ThresholdModel, synthetic_series, write_dicom


nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
pytest.importorskip("monai")
medical_io = importlib.import_module("hf_medmamba.tools.medical_io")

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_ct_volume_reaches_the_model_as_the_training_slices(ct_model):
    _, model, processor = ct_model
    assert processor.window == [-125.0, 275.0]  # the synapse recipe stores the CT window in preprocessor_config.json
    volume = medical_io.read_volume(data_path("ct_abdomen_organs", "nifti", "ct.nii.gz"))
    frames, intensity = medical_io.volume_frames(volume, processor, axis=2)
    assert intensity == {"source": "processor", "window": [-125.0, 275.0]}
    labels = medical_io.segment_frames(model, processor, frames, batch_size=8)

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
    assert labels.max() > 0  # something was segmented, so the comparison means something


# ---------------------------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------------------------


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


def test_label_maps_of_coarse_logits_are_upsampled_before_the_argmax():
    """Logits at a quarter of the input size (SegFormer's) are upsampled bilinearly to the input size before the
    argmax, so that mask edges fall between the coarse cells and not on their borders."""

    class QuarterSize(ThresholdModel):
        def forward(self, pixel_values):
            return super().forward(torch.nn.functional.avg_pool2d(pixel_values, 4))

    processor = VMUNetImageProcessor(num_channels=1, normalization_mode="standard", size={"height": 32, "width": 32})
    ramp = np.tile((np.arange(32, dtype=np.float32) + 0.3) / 33, (32, 1))  # above 0.5 from column 17: inside a cell
    labels = medical_io.label_maps(QuarterSize(), processor, [ramp])[0]
    # the processor passes [0, 1] through (mean 0, std 1); bilinear upsampling keeps a linear ramp linear
    np.testing.assert_array_equal(labels, np.broadcast_to(ramp > 0.5, labels.shape).astype(np.int64))
    assert labels[:, 17].all() and not labels[:, 16].any()  # the coarse cell of columns 16..19 is above 0.5


def test_image_frames_window_high_bit_depth_images_and_say_how():
    """8-bit images pass as they are; 16-bit frames are windowed by each one's range (a record per frame when they
    differ) or by the caller's window (one record)."""
    plain = PIL.Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    frames, intensity = medical_io.image_frames([plain])
    assert frames == [plain] and intensity == {"source": "8-bit"}
    first, second = np.full((3, 4), 100, np.uint16), np.full((3, 4), 1000, np.uint16)
    first[0, 0], second[0, 0] = 300, 5000
    frames, intensity = medical_io.image_frames([first, second])
    assert intensity == [{"source": "range", "window": [100.0, 300.0]}, {"source": "range", "window": [1000.0, 5000.0]}]
    assert [f.max() for f in frames] == [1.0, 1.0] and [f.min() for f in frames] == [0.0, 0.0]
    frames, intensity = medical_io.image_frames([first, second], window=(0, 1000))
    assert intensity == {"source": "window", "window": [0.0, 1000.0]}
    assert frames[1][1, 1] == pytest.approx(1.0) and frames[0][1, 1] == pytest.approx(0.1)
    assert frames[0][0, 0] == pytest.approx(0.3)

"""The ``hf-medmamba predict`` command on real data (BUSI PNGs, the bundled CT NIfTI volume, pydicom's CT sample) and a
synthetic DICOM series, with tiny random models, a tiny VM-UNet briefly trained on the bundled CT slices and a stand-in
segmenter whose masks are known: structure and consistency of the outputs, agreement with the processor and model
called directly and with ``examples/evaluate_volumes.py``, masks in the input's geometry."""

import csv
import glob
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
)
from hf_medmamba.configuration_vmunet import SYNAPSE_LABELS
from hf_medmamba.tools import cli, medical_io

from ..conftest import data_path, example
from ..medical_helpers import ThresholdModel, reoriented_copies, series_affine, synthetic_series


CLASSES = {0: "benign", 1: "malignant", 2: "normal"}
SIZE = {"height": 64, "width": 64}
TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "drop_path_rate": 0.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved folders of a tiny classifier, a binary (sigmoid) segmenter and a 9-class one-channel CT segmenter."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    folders = {"cls": root / "cls", "seg": root / "seg", "multi": root / "multi"}
    MedMambaForImageClassification(MedMambaConfig(**TINY, id2label=CLASSES)).save_pretrained(folders["cls"])
    MedMambaImageProcessor(size=SIZE).save_pretrained(folders["cls"])
    binary = VMUNetConfig(
        **TINY, depths_decoder=[1, 1, 1, 1], id2label={0: "background", 1: "lesion"}, sigmoid_head=True
    )
    VMUNetForSegmentation(binary).save_pretrained(folders["seg"])
    VMUNetImageProcessor(size=SIZE).save_pretrained(folders["seg"])
    multi = VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], id2label=SYNAPSE_LABELS, num_channels=1)
    VMUNetForSegmentation(multi).save_pretrained(folders["multi"])
    VMUNetImageProcessor(size=SIZE, num_channels=1, normalization_mode="standard").save_pretrained(folders["multi"])
    return folders


def direct(folder, images, segmentation=False):
    """What the CLI should compute: the saved processor and model called on the images (segmentation: the label maps
    of `medical_io.label_maps`, at each image's size)."""
    from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    if segmentation:
        return medical_io.label_maps(AutoModelForSemanticSegmentation.from_pretrained(folder), processor, images)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**processor(images, return_tensors="pt")).logits.softmax(-1)


def read_summary(out):
    return json.loads((out / "summary.json").read_text())


def assert_committed(out):
    """Nothing left in staging, and summary.json written after every other output."""
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    last = (out / "summary.json").stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= last for p in out.rglob("*") if p.is_file())


def ct_small():
    pydicom_data = pytest.importorskip("pydicom.data")
    return Path(pydicom_data.get_testdata_file("CT_small.dcm"))


# ---------------------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------------------


def test_help_and_usage_errors(capsys):
    assert cli.main(["--help"]) == 0
    assert "predict" in capsys.readouterr().out
    assert cli.main(["predict", "--help"]) == 0
    text = capsys.readouterr().out
    options = ("--window", "--top-k", "--axis", "--dicom-series", "--batch-size", "--device", "--quiet")
    assert all(option in text for option in options)
    assert cli.main([]) == 2
    assert cli.main(["predict", "model-only"]) == 2  # INPUTS and --output missing
    assert cli.main(["predict", "m", "x.png", "-o", "out", "--top-k", "0"]) == 2
    assert cli.main(["predict", "m", "x.png", "-o", "out", "--axis", "oblique"]) == 2
    assert "0 / sagittal, 1 / coronal or 2 / axial" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["predict", "m", "x.nii", "-o", "out", "--axis", "Coronal"]).axis == 1
    assert cli.build_parser().parse_args(["predict", "m", "x.nii", "-o", "out", "--axis", "-1"]).axis == 2


def test_console_script_and_module_run(monkeypatch, capsys):
    script = Path(sys.executable).with_name("hf-medmamba")
    script = script if script.exists() else shutil.which("hf-medmamba")
    assert script, "the hf-medmamba console script is not installed (pip install -e .)"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout
    monkeypatch.setattr(sys, "argv", ["hf_medmamba.tools.cli", "predict", "--help"])
    monkeypatch.delitem(sys.modules, "hf_medmamba.tools.cli")  # run it afresh as __main__, as python -m does
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("hf_medmamba.tools.cli", run_name="__main__")
    assert exit_.value.code == 0
    assert "--window" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------------------


def test_classification_files_folder_and_glob(models, tmp_path):
    busi = data_path("busi_cls", "test")
    files = [busi / "benign" / "benign_0003.png", busi / "normal" / "normal_0027.png"]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for name in ("benign_0011.png", "benign_0018.png"):
        shutil.copy(busi / "benign" / name, folder / "sub" / name)
    (folder / "notes.txt").write_text("not an image")  # unsupported extensions are skipped inside folders
    pattern = str(busi / "malignant" / "malignant_00[01]*.png")
    globbed = sorted(glob.glob(pattern))
    assert len(globbed) >= 2
    out = tmp_path / "out"
    code = cli.main(["predict", str(models["cls"]), *map(str, files), str(folder), pattern, "-o", str(out), "-q"])
    assert code == 0

    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    expected = [*map(str, files), str(folder / "sub" / "benign_0011.png"), str(folder / "sub" / "benign_0018.png")]
    assert [r["file"] for r in rows] == expected + globbed
    assert list(rows[0]) == ["file", "slice"] + [f"{c}_{i}" for i in (1, 2, 3) for c in ("label", "score")]
    for row in rows:
        labels = [row[f"label_{i}"] for i in (1, 2, 3)]
        scores = [float(row[f"score_{i}"]) for i in (1, 2, 3)]
        assert sorted(labels) == sorted(CLASSES.values())
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) <= 1 + 1e-5 and min(scores) >= 0
        assert row["slice"] == ""

    with PIL.Image.open(files[0]) as image:
        probabilities = direct(models["cls"], [image.copy()])[0]
    assert rows[0]["label_1"] == CLASSES[int(probabilities.argmax())]
    assert float(rows[0]["score_1"]) == pytest.approx(float(probabilities.max()), abs=1e-5)

    summary = read_summary(out)
    assert summary["status"] == "ok" and summary["task"] == "classification"
    assert summary["counts"] == {"inputs": 6, "succeeded": 6, "failed": 0, "images": 6, "outputs": 1}
    assert summary["failures"] == []
    assert_committed(out)


def test_classification_of_multiframe_dicom_and_top_k(models, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(ct_small())
    frames = np.stack([ds.pixel_array, ds.pixel_array[::-1], ds.pixel_array.T]).astype(ds.pixel_array.dtype)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.save_as(tmp_path / "three.dcm")
    out = tmp_path / "out"
    assert (
        cli.main(["predict", str(models["cls"]), str(tmp_path / "three.dcm"), "-o", str(out), "-q", "--top-k", "2"])
        == 0
    )
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["slice"] for r in rows] == ["0", "1", "2"]
    assert "label_3" not in rows[0]
    assert all(float(r["score_1"]) + float(r["score_2"]) <= 1 + 1e-5 for r in rows)


# ---------------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------------


def test_binary_segmentation_masks_and_overlays(models, tmp_path):
    images = data_path("busi_seg", "test", "images")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("benign_0017.png", "malignant_0005.png"):
        shutil.copy(images / name, inputs / name)
    with PIL.Image.open(images / "benign_0032.png") as image:
        image.resize((100, 70)).save(inputs / "small.png")  # masks must follow each input's size
    out = tmp_path / "out"
    assert cli.main(["predict", str(models["seg"]), str(inputs), "-o", str(out), "-q", "--batch-size", "2"]) == 0

    for name in ("benign_0017", "malignant_0005", "small"):
        with PIL.Image.open(inputs / f"{name}.png") as image, PIL.Image.open(out / f"{name}_mask.png") as mask:
            assert mask.size == image.size and mask.mode == "L"
            assert set(np.unique(np.array(mask)).tolist()) <= {0, 255}
            with PIL.Image.open(out / f"{name}_overlay.png") as over:
                assert over.size == image.size and over.mode == "RGB"
    assert not (out / "legend.png").exists()

    with PIL.Image.open(inputs / "small.png") as image:
        expected = direct(models["seg"], [image.copy()], segmentation=True)[0]
    mask = np.array(PIL.Image.open(out / "small_mask.png"))
    assert (mask == expected.astype(np.uint8) * 255).mean() >= 0.999
    summary = read_summary(out)
    assert summary["counts"]["outputs"] == 6
    assert [i["intensity"] for i in summary["inputs"]] == [{"source": "8-bit"}] * 3
    assert {i["file"]: i["outputs"] for i in summary["inputs"]}[str(inputs / "small.png")] == [
        "small_mask.png",
        "small_overlay.png",
    ]
    assert_committed(out)


@pytest.mark.usefixtures("one_thread")
def test_ct_volume_mask_equals_evaluate_volumes(ct_model, tmp_path):
    """With no --window (the synapse recipe stores the CT window in the processor) the CLI writes the mask volume that
    ``examples/evaluate_volumes.py --save_predictions`` writes, voxel for voxel, in the input's geometry."""
    nibabel = pytest.importorskip("nibabel")
    folder, _, processor = ct_model
    assert processor.window == [-125.0, 275.0]
    ct = data_path("ct_abdomen_organs", "nifti", "ct.nii.gz")
    out = tmp_path / "out"
    assert cli.main(["predict", str(folder), str(ct), "-o", str(out), "-q"]) == 0
    results = example("evaluate_volumes").main(
        [
            "--model_name_or_path", str(folder), "--images", str(ct),
            "--labels", str(data_path("ct_abdomen_organs", "nifti", "seg_synapse8.nii.gz")),
            "--output_file", str(tmp_path / "eval.json"), "--save_predictions", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    assert results["window_hu"] == [-125.0, 275.0]
    summary = read_summary(out)
    intensity = summary["inputs"][0]["intensity"]
    assert intensity == results["cases"][0]["intensity"] == {"source": "processor", "window": [-125.0, 275.0]}

    source, mask = nibabel.load(ct), nibabel.load(out / "ct_seg.nii.gz")
    labels = np.asanyarray(mask.dataobj)
    np.testing.assert_array_equal(labels, np.asanyarray(nibabel.load(tmp_path / "eval" / "ct_pred.nii.gz").dataobj))
    assert mask.shape == source.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(mask.affine, source.affine)
    assert mask.header.get_zooms() == source.header.get_zooms()
    assert int(mask.header["sform_code"]) == int(source.header["sform_code"])
    assert 0 < labels.max() < len(SYNAPSE_LABELS)  # something was segmented, so the comparison means something

    legend = json.loads((out / "legend.json").read_text())
    assert [e["label"] for e in legend["labels"]] == list(SYNAPSE_LABELS.values())
    assert len({tuple(e["color"]) for e in legend["labels"]}) == len(SYNAPSE_LABELS)
    with PIL.Image.open(out / "legend.png") as image:
        assert image.mode == "RGB"
    assert summary["counts"]["images"] == source.shape[-1]
    assert summary["arguments"]["axis"] == "axial"
    assert_committed(out)


@pytest.mark.usefixtures("one_thread")
def test_header_reoriented_volumes_give_the_same_masks_in_world_space(ct_model, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    ct = data_path("ct_abdomen_organs", "nifti", "ct.nii.gz")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(ct, inputs / "ct.nii.gz")
    copies = reoriented_copies(ct, inputs)
    out = tmp_path / "out"
    # one volume (30 slices) per batch, so that every volume's slices go through the model in the same batches
    assert cli.main(["predict", str(ct_model[0]), str(inputs), "-o", str(out), "-q", "--batch-size", "30"]) == 0
    reference = nibabel.as_closest_canonical(nibabel.load(out / "ct_seg.nii.gz"))
    assert np.asarray(reference.dataobj).max() > 0
    for name, path in copies.items():
        source = nibabel.load(path)
        assert nibabel.aff2axcodes(source.affine) != ("R", "A", "S")
        np.testing.assert_array_equal(  # the copy really is the same anatomy
            np.asarray(nibabel.as_closest_canonical(source).dataobj), np.asarray(nibabel.load(ct).dataobj)
        )
        mask = nibabel.load(out / f"{name}_seg.nii.gz")
        assert mask.shape == source.shape, name  # written back in the input's voxel order and affine
        np.testing.assert_allclose(mask.affine, source.affine)
        canonical = nibabel.as_closest_canonical(mask)
        np.testing.assert_allclose(canonical.affine, reference.affine)
        np.testing.assert_array_equal(np.asarray(canonical.dataobj), np.asarray(reference.dataobj), err_msg=name)


def test_nifti_axis_is_a_ras_axis_in_display_orientation(models, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, size=(3, 40, 36)).astype(np.int16)
    # voxel axes 0, 1, 2 run along world S, A, R: the sagittal (RAS x) slices are volume[:, :, k]
    affine = np.array([[0, 0, 2.5, -10], [0, 0.8, 0, 5], [0.8, 0, 0, 7], [0, 0, 0, 1]])
    nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "vol.nii")
    out = tmp_path / "out"
    args = ["predict", str(models["multi"]), str(tmp_path / "vol.nii"), "--axis", "sagittal", "--window", "-500", "500"]
    assert cli.main([*args, "-o", str(out), "-q"]) == 0
    result = nibabel.load(out / "vol_seg.nii.gz")
    assert result.shape == volume.shape
    np.testing.assert_allclose(result.affine, affine)
    summary = read_summary(out)
    assert summary["counts"]["images"] == 36 and summary["arguments"]["axis"] == "sagittal"
    assert summary["inputs"][0]["intensity"] == {"source": "window", "window": [-500.0, 500.0]}
    # sagittal display orientation: superior at the top, anterior on the left
    frame = np.clip((volume[::-1, ::-1, 20].astype(np.float32) + 500) / 1000, 0, 1)
    expected = direct(models["multi"], [frame], segmentation=True)[0]
    assert (np.asanyarray(result.dataobj)[::-1, ::-1, 20] == expected).mean() >= 0.999


def test_dicom_file_in_hounsfield_units_windowed_by_the_option_or_its_range(models, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    path = ct_small()
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = tmp_path / "out"
    assert cli.main(["predict", str(models["seg"]), str(path), "-o", str(out), "-q", "--window", "-160", "240"]) == 0
    with PIL.Image.open(out / "CT_small_mask.png") as mask:
        assert mask.size == (ds.Columns, ds.Rows)
        labels = np.array(mask)
    assert set(np.unique(labels).tolist()) <= {0, 255}
    expected = direct(models["seg"], [np.clip((hu + 160) / 400, 0, 1)], segmentation=True)[0]
    assert (labels == expected.astype(np.uint8) * 255).mean() >= 0.999
    assert (out / "CT_small_overlay.png").exists()
    assert read_summary(out)["inputs"][0]["intensity"] == {"source": "window", "window": [-160.0, 240.0]}
    # no --window, no processor window, no VOI window in the file: the file's own range, in HU (rescale applied)
    assert cli.main(["predict", str(models["seg"]), str(path), "-o", str(tmp_path / "range"), "-q"]) == 0
    intensity = read_summary(tmp_path / "range")["inputs"][0]["intensity"]
    assert intensity == {"source": "range", "window": [float(hu.min()), float(hu.max())]}


def test_dicom_series_folders_give_nifti_masks_in_the_series_geometry(tmp_path, monkeypatch):
    nibabel = pytest.importorskip("nibabel")
    pytest.importorskip("pydicom")
    hu = synthetic_series(tmp_path / "study" / "1.2.840.99")  # a UID as folder name: kept whole in the output name
    synthetic_series(tmp_path / "second")
    # a stand-in model whose masks are known (above 0.5 after the series' own window, center 40 width 400: the 300 HU
    # box), on coronal slices (the acquired planes, 20 x 24) at the processor's size, so no resizing blurs them
    processor = VMUNetImageProcessor(num_channels=1, normalization_mode="standard", size={"height": 20, "width": 24})
    monkeypatch.setattr(cli, "load_model", lambda *args: (ThresholdModel(), processor, "segmentation"))
    out = tmp_path / "out"
    args = [str(tmp_path / "study" / "*"), str(tmp_path / "second"), "--dicom-series", "--axis", "coronal"]
    assert cli.main(["predict", "threshold-model", *args, "-o", str(out), "-q"]) == 0

    summary = read_summary(out)
    assert sorted(summary["outputs"]) == ["1.2.840.99_seg.nii.gz", "second_seg.nii.gz"]
    assert [i["intensity"] for i in summary["inputs"]] == [{"source": "dicom voi"}] * 2
    assert summary["counts"]["images"] == 8  # 4 coronal slices per series
    for name in ("1.2.840.99", "second"):
        mask = nibabel.load(out / f"{name}_seg.nii.gz")
        assert mask.shape == (24, 20, 4) and int(mask.header["sform_code"]) == 1  # the series' voxel order
        np.testing.assert_allclose(mask.affine, series_affine(), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), (hu > 0).transpose(2, 1, 0))
    assert_committed(out)


# ---------------------------------------------------------------------------------------------------------------------
# Failures and robustness
# ---------------------------------------------------------------------------------------------------------------------


def test_corrupt_files_are_skipped_and_reported(models, tmp_path, capsys):
    images = data_path("busi_seg", "test", "images")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("benign_0017.png", "benign_0032.png"):
        shutil.copy(images / name, inputs / name)
    (inputs / "garbage.png").write_bytes(np.random.default_rng(0).bytes(600))
    (inputs / "truncated.png").write_bytes((images / "benign_0034.png").read_bytes()[:2000])
    out = tmp_path / "out"
    code = cli.main(["predict", str(models["seg"]), str(inputs), str(tmp_path / "missing.png"), "-o", str(out), "-q"])
    assert code == 1

    for name in ("benign_0017", "benign_0032"):
        assert (out / f"{name}_mask.png").exists() and (out / f"{name}_overlay.png").exists()
    assert not list(out.glob("garbage*")) and not list(out.glob("truncated*"))
    summary = read_summary(out)
    assert summary["status"] == "failed"
    assert summary["counts"]["succeeded"] == 2 and summary["counts"]["failed"] == 3
    failed = {Path(f["file"]).name: f["reason"] for f in summary["failures"]}
    assert set(failed) == {"garbage.png", "truncated.png", "missing.png"}
    assert all(failed.values())
    assert [i["status"] for i in summary["inputs"]] == ["ok", "ok", "failed", "failed"]
    err = capsys.readouterr().err
    assert "garbage.png" in err and "truncated.png" in err and "missing.png" in err
    assert_committed(out)


def test_interrupted_run_leaves_no_outputs(models, tmp_path, monkeypatch):
    image = data_path("busi_seg", "test", "images", "benign_0017.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # from an earlier run: must not survive as if this run had finished

    def interrupt(self, source):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.Run, "finish", interrupt)
    assert cli.main(["predict", str(models["seg"]), str(image), "-o", str(out), "-q"]) == 130
    assert list(out.iterdir()) == []


def test_command_errors(models, tmp_path, monkeypatch, capsys):
    image = str(data_path("busi_seg", "test", "images", "benign_0017.png"))
    out = tmp_path / "out"
    assert cli.main(["predict", str(models["seg"]), str(tmp_path / "none" / "*.png"), "-o", str(out)]) == 2
    assert "no input files" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["predict", str(models["seg"]), str(empty), "-o", str(out)]) == 2
    assert cli.main(["predict", str(tmp_path / "no-model"), image, "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["predict", str(models["seg"]), image, "-o", str(out), "--window", "5", "1"]) == 2
    if not torch.cuda.is_available():
        assert cli.main(["predict", str(models["seg"]), image, "-o", str(out), "--device", "cuda:1"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    dicom = str(ct_small())
    nameless = shutil.copy(dicom, tmp_path / "scan")  # no extension: found to be DICOM only when it is read
    ct = str(data_path("ct_abdomen_organs", "nifti", "ct.nii.gz"))
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pydicom", None)  # as if pydicom were not installed
        for inputs, output in (([dicom], out), (["--dicom-series", str(empty)], out), ([nameless], tmp_path / "o")):
            assert cli.main(["predict", str(models["seg"]), *map(str, inputs), "-o", str(output)]) == 2
            assert "needs pydicom: pip install 'hf-medmamba[medical]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "monai", None)
    assert cli.main(["predict", str(models["seg"]), ct, "-o", str(out)]) == 2
    assert "reading NIfTI volumes needs monai: pip install 'hf-medmamba[medical]'" in capsys.readouterr().err
    assert not out.exists()

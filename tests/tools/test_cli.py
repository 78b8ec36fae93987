"""The ``hf-medmamba predict`` command on real data (BUSI PNGs, a CT NIfTI volume, pydicom's CT sample) with tiny random
models: structure and consistency of the outputs, agreement with the processor and model called directly."""

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
from hf_medmamba.tools import cli, cli_inputs

from ..conftest import data_path


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


def direct(folder, images, target_sizes=None):
    """What the CLI should compute: the saved processor and model called on the images."""
    from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    auto = AutoModelForSemanticSegmentation if target_sizes else AutoModelForImageClassification
    model = auto.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images, return_tensors="pt"))
    if target_sizes:
        return [m.numpy() for m in processor.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)]
    return outputs.logits.softmax(-1)


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
    assert all(option in text for option in ("--window", "--top-k", "--axis", "--batch-size", "--device", "--quiet"))
    assert cli.main([]) == 2
    assert cli.main(["predict", "model-only"]) == 2  # INPUTS and --output missing
    assert cli.main(["predict", "m", "x.png", "-o", "out", "--top-k", "0"]) == 2


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
        expected = direct(models["seg"], [image.copy()], target_sizes=[(70, 100)])[0]
    mask = np.array(PIL.Image.open(out / "small_mask.png"))
    assert (mask == expected.astype(np.uint8) * 255).mean() >= 0.999
    summary = read_summary(out)
    assert summary["counts"]["outputs"] == 6
    assert {i["file"]: i["outputs"] for i in summary["inputs"]}[str(inputs / "small.png")] == [
        "small_mask.png",
        "small_overlay.png",
    ]
    assert_committed(out)


def test_multiclass_segmentation_of_a_ct_volume(models, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    ct = data_path("ct_abdomen_organs", "nifti", "ct.nii.gz")
    out = tmp_path / "out"
    args = ["predict", str(models["multi"]), str(ct), "--window", "-125", "275", "-o", str(out), "-q"]
    assert cli.main([*args, "--batch-size", "16"]) == 0

    source, result = nibabel.load(ct), nibabel.load(out / "ct_seg.nii.gz")
    labels = np.asanyarray(result.dataobj)
    assert result.shape == source.shape and labels.dtype == np.uint8
    np.testing.assert_allclose(result.affine, source.affine)
    assert result.header.get_zooms() == source.header.get_zooms()
    assert int(result.header["sform_code"]) == int(source.header["sform_code"])
    assert labels.max() < len(SYNAPSE_LABELS)

    volume = np.asanyarray(source.dataobj).astype(np.float32)
    window = np.clip((volume[:, :, 15] + 125) / 400, 0, 1)
    expected = direct(models["multi"], [window], target_sizes=[window.shape])[0]
    assert (labels[:, :, 15] == expected).mean() >= 0.999

    legend = json.loads((out / "legend.json").read_text())
    assert [e["label"] for e in legend["labels"]] == list(SYNAPSE_LABELS.values())
    assert len({tuple(e["color"]) for e in legend["labels"]}) == len(SYNAPSE_LABELS)
    with PIL.Image.open(out / "legend.png") as image:
        assert image.mode == "RGB"
    assert read_summary(out)["counts"]["images"] == source.shape[-1]
    assert_committed(out)


def test_nifti_axis_option(models, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1000, size=(3, 40, 36)).astype(np.int16)
    affine = np.array([[0, 0, 2.5, -10], [0, 0.8, 0, 5], [0.8, 0, 0, 7], [0, 0, 0, 1]])
    nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "vol.nii")
    out = tmp_path / "out"
    assert (
        cli.main(["predict", str(models["multi"]), str(tmp_path / "vol.nii"), "--axis", "0", "-o", str(out), "-q"]) == 0
    )
    result = nibabel.load(out / "vol_seg.nii.gz")
    assert result.shape == volume.shape
    np.testing.assert_allclose(result.affine, affine)
    expected = direct(models["multi"], [volume[1]], target_sizes=[volume[1].shape])[0]
    assert (np.asanyarray(result.dataobj)[1] == expected).mean() >= 0.999


def test_dicom_segmentation_with_rescale(models, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    path = ct_small()
    ds = pydicom.dcmread(path)
    frames, invert = cli_inputs.read_dicom(path)
    assert not invert and len(frames) == 1
    expected_hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    np.testing.assert_array_equal(frames[0], expected_hu)

    out = tmp_path / "out"
    assert cli.main(["predict", str(models["seg"]), str(path), "-o", str(out), "-q", "--window", "-160", "240"]) == 0
    with PIL.Image.open(out / "CT_small_mask.png") as mask:
        assert mask.size == (ds.Columns, ds.Rows)
        assert set(np.unique(np.array(mask)).tolist()) <= {0, 255}
    assert (out / "CT_small_overlay.png").exists()


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
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if pydicom were not installed
    assert cli.main(["predict", str(models["seg"]), dicom, "-o", str(out)]) == 2
    assert "pip install hf-medmamba[medical]" in capsys.readouterr().err
    assert not out.exists()


def test_input_collection_and_output_names(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for name in ("a/x.png", "a/x.dcm", "a/deep/y.nii.gz", "a/.hidden.png", "a/readme.md", "b/x.png"):
        (tmp_path / name).write_bytes(b"")
    out = tmp_path / "a" / "out"
    out.mkdir()
    (out / "old_mask.png").write_bytes(b"")  # earlier outputs inside an input folder are not inputs
    found, unmatched = cli_inputs.collect_inputs(
        [str(tmp_path / "a"), str(tmp_path / "a" / "x.png"), str(tmp_path / "*" / "x.png"), "nothing*.png"], out
    )
    assert [f.relative_to(tmp_path).as_posix() for f, _ in found] == [
        "a/x.dcm",
        "a/x.png",
        "a/deep/y.nii.gz",
        "b/x.png",
    ]
    assert unmatched == ["nothing*.png"]
    stems = cli_inputs.output_stems([relative for _, relative in found])
    assert [s.as_posix() for s in stems] == ["x_dcm", "x_png", "deep/y", "b/x"]
    assert cli_inputs.output_stems([Path("x.png"), Path("x.png")]) == [Path("x_png"), Path("x_png_2")]

"""`examples/prepare_isic.py` and `examples/prepare_synapse.py` on small synthetic copies of the official layouts
(the challenges' file and folder names, a handful of tiny random images, masks and volumes): layouts, splits, mask
values, sizes, HU windowing, label mapping, kept affines, refusals; then the segmentation and volume-evaluation
scripts on the prepared folders with tiny models."""

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from hf_medmamba import VMUNetConfig, VMUNetForSegmentation, VMUNetImageProcessor
from hf_medmamba.configuration_vmunet import SYNAPSE_LABELS

from .conftest import EXAMPLES, TINY_VMUNET, common_args, example


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


# The challenges' download files (challenge.isic-archive.com), images then masks for training, validation and test.
OFFICIAL_ZIPS = {
    "isic17": """ISIC-2017_Training_Data.zip ISIC-2017_Training_Part1_GroundTruth.zip
        ISIC-2017_Validation_Data.zip ISIC-2017_Validation_Part1_GroundTruth.zip
        ISIC-2017_Test_v2_Data.zip ISIC-2017_Test_v2_Part1_GroundTruth.zip""",
    "isic18": """ISIC2018_Task1-2_Training_Input.zip ISIC2018_Task1_Training_GroundTruth.zip
        ISIC2018_Task1-2_Validation_Input.zip ISIC2018_Task1_Validation_GroundTruth.zip ISIC2018_Task1-2_Test_Input.zip
        ISIC2018_Task1_Test_GroundTruth.zip""",
}


def official_parts(dataset, split):
    """(image part, mask part) of a split: the zip names without .zip."""
    names = [name.removesuffix(".zip") for name in OFFICIAL_ZIPS[dataset].split()]
    index = ("train", "validation", "test").index(split)
    return names[2 * index], names[2 * index + 1]


TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)


def isic():
    return example("prepare_isic")


def synapse():
    return example("prepare_synapse")


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic inputs
# ----------------------------------------------------------------------------------------------------------------------


def random_pair(rng, width, height):
    """An RGB image and a lesion mask ({0, 255}, an off-centre box) of one size."""
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    mask[top : top + height // 2, left : left + width // 3] = 255
    return image, mask


def write_part(root, part, files, zipped):
    """Files {relative name: PIL image or bytes} as the folder root/part/ or the zip root/part.zip (one top folder,
    as the challenge zips)."""

    def encode(name, content):
        if isinstance(content, bytes):
            return content
        from io import BytesIO

        buffer = BytesIO()
        content.save(buffer, format="JPEG" if name.endswith(".jpg") else "PNG", quality=95)
        return buffer.getvalue()

    if zipped:
        with zipfile.ZipFile(root / f"{part}.zip", "w") as archive:
            for name, content in files.items():
                archive.writestr(f"{part}/{name}", encode(name, content))
    else:
        (root / part).mkdir(parents=True)
        for name, content in files.items():
            (root / part / name).write_bytes(encode(name, content))


def make_official_isic(root, dataset="isic17", counts=(8, 3, 4), zipped=(), seed=0):
    """The official parts with ``counts`` (train, validation, test) pairs; returns {split: [ids]}. Each image has
    its own size; the 2017 training images come with superpixel maps and a metadata CSV, the 2018 parts with licence
    files, as the real downloads; mask ISIC_0000001 has values 0/100/128/200/255 (binarisation)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids, number = {}, 0
    for split, count in zip(("train", "validation", "test"), counts):
        if count == 0:
            continue
        images, masks = {}, {}
        for _ in range(count):
            key = f"ISIC_{number:07d}"
            image, mask = random_pair(rng, 40 + 3 * number, 30 + 2 * number)
            if number == 1:
                mask[:, :5], mask[:, 5:10], mask[:, 10:15] = 100, 128, 200
            images[f"{key}.jpg"] = PIL.Image.fromarray(image)
            masks[f"{key}_segmentation.png"] = PIL.Image.fromarray(mask)
            if dataset == "isic17" and split == "train":
                images[f"{key}_superpixels.png"] = PIL.Image.fromarray(image[..., 0])
            ids.setdefault(split, []).append(key)
            number += 1
        if dataset == "isic17":
            images[f"{official_parts(dataset, split)[0]}_metadata.csv"] = b"image_id,age_approximate,sex\n"
        else:
            images["LICENSE.txt"] = masks["LICENSE.txt"] = b"CC-BY-NC\n"
        image_part, mask_part = official_parts(dataset, split)
        write_part(root, image_part, images, split in zipped)
        write_part(root, mask_part, masks, split in zipped)
    return ids


def make_vmunet_isic(root, counts=(7, 3), seed=1):
    """VM-UNet's pre-split archive layout: train/ and val/ with images/ and masks/ (masks named *_segmentation)."""
    rng = np.random.default_rng(seed)
    ids = {}
    for split, count in zip(("train", "val"), counts):
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True)
        for i in range(count):
            key = f"ISIC_{100 * (split == 'val') + i:07d}"
            image, mask = random_pair(rng, 36 + i, 28 + i)
            PIL.Image.fromarray(image).save(root / split / "images" / f"{key}.png")
            PIL.Image.fromarray(mask).save(root / split / "masks" / f"{key}_segmentation.png")
            ids.setdefault(split, []).append(key)
    return ids


def find_source(root, key, kind):
    """The input image (kind 'image') or mask of ``key`` under an official or pre-split layout, decoded."""
    pattern = f"{key}_segmentation.png" if kind == "mask" else f"{key}.*"
    for path in sorted(root.rglob(pattern)):
        return PIL.Image.open(path).convert("L" if kind == "mask" else "RGB")
    for archive in sorted(root.glob("*.zip")):
        with zipfile.ZipFile(archive) as handle:
            for member in handle.namelist():
                if Path(member).match(pattern):
                    with handle.open(member) as stream:
                        return PIL.Image.open(stream).convert("L" if kind == "mask" else "RGB")
    raise AssertionError(f"no {kind} for {key} under {root}")


def read_metadata(folder):
    with open(folder / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def split_ids(output):
    return {p.name: sorted(r["isic_id"] for r in read_metadata(p)) for p in sorted(output.iterdir()) if p.is_dir()}


def all_files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------------
# ISIC
# ----------------------------------------------------------------------------------------------------------------------


def test_isic_paper_split_from_official_parts(tmp_path):
    source = tmp_path / "downloads"
    ids = make_official_isic(source, "isic17", zipped=("validation",))
    manifest = isic().prepare(source, tmp_path / "out", "isic17", split="paper", size=32)

    out = tmp_path / "out"
    splits = split_ids(out)
    assert sorted(splits) == ["test", "train"]  # the paper protocol: one held-out split, selected and reported on
    pool = ids["train"] + ids["validation"]
    assert len(splits["train"]) == round(0.7 * len(pool)) == 8 and len(splits["test"]) == 3
    assert sorted(splits["train"] + splits["test"]) == sorted(pool) and not set(splits["train"]) & set(splits["test"])
    assert not set(ids["test"]) & set(splits["train"] + splits["test"])  # the official test part plays no role
    assert manifest["counts"] == {"train": 8, "test": 3} and manifest["split"] == "paper"
    assert json.loads((out / "preparation.json").read_text())["input_layout"] == "official ISIC 2017 parts"

    for split in ("train", "test"):
        rows = read_metadata(out / split)
        assert list(rows[0]) == ["file_name", "mask_file_name", "isic_id", "source", "orig_width", "orig_height",
                                 "lesion_fraction"]  # fmt: skip
        assert sorted(p.name for p in (out / split / "images").iterdir()) == [f"{k}.png" for k in splits[split]]
        for row in rows:
            key = row["isic_id"]
            assert row["file_name"] == f"images/{key}.png" and row["mask_file_name"] == f"masks/{key}.png"
            image, mask = (
                PIL.Image.open(out / split / row["file_name"]),
                PIL.Image.open(out / split / row["mask_file_name"]),
            )
            assert (image.format, image.mode, image.size, mask.mode, mask.size) == (
                "PNG",
                "RGB",
                (32, 32),
                "L",
                (32, 32),
            )
            # each output is its own source, resized as the paper: bilinear image, nearest mask (binarised first)
            original, original_mask = find_source(source, key, "image"), find_source(source, key, "mask")
            assert (int(row["orig_width"]), int(row["orig_height"])) == original.size
            assert np.array_equal(np.asarray(image), np.asarray(original.resize((32, 32), PIL.Image.BILINEAR)))
            binary = PIL.Image.fromarray(((np.asarray(original_mask) >= 128) * 255).astype(np.uint8))
            assert np.array_equal(np.asarray(mask), np.asarray(binary.resize((32, 32), PIL.Image.NEAREST)))
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
            assert float(row["lesion_fraction"]) == pytest.approx(np.mean(np.asarray(mask) > 0), abs=1e-5)
        sources = {r["source"] for r in rows}
        assert sources <= {"ISIC-2017_Training_Data", "ISIC-2017_Validation_Data"}


def test_isic_binarisation_and_original_sizes(tmp_path):
    source = tmp_path / "downloads"
    make_official_isic(source, "isic18", counts=(5, 2, 2))
    nested = source / "ISIC2018_Task1-2_Test_Input"  # extracted into a folder of its own name, as unzip tools do
    nested.rename(source / "tmp")
    (source / "tmp").rename(source / "tmp2")
    nested.mkdir()
    (source / "tmp2").rename(nested / nested.name)
    isic().prepare(source, tmp_path / "out", "isic18", split="heldout", size=0, val_fraction=0.25)
    out = tmp_path / "out"
    rows = {r["isic_id"]: (split, r) for split in ("train", "validation", "test") for r in read_metadata(out / split)}
    split, row = rows["ISIC_0000001"]
    mask = np.asarray(PIL.Image.open(out / split / row["mask_file_name"]))
    original = np.asarray(find_source(source, "ISIC_0000001", "mask"))
    assert mask.shape == original.shape  # --size 0 keeps the original size
    assert np.array_equal(mask[:, :5], np.zeros_like(mask[:, :5]))  # 100 -> 0
    assert (mask[:, 5:15] == 255).all()  # 128 and 200 -> 255
    assert np.array_equal(mask == 255, original >= 128)
    for key, (split, row) in rows.items():
        with PIL.Image.open(out / split / row["file_name"]) as image:
            assert (
                image.size
                == find_source(source, key, "image").size
                == (int(row["orig_width"]), int(row["orig_height"]))
            )


def test_isic_heldout_split_is_seeded_and_keeps_test_apart(tmp_path):
    source = tmp_path / "downloads"
    ids = make_official_isic(source, "isic17", counts=(9, 3, 4), zipped=("train", "test"))
    first = isic().prepare(source, tmp_path / "a", "isic17", split="heldout", size=16, seed=42)
    splits = split_ids(tmp_path / "a")
    assert sorted(splits) == ["test", "train", "validation"]
    assert splits["test"] == ids["test"]  # the official test part, untouched by the random draw
    assert len(splits["validation"]) == round(0.2 * 12) == 2 and len(splits["train"]) == 10
    assert sorted(splits["train"] + splits["validation"]) == sorted(ids["train"] + ids["validation"])
    assert first["counts"] == {"train": 10, "validation": 2, "test": 4}

    # deterministic: the same seed gives the same files byte for byte, also with worker processes; another seed differs
    isic().prepare(source, tmp_path / "b", "isic17", split="heldout", size=16, seed=42, num_workers=2)
    same, other = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    assert {k: v for k, v in same.items() if k != "preparation.json"} == {
        k: v for k, v in other.items() if k != "preparation.json"
    }
    isic().prepare(source, tmp_path / "c", "isic17", split="heldout", size=16, seed=7)
    assert split_ids(tmp_path / "c")["validation"] != splits["validation"]
    assert split_ids(tmp_path / "c")["test"] == ids["test"]

    # the three folders are the imagefolder splits the segmentation script reads; it evaluates on validation/
    from datasets import load_dataset

    loaded = load_dataset("imagefolder", data_dir=str(tmp_path / "a"), cache_dir=str(tmp_path / "cache"))
    assert {name: len(part) for name, part in loaded.items()} == {"train": 10, "validation": 2, "test": 4}
    assert loaded["train"].column_names[:2] == ["image", "mask"] and loaded["test"][0]["mask"].mode == "L"
    arguments = type("DataArguments", (), {"eval_split_name": None, "train_val_split": 0.15})
    roles = example("example_data").split_roles(loaded, arguments, 0)
    assert (roles.eval_name, roles.test_name) == ("validation", "test")

    # idempotent: preparing again over the same folder (--overwrite) rewrites identical files
    isic().prepare(source, tmp_path / "a", "isic17", split="heldout", size=16, seed=42, overwrite=True)
    assert all_files(tmp_path / "a") == same


def test_isic_from_vmunet_presplit_archive(tmp_path):
    source = tmp_path / "isic18"
    ids = make_vmunet_isic(source)
    isic().prepare(source, tmp_path / "paper", "isic18", split="paper", size=24)
    assert split_ids(tmp_path / "paper") == {"test": ids["val"], "train": ids["train"]}  # upstream's own 7:3 split
    manifest = isic().prepare(source, tmp_path / "heldout", "isic18", split="heldout", size=24)
    splits = split_ids(tmp_path / "heldout")
    assert splits["test"] == ids["val"] and len(splits["validation"]) == 1
    assert sorted(splits["train"] + splits["validation"]) == ids["train"]
    assert manifest["input_layout"] == "VM-UNet pre-split archive"
    with PIL.Image.open(tmp_path / "paper" / "train" / "masks" / "ISIC_0000000.png") as mask:
        expected = find_source(source, "ISIC_0000000", "mask").resize((24, 24), PIL.Image.NEAREST)
        assert np.array_equal(np.asarray(mask), np.asarray(expected))


def test_isic_refusals_name_the_problem(tmp_path):
    prepare = isic().prepare
    error = isic().PreparationError
    wrong = tmp_path / "wrong"
    (wrong / "images").mkdir(parents=True)
    with pytest.raises(error, match=r"ISIC-2017_Training_Data.*train/images, train/masks, val/images, val/masks"):
        prepare(wrong, tmp_path / "out", "isic17")
    assert not (tmp_path / "out").exists()

    official = tmp_path / "downloads"
    make_official_isic(official, "isic17", counts=(4, 2, 0))
    with pytest.raises(error, match="did you mean --dataset isic17"):
        prepare(official, tmp_path / "out", "isic18")
    with pytest.raises(error, match=f"subfolder {official.name} holds a known layout"):
        prepare(tmp_path, tmp_path / "out", "isic17")
    with pytest.raises(error, match="keeps the official test part apart"):
        prepare(official, tmp_path / "out", "isic17", split="heldout")

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(error, match=r"not empty.*--overwrite"):
        prepare(official, tmp_path / "out", "isic17", size=8)
    with pytest.raises(error, match=r"notes\.txt, which this script did not write"):
        prepare(official, tmp_path / "out", "isic17", size=8, overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"

    (official / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000003_segmentation.png").unlink()
    with pytest.raises(error, match=r"1 image\(s\) of ISIC-2017_Training_Data have no mask.*ISIC_0000003"):
        prepare(official, tmp_path / "new", "isic17")


def test_isic_command_line(tmp_path):
    source = tmp_path / "downloads"
    make_official_isic(source, "isic18", counts=(4, 2, 1))
    script = str(EXAMPLES / "prepare_isic.py")
    args = [sys.executable, script, "--dataset", "isic18", "--input", str(source), "--size", "16"]
    done = subprocess.run([*args, "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "train: 4 image/mask pairs" in done.stdout and "test: 2 image/mask pairs" in done.stdout
    written = split_ids(tmp_path / "out")
    assert sorted(written["train"] + written["test"]) == [f"ISIC_{i:07d}" for i in range(6)]
    again = subprocess.run([*args, "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "prepare_isic.py: error:" in again.stderr and "--overwrite" in again.stderr
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60)
    assert "selects its checkpoint on the same split it reports" in " ".join(helped.stdout.split())


# ----------------------------------------------------------------------------------------------------------------------
# Synapse
# ----------------------------------------------------------------------------------------------------------------------


def make_transunet_synapse(root, lists=True, seed=2):
    """TransUNet's release: train_npz/ (2 slices of each training case), test_vol_h5/ (3-slice volumes) and, with
    ``lists``, lists/lists_Synapse; plus an unlisted stray slice of case 0099."""
    import h5py

    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    names = []
    for case in (*TRAIN_CASES, 99):
        for index in range(2):
            name = f"case{case:04d}_slice{index:03d}"
            image = rng.random((12, 10), dtype=np.float32)
            label = rng.integers(0, 9, size=(12, 10)).astype(np.float32)
            np.savez(root / "train_npz" / f"{name}.npz", image=image, label=label)
            if case != 99:
                names.append(name)
    for case in TEST_CASES:
        with h5py.File(root / "test_vol_h5" / f"case{case:04d}.npy.h5", "w") as handle:
            handle.create_dataset("image", data=rng.random((3, 12, 10), dtype=np.float32))
            handle.create_dataset("label", data=rng.integers(0, 9, size=(3, 12, 10)).astype(np.float32))
    if lists:
        folder = root / "lists" / "lists_Synapse"
        folder.mkdir(parents=True)
        (folder / "train.txt").write_text("".join(f"{n}\n" for n in names))
        (folder / "test_vol.txt").write_text("".join(f"case{c:04d}\n" for c in TEST_CASES))
    return names


LPS = np.diag([-0.8, -0.8, 2.5, 1.0])  # a BTCV-like affine: x and y point left and posterior
SHAPE = (6, 5, 3)  # x, y, z voxels


def make_btcv(root, seed=3, skip=()):
    """RawData/Training/{img,label} for the 30 labelled cases (tiny LPS volumes, HU and BTCV labels 0-13). Case 5
    (training) and case 1 (test) hold known voxels: see `KNOWN_HU` and `KNOWN_LABELS`."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    base = root / "RawData" / "Training"
    (base / "img").mkdir(parents=True)
    (base / "label").mkdir(parents=True)
    affine = LPS.copy()
    affine[:3, 3] = [170.0, 150.0, -300.0]
    for case in sorted(TRAIN_CASES + TEST_CASES):
        if case in skip:
            continue
        hu = rng.integers(-1024, 1500, size=SHAPE).astype(np.int16)
        labels = rng.integers(0, 14, size=SHAPE).astype(np.uint8)
        if case in (1, 5):
            for voxel, value in KNOWN_HU.items():
                hu[voxel] = value
            for voxel, value in KNOWN_LABELS.items():
                labels[voxel] = value
        nib.save(nib.Nifti1Image(hu, affine), base / "img" / f"img{case:04d}.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), base / "label" / f"label{case:04d}.nii.gz")
    return root


# (x, y, z) voxel -> HU, and the expected 8-bit value: round(255 * (clip(HU, -125, 275) + 125) / 400)
KNOWN_HU = {(0, 0, 0): -1000, (1, 0, 0): -125, (2, 0, 0): 0, (3, 1, 1): 100, (4, 2, 2): 275, (5, 4, 2): 1200}
EXPECTED_GRAY = {(0, 0, 0): 0, (1, 0, 0): 0, (2, 0, 0): 80, (3, 1, 1): 143, (4, 2, 2): 255, (5, 4, 2): 255}
# BTCV label -> Synapse class on known voxels: 6 liver -> 5, 11 pancreas -> 8, 5 esophagus and 13 adrenal -> 0, ...
KNOWN_LABELS = {(0, 1, 0): 6, (1, 1, 0): 11, (2, 1, 0): 5, (3, 2, 1): 13, (4, 3, 2): 8, (5, 0, 1): 2, (0, 4, 2): 9}
EXPECTED_CLASS = {(0, 1, 0): 5, (1, 1, 0): 8, (2, 1, 0): 0, (3, 2, 1): 0, (4, 3, 2): 7, (5, 0, 1): 2, (0, 4, 2): 0}


def slice_pixel(voxel):
    """(slice, row, column) of an LPS voxel in the prepared slices: RAS, anterior up and patient right on the left
    leave an LPS array's x as the column and y as the row."""
    x, y, z = voxel
    return z, y, x


def test_synapse_from_transunet_release(tmp_path):
    names = make_transunet_synapse(tmp_path / "Synapse")
    manifest = synapse().prepare(tmp_path / "Synapse", tmp_path / "out")
    out = tmp_path / "out"
    train, test = read_metadata(out / "slices" / "train"), read_metadata(out / "slices" / "test")
    assert [r["file_name"] for r in train] == [f"images/{n}.png" for n in sorted(names)]  # the listed slices only
    assert len(test) == 12 * 3 and {r["case"] for r in test} == {f"case{c:04d}" for c in TEST_CASES}
    assert not {r["case"] for r in train} & {r["case"] for r in test}
    assert manifest["split_is_transunet"] and manifest["train_slices"] == 36 and manifest["test_slices"] == 36
    assert list(train[0]) == ["file_name", "label_file_name", "case", "slice_index", "organs_present"]
    assert json.loads((out / "slices" / "id2label.json").read_text()) == {str(k): v for k, v in SYNAPSE_LABELS.items()}

    # a slice is its npz, quantised to 8 bits; its labels unchanged
    with np.load(tmp_path / "Synapse" / "train_npz" / "case0031_slice001.npz") as data:
        image, label = data["image"], data["label"]
    png = np.asarray(PIL.Image.open(out / "slices" / "train" / "images" / "case0031_slice001.png"))
    assert png.dtype == np.uint8 and png.shape == (12, 10)
    assert np.abs(png / 255.0 - image).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(
        np.asarray(PIL.Image.open(out / "slices" / "train" / "labels" / "case0031_slice001.png")), label
    )
    row = next(r for r in train if r["file_name"].endswith("case0031_slice001.png"))
    organs = [SYNAPSE_LABELS[k].replace(" ", "_") for k in np.unique(label).astype(int) if k]
    assert row["organs_present"].split() == organs and row["slice_index"] == "1"

    # test volumes become the .npz that evaluate_volumes.py reads
    import h5py

    with h5py.File(tmp_path / "Synapse" / "test_vol_h5" / "case0022.npy.h5") as handle:
        volume, labels = handle["image"][:], handle["label"][:]
    with np.load(out / "volumes" / "case0022.npz") as data:
        assert np.array_equal(data["image"], volume) and np.array_equal(data["label"], labels)
        assert data["label"].dtype == np.uint8
    assert sorted(p.name for p in (out / "volumes").iterdir()) == [f"case{c:04d}.npz" for c in sorted(TEST_CASES)]
    test_png = np.asarray(PIL.Image.open(out / "slices" / "test" / "images" / "case0022_slice002.png"))
    assert np.array_equal(test_png, np.rint(volume[2] * 255).astype(np.uint8))

    # idempotent: again over the same folder, the same slices byte for byte and the same volumes
    before = all_files(out)
    synapse().prepare(tmp_path / "Synapse", out, overwrite=True)
    after = all_files(out)
    assert {k: v for k, v in after.items() if not k.endswith(".npz")} == {
        k: v for k, v in before.items() if not k.endswith(".npz")
    }
    with np.load(out / "volumes" / "case0022.npz") as data:
        assert np.array_equal(data["image"], volume) and np.array_equal(data["label"], labels)


def test_synapse_transunet_lists_and_refusals(tmp_path, monkeypatch):
    root = tmp_path / "Synapse"
    make_transunet_synapse(root, lists=False)
    error = synapse().PreparationError
    manifest = synapse().prepare(root, tmp_path / "all")  # no lists: every file, the stray case 99 included
    assert manifest["train_slices"] == 38 and not manifest["split_is_transunet"]
    assert "case0099" in manifest["train_cases"]

    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(error, match="pip install h5py"):
        synapse().prepare(root, tmp_path / "no_h5py")
    assert not (tmp_path / "no_h5py").exists()
    monkeypatch.undo()

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text("case0005_slice000\ncase0005_slice007\n")
    (lists / "test_vol.txt").write_text("case0001\n")
    with pytest.raises(error, match=r"1 file\(s\) named in .*case0005_slice007.npz"):
        synapse().prepare(root, tmp_path / "out", lists_dir=lists)
    np.savez(root / "train_npz" / "case0005_slice007.npz", image=np.zeros((4, 4)), label=np.full((4, 4), 13.0))
    with pytest.raises(error, match="labels must be the class ids 0-8"):
        synapse().prepare(root, tmp_path / "out", lists_dir=lists)
    with pytest.raises(error, match=r"train_npz/\*\.npz and test_vol_h5/\*\.npy\.h5.*RawData/Training/img"):
        synapse().prepare(tmp_path / "lists", tmp_path / "out")


def test_synapse_from_raw_btcv(tmp_path):
    import nibabel as nib

    raw = make_btcv(tmp_path / "Abdomen")
    manifest = synapse().prepare(raw / "RawData", tmp_path / "out")
    out = tmp_path / "out"
    train, test = read_metadata(out / "slices" / "train"), read_metadata(out / "slices" / "test")
    assert {r["case"] for r in train} == {f"case{c:04d}" for c in TRAIN_CASES} and len(train) == 18 * SHAPE[2]
    assert {r["case"] for r in test} == {f"case{c:04d}" for c in TEST_CASES} and len(test) == 12 * SHAPE[2]
    assert manifest["input_layout"] == "raw BTCV Abdomen" and manifest["label_mapping"]["11"] == 8

    # HU window [-125, 275] -> [0, 1] -> 8 bits, and the 13 -> 8 label mapping, on known voxels of case 5
    for voxel, gray in EXPECTED_GRAY.items():
        z, row, column = slice_pixel(voxel)
        image = np.asarray(PIL.Image.open(out / "slices" / "train" / "images" / f"case0005_slice{z:03d}.png"))
        assert image.shape == (SHAPE[1], SHAPE[0]) and image[row, column] == gray, voxel
    for voxel, label in EXPECTED_CLASS.items():
        z, row, column = slice_pixel(voxel)
        labels = np.asarray(PIL.Image.open(out / "slices" / "train" / "labels" / f"case0005_slice{z:03d}.png"))
        assert labels[row, column] == label, voxel
        assert labels.max() <= 8

    # the slices are what evaluate_volumes.py makes of the same NIfTI pair (same window, same orientation)
    slices, _, _, _ = example("evaluate_volumes").load_volume_case(
        raw / "RawData/Training/img/img0031.nii.gz", raw / "RawData/Training/label/label0031.nii.gz", None, (-125, 275)
    )[:4]
    for z in range(SHAPE[2]):
        png = np.asarray(PIL.Image.open(out / "slices" / "train" / "images" / f"case0031_slice{z:03d}.png"))
        assert np.array_equal(png, np.rint(np.asarray(slices[z]) * 255).astype(np.uint8))

    # test volumes: the CT as released (same bytes, same affine), labels mapped to 9 classes with the same affine
    images, labels = out / "volumes" / "images", out / "volumes" / "labels"
    assert (
        sorted(p.name for p in images.iterdir())
        == sorted(p.name for p in labels.iterdir())
        == [f"case{c:04d}.nii.gz" for c in sorted(TEST_CASES)]
    )
    source = raw / "RawData" / "Training"
    assert (images / "case0001.nii.gz").read_bytes() == (source / "img" / "img0001.nii.gz").read_bytes()
    mapped, original = nib.load(labels / "case0001.nii.gz"), nib.load(source / "label" / "label0001.nii.gz")
    assert np.allclose(mapped.affine, original.affine) and mapped.shape == SHAPE
    assert mapped.get_data_dtype() == np.uint8
    mapped_array = np.asarray(mapped.dataobj)
    for voxel, label in EXPECTED_CLASS.items():
        assert mapped_array[voxel] == label
    lookup = np.array([0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0])
    assert np.array_equal(mapped_array, lookup[np.asarray(original.dataobj)])


def test_synapse_raw_refusals_and_command_line(tmp_path):
    raw = make_btcv(tmp_path / "Abdomen", skip=(38,))
    error = synapse().PreparationError
    with pytest.raises(error, match=r"missing in .*img0038.nii.gz \+ label0038.nii.gz"):
        synapse().prepare(raw, tmp_path / "out")
    root = tmp_path / "Synapse"
    make_transunet_synapse(root)
    script = str(EXAMPLES / "prepare_synapse.py")
    done = subprocess.run(
        [sys.executable, script, "--input", str(root), "--output", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "36 training slices (18 cases), 36 test slices and 12 test volumes" in done.stdout
    (tmp_path / "empty").mkdir()
    refused = subprocess.run(
        [sys.executable, script, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "prepare_synapse.py: error: no Synapse layout recognised" in refused.stderr


# ----------------------------------------------------------------------------------------------------------------------
# The prepared folders feed the training and evaluation scripts
# ----------------------------------------------------------------------------------------------------------------------


def test_segmentation_script_trains_on_prepared_isic(tmp_path):
    source = tmp_path / "downloads"
    make_official_isic(source, "isic17", counts=(6, 3, 0))
    isic().prepare(source, tmp_path / "isic17", "isic17", size=32)
    out = tmp_path / "run"
    results = example("run_semantic_segmentation").main(
        [
            "--data_dir", str(tmp_path / "isic17"), "--config_overrides", TINY_VMUNET, "--recipe", "isic",
            "--image_size", "32", "--max_train_samples", "2", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--num_overlays", "0", "--do_train", "--do_eval", *common_args(out, str(tmp_path / "cache")),
        ]
    )  # fmt: skip
    assert results["num_train_examples"] == 2 and results["num_eval_examples"] == 3  # all of test/
    all_results = json.loads((out / "all_results.json").read_text())
    assert 0.0 <= all_results["eval_dsc"] <= 1.0 and np.isfinite(all_results["train_loss"])
    card = (out / "README.md").read_text()
    assert "'test' split" in card


def test_synapse_slices_and_volumes_feed_training_and_evaluation(tmp_path):
    root = tmp_path / "Synapse"
    make_transunet_synapse(root)
    synapse().prepare(root, tmp_path / "prepared")
    prepared = tmp_path / "prepared"
    out = tmp_path / "run"
    example("run_semantic_segmentation").main(
        [
            "--data_dir", str(prepared / "slices"), "--config_overrides", TINY_VMUNET, "--recipe", "synapse",
            "--id2label", str(prepared / "slices" / "id2label.json"), "--image_size", "32", "--max_train_samples", "2",
            "--max_eval_samples", "3", "--max_steps", "1", "--per_device_train_batch_size", "2", "--num_overlays", "0",
            "--do_train", "--do_eval", *common_args(out, str(tmp_path / "cache")),
        ]
    )  # fmt: skip
    all_results = json.loads((out / "all_results.json").read_text())
    assert all(
        f"eval_dice_{organ.replace(' ', '_')}" in all_results
        for organ in SYNAPSE_LABELS.values()
        if organ != "background"
    )
    assert json.loads((out / "config.json").read_text())["id2label"] == {str(k): v for k, v in SYNAPSE_LABELS.items()}

    volumes = sorted(str(p) for p in (prepared / "volumes").glob("*.npz"))[:2]
    results = example("evaluate_volumes").main(
        ["--model_name_or_path", str(out), "--images", *volumes, "--output_file", str(tmp_path / "eval.json")]
    )
    assert [case["slices"] for case in results["cases"]] == [3, 3]
    assert results["cases"][0]["hd95_units"] == "voxels" and len(results["class_names"]) == 8


def test_evaluate_volumes_reads_prepared_btcv_nifti(tmp_path):
    raw = make_btcv(tmp_path / "Abdomen")
    synapse().prepare(raw, tmp_path / "prepared")
    torch.manual_seed(0)
    config = VMUNetConfig.from_preset("vmunet-synapse", depths=[1, 1, 1, 1], depths_decoder=[1, 1, 1, 1], dims=16)
    model = VMUNetForSegmentation(config)
    model.save_pretrained(tmp_path / "model")
    processor = VMUNetImageProcessor(num_channels=1, normalization_mode="standard", mask_mode="index",
                                     size={"height": 32, "width": 32})  # fmt: skip
    processor.save_pretrained(tmp_path / "model")
    volumes = tmp_path / "prepared" / "volumes"
    images = sorted(str(p) for p in (volumes / "images").iterdir())[:2]
    labels = sorted(str(p) for p in (volumes / "labels").iterdir())[:2]
    results = example("evaluate_volumes").main(
        ["--model_name_or_path", str(tmp_path / "model"), "--images", *images, "--labels", *labels,
         "--output_file", str(tmp_path / "eval.json")]
    )  # fmt: skip
    (case, _) = results["cases"]
    assert case["slices"] == SHAPE[2] and case["slice_size"] == [SHAPE[1], SHAPE[0]]
    assert case["spacing"] == pytest.approx([2.5, 0.8, 0.8]) and case["hd95_units"] == "mm"

    # the slices written for a test case reach the model as the evaluation's own float slices do
    slices, _, _, _ = example("evaluate_volumes").load_volume_case(images[0], labels[0], None, (-125, 275))[:4]
    png = np.asarray(PIL.Image.open(tmp_path / "prepared" / "slices" / "test" / "images" / "case0001_slice001.png"))
    from_png = processor(png, return_tensors="pt")["pixel_values"]
    from_volume = processor(slices[1], return_tensors="pt")["pixel_values"]
    # 8-bit storage rounds by at most 0.5/255, and PIL's resize of a uint8 image rounds its result once more
    assert torch.allclose(from_png, from_volume, atol=1.0 / 255 + 1e-6)

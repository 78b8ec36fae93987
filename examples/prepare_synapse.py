"""Prepare the Synapse multi-organ CT data (BTCV abdomen, TransUNet's 8-organ protocol) for
`run_semantic_segmentation.py` (2-D slices) and `evaluate_volumes.py` (test volumes).

Input (``--input``), recognised by its file and folder names:

- TransUNet's preprocessed release (the one VM-UNet trains on): ``train_npz/caseXXXX_sliceYYY.npz`` (``image``
  H x W in [0, 1], ``label`` 0-8), ``test_vol_h5/caseXXXX.npy.h5`` (``image`` D x H x W in [0, 1], ``label``) and
  the case lists ``lists/lists_Synapse/{train.txt,test_vol.txt}`` (also ``lists/list_Synapse``, VM-UNet's spelling,
  or ``--lists_dir``; the lists are in TransUNet's repository, not in the data archive). Without lists, every file of
  the two folders is used. Reading ``.h5`` needs h5py (``pip install h5py``).
- the raw BTCV "Abdomen" release: ``RawData/Training/img/imgXXXX.nii.gz`` and ``RawData/Training/label/
  labelXXXX.nii.gz`` (``--input`` may be ``Abdomen``, ``RawData`` or ``RawData/Training``), CT in HU with 13 organ
  labels. TransUNet's preprocessing is applied: HU clipped to [-125, 275] and scaled to [0, 1]; the 13 labels mapped
  to the 8 organs (BTCV 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 6 liver, 7 stomach, 8 aorta,
  11 pancreas become 1-8; 5 esophagus, 9 inferior vena cava, 10 portal and splenic vein, 12/13 adrenal glands become
  background); TransUNet's split of 18 training and 12 test cases (all 30 must be there). Axial slices are taken
  exactly as `evaluate_volumes.py` reads NIfTI volumes (RAS; anterior at the top, patient right on the left), so
  that the training slices and the evaluated volumes agree.

Output (``--output``):

- ``slices/train/`` (training cases) and ``slices/test/`` (test cases), each with ``images/<case>_sliceYYY.png``
  (8-bit gray, ``round(255 * value)``), ``labels/<case>_sliceYYY.png`` (class ids 0-8) and ``metadata.csv``
  (``file_name``, ``label_file_name``, ``case``, ``slice_index``, ``organs_present``): the imagefolder that
  `run_semantic_segmentation.py` reads with ``--data_dir OUTPUT/slices`` (``test/`` becomes its evaluation split,
  per-slice Dice; the paper's numbers come from the volumes below).
- ``volumes/``: the test volumes for `evaluate_volumes.py`. From TransUNet's release ``<case>.npz`` (``image``
  D x H x W float32 in [0, 1], ``label`` uint8; HD95 in voxels, TransUNet's convention). From raw BTCV
  ``images/<case>.nii.gz`` (the CT as released, in HU, with its affine; `evaluate_volumes.py` windows it) and
  ``labels/<case>.nii.gz`` (the 9-class labels with the label file's affine and orientation).
- ``slices/id2label.json`` (background + 8 organs, for ``--id2label``) and ``preparation.json``.

The result depends only on the input: a second run with ``--overwrite`` writes the same data. A non-empty
``--output`` is refused without ``--overwrite``.

    python examples/prepare_synapse.py --input downloads/Synapse --output data/synapse
    python examples/run_semantic_segmentation.py --data_dir data/synapse/slices --recipe synapse ...
    python examples/evaluate_volumes.py --images data/synapse/volumes/*.npz --hd95_in_voxels ...
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prepare_utils import PreparationError, SplitWriter, prepare_output_dir, run_cli, script_parser, write_manifest


ORGANS = ("spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")
ID2LABEL = {0: "background", **{i + 1: organ for i, organ in enumerate(ORGANS)}}
# TransUNet's split of the 30 labelled BTCV cases (lists/lists_Synapse in its repository).
TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)
# BTCV label -> Synapse class; every other BTCV label (5, 9, 10, 12, 13) becomes background.
BTCV_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
BTCV_LABELS = 13
HU_WINDOW = (-125.0, 275.0)
LIST_FOLDERS = ("lists/lists_Synapse", "lists/list_Synapse", "lists_Synapse", "list_Synapse", ".")
BTCV_FOLDERS = (".", "Training", "RawData/Training", "Abdomen/RawData/Training")
OUTPUTS = ("slices", "volumes")


def case_name(number):
    return f"case{number:04d}"


def btcv_lookup():
    """Array mapping BTCV labels 0..13 to Synapse classes 0..8."""
    table = np.zeros(BTCV_LABELS + 1, dtype=np.uint8)
    for btcv, synapse in BTCV_TO_SYNAPSE.items():
        table[btcv] = synapse
    return table


def require_h5py():
    try:
        import h5py
    except ImportError:
        raise PreparationError(
            "reading TransUNet's test_vol_h5/*.npy.h5 volumes needs h5py: pip install h5py (or pip install "
            "'hf-medmamba[train]')"
        ) from None
    return h5py


def expected_layouts():
    return (
        "either TransUNet's release (train_npz/*.npz and test_vol_h5/*.npy.h5, with lists/lists_Synapse/train.txt "
        "and test_vol.txt) or the raw BTCV release (RawData/Training/img/imgXXXX.nii.gz and "
        "RawData/Training/label/labelXXXX.nii.gz)"
    )


def find_layout(root, lists_dir=None):
    """('transunet', {train_npz, test_vol_h5, lists}) or ('btcv', {img, label}); an error naming what was expected."""
    root = Path(root)
    if not root.is_dir():
        raise PreparationError(f"--input {root} is not a folder")
    for base in (root, root / "Synapse"):
        present = [name for name in ("train_npz", "test_vol_h5") if (base / name).is_dir()]
        if present:
            if len(present) < 2:
                missing = {"train_npz", "test_vol_h5"} - set(present)
                raise PreparationError(f"{base} has {present[0]}/ but not {missing.pop()}/: both are needed")
            folders = [Path(lists_dir)] if lists_dir else [base / name for name in LIST_FOLDERS]
            lists = next((f for f in folders if (f / "train.txt").is_file() and (f / "test_vol.txt").is_file()), None)
            if lists_dir and lists is None:
                raise PreparationError(f"--lists_dir {lists_dir} has no train.txt and test_vol.txt")
            return "transunet", {"train_npz": base / "train_npz", "test_vol_h5": base / "test_vol_h5", "lists": lists}
    for sub in BTCV_FOLDERS:
        base = root / sub
        if (base / "img").is_dir() and (base / "label").is_dir():
            return "btcv", {"img": base / "img", "label": base / "label"}
    found = sorted(p.name for p in root.iterdir())[:8]
    raise PreparationError(f"no Synapse layout recognised in {root}: expected {expected_layouts()}. Found: {found}")


def read_list(path):
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def case_of(name, where):
    match = re.match(r"^case(\d{4})", name)
    if match is None:
        raise PreparationError(f"{where}: {name!r} is not named caseXXXX...")
    return int(match.group(1))


def transunet_files(folders):
    """([(slice name, npz path)], [(case name, h5 path)]) from the lists, else from the folders' contents."""
    train_dir, test_dir, lists = folders["train_npz"], folders["test_vol_h5"], folders["lists"]
    if lists is not None:
        slices = [(name, train_dir / f"{name}.npz") for name in read_list(lists / "train.txt")]
        volumes = [(name, test_dir / f"{name}.npy.h5") for name in read_list(lists / "test_vol.txt")]
        missing = [str(path) for _, path in slices + volumes if not path.is_file()]
        if missing:
            raise PreparationError(f"{len(missing)} file(s) named in {lists} are missing, e.g. {missing[:3]}")
    else:
        slices = [(path.stem, path) for path in sorted(train_dir.glob("*.npz"))]
        volumes = [(path.name.removesuffix(".npy.h5"), path) for path in sorted(test_dir.glob("*.npy.h5"))]
    if not slices or not volumes:
        raise PreparationError(f"no {'train_npz/*.npz' if not slices else 'test_vol_h5/*.npy.h5'} files found")
    overlap = {case_of(n, "train_npz") for n, _ in slices} & {case_of(n, "test_vol_h5") for n, _ in volumes}
    if overlap:
        raise PreparationError(f"cases {sorted(overlap)} are both training and test cases")
    return slices, volumes


def checked(image, label, where, ndim):
    """(image float32, label uint8) after checking shapes, the [0, 1] range and the class ids 0-8."""
    image, label = np.asarray(image, dtype=np.float32), np.asarray(label)
    if image.ndim != ndim or image.shape != label.shape:
        raise PreparationError(
            f"{where}: expected image and label of the same {ndim}-D shape, got {image.shape} and {label.shape}"
        )
    if image.size and (image.min() < -1e-3 or image.max() > 1 + 1e-3):
        raise PreparationError(
            f"{where}: image values span {image.min():g}..{image.max():g}, expected [0, 1] "
            "(TransUNet's preprocessing); raw HU volumes go through the BTCV layout instead"
        )
    rounded = np.rint(label)
    if np.any(rounded != label) or rounded.min() < 0 or rounded.max() > len(ORGANS):
        raise PreparationError(
            f"{where}: labels must be the class ids 0-{len(ORGANS)}, got values {np.unique(label)[:12].tolist()}"
        )
    return np.clip(image, 0.0, 1.0), rounded.astype(np.uint8)


def to_uint8(image):
    """[0, 1] -> 0..255 (rounded), the 8-bit PNG the segmentation script reads."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def add_slice(writer, name, case, index, image, label):
    present = [ORGANS[k - 1].replace(" ", "_") for k in np.unique(label) if k > 0]
    writer.add(name, to_uint8(image), label, case=case, slice_index=index, organs_present=" ".join(present))


def prepare_transunet(folders, output_dir):
    """Slices and .npz test volumes from TransUNet's release; returns the split summary."""
    slices, volumes = transunet_files(folders)
    h5py = require_h5py()
    train = SplitWriter(output_dir / "slices" / "train", "label", ("case", "slice_index", "organs_present"))
    for name, path in slices:
        with np.load(path) as data:
            if "image" not in data or "label" not in data:
                raise PreparationError(f"{path} has keys {sorted(data)}, expected 'image' and 'label'")
            image, label = checked(data["image"], data["label"], path, 2)
        index = re.search(r"slice(\d+)$", name)
        add_slice(train, name, case_name(case_of(name, "train_npz")), int(index.group(1)) if index else 0, image, label)
    test = SplitWriter(output_dir / "slices" / "test", "label", ("case", "slice_index", "organs_present"))
    (output_dir / "volumes").mkdir()
    for name, path in volumes:
        with h5py.File(path, "r") as data:
            if "image" not in data or "label" not in data:
                raise PreparationError(f"{path} has keys {sorted(data)}, expected 'image' and 'label'")
            image, label = checked(data["image"][:], data["label"][:], path, 3)
        np.savez_compressed(output_dir / "volumes" / f"{name}.npz", image=image, label=label)
        for index, (image_slice, label_slice) in enumerate(zip(image, label)):
            add_slice(test, f"{name}_slice{index:03d}", name, index, image_slice, label_slice)
    train_cases = sorted({case_of(name, "train_npz") for name, _ in slices})
    test_cases = sorted(case_of(name, "test_vol_h5") for name, _ in volumes)
    return {
        "train_slices": train.close(),
        "test_slices": test.close(),
        "train_cases": [case_name(c) for c in train_cases],
        "test_cases": [case_name(c) for c in test_cases],
        "split_is_transunet": (train_cases, test_cases) == (sorted(TRAIN_CASES), sorted(TEST_CASES)),
        "case_lists": str(folders["lists"]) if folders["lists"] else "none: all files of train_npz/ and test_vol_h5/",
        "volumes": "volumes/<case>.npz (image in [0, 1], label 0-8; no voxel spacing: HD95 in voxels)",
    }


def btcv_pairs(folders):
    """{case number: (image path, label path)} of the 30 labelled BTCV cases, or an error naming the missing ones."""
    pairs = {}
    for number in sorted(TRAIN_CASES + TEST_CASES):
        image = folders["img"] / f"img{number:04d}.nii.gz"
        label = folders["label"] / f"label{number:04d}.nii.gz"
        if image.is_file() and label.is_file():
            pairs[number] = (image, label)
    missing = sorted(set(TRAIN_CASES + TEST_CASES) - set(pairs))
    if missing:
        raise PreparationError(
            f"TransUNet's split needs the 30 labelled BTCV cases; missing in {folders['img']} / {folders['label']}: "
            f"{', '.join(f'img{n:04d}.nii.gz + label{n:04d}.nii.gz' for n in missing[:4])}"
            f"{f' and {len(missing) - 4} more' if len(missing) > 4 else ''}"
        )
    return pairs


def prepare_btcv(folders, output_dir):
    """Slices and NIfTI test volumes from the raw BTCV release; returns the split summary."""
    import nibabel as nib
    from evaluate_volumes import load_volume_case  # the evaluation's own reading: same window, same orientation

    lookup = btcv_lookup()
    writers = {
        split: SplitWriter(output_dir / "slices" / split, "label", ("case", "slice_index", "organs_present"))
        for split in ("train", "test")
    }
    for folder in ("images", "labels"):
        (output_dir / "volumes" / folder).mkdir(parents=True)
    for number, (image_path, label_path) in btcv_pairs(folders).items():
        name = case_name(number)
        slices, labels = load_volume_case(image_path, label_path, None, HU_WINDOW)[:2]
        slices = np.stack([np.asarray(frame, dtype=np.float32) for frame in slices])
        if labels.min() < 0 or labels.max() > BTCV_LABELS:
            raise PreparationError(f"{label_path}: labels span {labels.min()}..{labels.max()}, BTCV has 0-13")
        labels = lookup[labels]
        split = "train" if number in TRAIN_CASES else "test"
        for index, (image_slice, label_slice) in enumerate(zip(slices, labels)):
            add_slice(writers[split], f"{name}_slice{index:03d}", name, index, image_slice, label_slice)
        if split == "test":
            shutil.copyfile(image_path, output_dir / "volumes" / "images" / f"{name}.nii.gz")
            source = nib.load(label_path)
            mapped = lookup[np.rint(np.asarray(source.dataobj)).astype(np.int64)]
            header = source.header.copy()
            header.set_data_dtype(np.uint8)
            nib.save(
                nib.Nifti1Image(mapped, source.affine, header), output_dir / "volumes" / "labels" / f"{name}.nii.gz"
            )
    return {
        "train_slices": writers["train"].close(),
        "test_slices": writers["test"].close(),
        "train_cases": [case_name(c) for c in sorted(TRAIN_CASES)],
        "test_cases": [case_name(c) for c in sorted(TEST_CASES)],
        "split_is_transunet": True,
        "hu_window": list(HU_WINDOW),
        "label_mapping": {str(k): v for k, v in BTCV_TO_SYNAPSE.items()},
        "volumes": "volumes/images/<case>.nii.gz (CT as released, HU) + volumes/labels/<case>.nii.gz (0-8)",
    }


def prepare(input_dir, output_dir, lists_dir=None, overwrite=False):
    """Prepare Synapse from ``input_dir`` (TransUNet's release or raw BTCV) into ``output_dir``; returns the
    manifest."""
    layout, folders = find_layout(input_dir, lists_dir)
    if layout == "transunet":
        require_h5py()  # before anything is written
    output_dir = prepare_output_dir(output_dir, OUTPUTS, overwrite)
    summary = prepare_transunet(folders, output_dir) if layout == "transunet" else prepare_btcv(folders, output_dir)
    labels = output_dir / "slices" / "id2label.json"
    labels.write_text(json.dumps({str(k): v for k, v in ID2LABEL.items()}, indent=1) + "\n")
    manifest = {
        "dataset": "synapse",
        "input": str(Path(input_dir).resolve()),
        "input_layout": "TransUNet release" if layout == "transunet" else "raw BTCV Abdomen",
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        **summary,
    }
    write_manifest(output_dir, manifest)
    print(
        f"{summary['train_slices']} training slices ({len(summary['train_cases'])} cases), {summary['test_slices']} "
        f"test slices and {len(summary['test_cases'])} test volumes in {output_dir}"
    )
    return manifest


def build_parser():
    parser = script_parser(__doc__, "TransUNet's Synapse folder, or the raw BTCV Abdomen folder")
    parser.add_argument("--lists_dir", default=None, help="folder with TransUNet's train.txt and test_vol.txt")
    return parser


def main(argv=None):
    return prepare(**vars(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(run_cli(main))

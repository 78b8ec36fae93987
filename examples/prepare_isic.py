"""Prepare ISIC 2017 or ISIC 2018 lesion segmentation (Task 1) for `run_semantic_segmentation.py`.

Input (``--input``), recognised by its file and folder names:

- the official challenge downloads, as zip files or extracted folders side by side in one folder:
  ISIC 2017: ``ISIC-2017_Training_Data``, ``ISIC-2017_Training_Part1_GroundTruth``, ``ISIC-2017_Validation_Data``,
  ``ISIC-2017_Validation_Part1_GroundTruth``, ``ISIC-2017_Test_v2_Data``, ``ISIC-2017_Test_v2_Part1_GroundTruth``;
  ISIC 2018: ``ISIC2018_Task1-2_Training_Input``, ``ISIC2018_Task1_Training_GroundTruth``, and the same with
  ``Validation`` and ``Test``. Images are ``ISIC_<id>.jpg``, masks ``ISIC_<id>_segmentation.png``; anything else in
  them (superpixel maps, metadata CSVs, licence files) is ignored.
- VM-UNet's pre-split archives, extracted: ``train/images``, ``train/masks``, ``val/images``, ``val/masks``. Images
  and masks are paired by name (``<id>.png`` with ``<id>.png`` or ``<id>_segmentation.png``).

Splits (``--split``):

- ``paper``: VM-UNet's protocol. Upstream trains on 70 % of the labelled images and reports on the other 30 % (its
  ``val`` folder), and it also selects its checkpoint (lowest loss) on that same 30 %: there is no separate test set.
  The paper-comparable recipe does the same; this split is therefore written as ``train/`` and ``test/`` only, and
  `run_semantic_segmentation.py` evaluates (and, with ``--load_best_model_at_end``, selects) on ``test/``. From
  VM-UNet's archive, its ``train``/``val`` are kept exactly. From the official downloads, the training and
  validation parts are pooled and split 7:3 (``--train_fraction``) with ``--seed``: the same protocol, but not the
  authors' image lists, which were only published as their archive.
- ``heldout``: a validation split carved from the labelled non-test images (``--val_fraction`` of the official
  training + validation parts, or of the archive's ``train``) with ``--seed``, and a test split kept apart (the
  official test part, or the archive's ``val``). Select on ``validation/``, report on ``test/``.

Output (``--output``): ``train/``, ``validation/`` (heldout only) and ``test/``, each with ``images/<id>.png`` (RGB),
``masks/<id>.png`` (8-bit, {0, 255}) and ``metadata.csv`` (``file_name``, ``mask_file_name``, ``isic_id``,
``source``, ``orig_width``, ``orig_height``, ``lesion_fraction``), plus ``preparation.json``. ``--size 256`` resizes
as the paper does (images bilinear, masks nearest, both to 256 x 256; PIL's bilinear filter antialiases when it
shrinks); ``--size 0`` keeps the original sizes. Masks are binarised (>= 128, or > 0 for {0, 1} masks) to {0, 255}.

The result depends only on the input files and the arguments (seeded, rows sorted), and a second run with
``--overwrite`` rewrites identical files. A non-empty ``--output`` is refused without ``--overwrite``.

    python examples/prepare_isic.py --dataset isic17 --input downloads/isic2017 --output data/isic17 --split paper
    python examples/run_semantic_segmentation.py --data_dir data/isic17 --recipe isic ...
"""

import functools
import os
import random
import re
import sys
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prepare_utils import PreparationError, SplitWriter, prepare_output_dir, run_cli, script_parser, write_manifest


# Official parts of each challenge: split -> (images, masks).
OFFICIAL_PARTS = {
    "isic17": {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "validation": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    },
    "isic18": {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "validation": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    },
}
NAMES = {"isic17": "ISIC 2017", "isic18": "ISIC 2018"}
VMUNET_FOLDERS = ("train/images", "train/masks", "val/images", "val/masks")
OFFICIAL_IMAGE = re.compile(r"^(ISIC_\d+)\.(jpe?g|png)$", re.IGNORECASE)
OFFICIAL_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = ("_segmentation", "_mask", "_Segmentation")
OUTPUTS = ("train", "validation", "test")


@dataclass(frozen=True)
class InputFile:
    """One input file: a path on disk, or a member of a zip archive (``archive`` set)."""

    name: str
    archive: str | None = None

    def load(self, mode):
        """The image, decoded and converted to ``mode``."""
        if self.archive is None:
            with PIL.Image.open(self.name) as image:
                return image.convert(mode)
        with open_zip(self.archive, os.getpid()).open(self.name) as handle, PIL.Image.open(handle) as image:
            return image.convert(mode)

    def __str__(self):
        return f"{self.archive}:{self.name}" if self.archive else self.name


@functools.lru_cache(maxsize=8)
def open_zip(path, pid):
    """An open `ZipFile`, one per archive and process (``pid`` keeps forked workers off their parent's handle)."""
    return zipfile.ZipFile(path)


def list_part(root, part):
    """[(file name, InputFile)] of the folder ``root/part`` (searched recursively) or else of the zip
    ``root/part.zip``; None when neither exists."""
    folder, archive = root / part, root / f"{part}.zip"
    if folder.is_dir():
        paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and "__MACOSX" not in p.parts]
        return [(p.name, InputFile(str(p))) for p in paths if not p.name.startswith(".")]
    if archive.is_file():
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.namelist() if not m.endswith("/") and "__MACOSX" not in m]
        return [(Path(m).name, InputFile(m, str(archive))) for m in sorted(members) if not Path(m).name.startswith(".")]
    return None


def index(files, key, where):
    """{id: file} of the ``files`` for which ``key(name)`` gives an id (None skips the file); an id seen twice is an
    error."""
    found = {}
    for name, entry in files:
        found_key = key(name)
        if found_key is None:
            continue
        if found_key in found:
            raise PreparationError(f"{where} holds two files for {found_key}: {found[found_key]} and {entry}")
        found[found_key] = entry
    return found


def official_key(pattern):
    """The ISIC id of a name that matches ``pattern``, else None."""
    return lambda name: match.group(1) if (match := pattern.match(name)) else None


def stem_key(name):
    """The id of an image file name: no suffix, no ``_segmentation``/``_mask`` ending; None for other files."""
    stem, suffix = os.path.splitext(name)
    if suffix.lower() not in IMAGE_SUFFIXES:
        return None
    for ending in MASK_SUFFIXES:
        stem = stem.removesuffix(ending)
    return stem


def pair_up(images, masks, where):
    """Sorted [(id, image, mask, source)], ``source`` being the image folder's name; or an error naming the unpaired
    files."""
    if not images:
        raise PreparationError(f"no images found in {where[0]}")
    lonely_images, lonely_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        raise PreparationError(
            f"images and masks do not pair up: {len(lonely_images)} image(s) of {where[0]} have no mask in "
            f"{where[1]} (e.g. {lonely_images[:3]}), {len(lonely_masks)} mask(s) have no image (e.g. "
            f"{lonely_masks[:3]})"
        )
    return [(key, images[key], masks[key], where[0]) for key in sorted(images)]


def official_layout(root, dataset):
    """{official split: pairs or None (part absent)}, or None when the training images are not there."""
    parts = OFFICIAL_PARTS[dataset]
    if list_part(root, parts["train"][0]) is None:
        return None
    groups = {}
    for split, (image_part, mask_part) in parts.items():
        images, masks = list_part(root, image_part), list_part(root, mask_part)
        if images is None and masks is None:
            groups[split] = None
            continue
        if images is None or masks is None:
            missing = image_part if images is None else mask_part
            raise PreparationError(f"{root} has {image_part if masks is None else mask_part} but not {missing}")
        images = index(images, official_key(OFFICIAL_IMAGE), image_part)
        masks = index(masks, official_key(OFFICIAL_MASK), mask_part)
        groups[split] = pair_up(images, masks, (image_part, mask_part))
    return groups


def vmunet_layout(root):
    """{'train': pairs, 'val': pairs} of VM-UNet's pre-split layout, or None when it is not there."""
    if not all((root / folder).is_dir() for folder in VMUNET_FOLDERS):
        return None
    groups = {}
    for split in ("train", "val"):
        images = index(list_part(root / split, "images"), stem_key, f"{split}/images")
        masks = index(list_part(root / split, "masks"), stem_key, f"{split}/masks")
        groups[split] = pair_up(images, masks, (f"{split}/images", f"{split}/masks"))
    return groups


def expected_layouts(dataset):
    parts = [name for pair in OFFICIAL_PARTS[dataset].values() for name in pair]
    return (
        f"either the official {NAMES[dataset]} parts as folders or .zip files ({', '.join(parts)}; the training "
        f"parts at least), or VM-UNet's pre-split folders {', '.join(VMUNET_FOLDERS)}"
    )


def find_layout(root, dataset):
    """('official' | 'vmunet', groups) of ``root``, or an error that says what was expected and what was found."""
    root = Path(root)
    if not root.is_dir():
        raise PreparationError(f"--input {root} is not a folder")
    vmunet = vmunet_layout(root)
    if vmunet is not None:
        return "vmunet", vmunet
    official = official_layout(root, dataset)
    if official is not None:
        return "official", official
    hints = []
    for other in OFFICIAL_PARTS:
        if other != dataset and list_part(root, OFFICIAL_PARTS[other]["train"][0]) is not None:
            hints.append(f"it holds the {NAMES[other]} parts: did you mean --dataset {other}?")
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if vmunet_layout(sub) is not None or list_part(sub, OFFICIAL_PARTS[dataset]["train"][0]) is not None:
            hints.append(f"its subfolder {sub.name} holds a known layout: pass --input {sub}")
    found = sorted(p.name for p in root.iterdir())[:8]
    raise PreparationError(
        f"no {NAMES[dataset]} layout recognised in {root}: expected {expected_layouts(dataset)}. Found: {found}"
        + "".join(f"; {hint}" for hint in hints)
    )


def shuffled(pairs, seed):
    """The pairs in a seeded random order that depends only on their ids."""
    pairs = sorted(pairs, key=lambda pair: pair[0])
    random.Random(seed).shuffle(pairs)
    return pairs


def fraction_count(total, fraction, what):
    """round(fraction * total), kept within 1..total-1."""
    if not 0.0 < fraction < 1.0:
        raise PreparationError(f"{what} must lie strictly between 0 and 1, got {fraction}")
    if total < 2:
        raise PreparationError(f"{total} labelled image(s) cannot be split in two")
    return min(max(round(fraction * total), 1), total - 1)


def assign_splits(layout, groups, split, seed, train_fraction, val_fraction):
    """{output split: [(id, image, mask, source)]} of the ``split`` protocol (see the module docstring)."""
    if layout == "vmunet":
        pool, test = groups["train"], groups["val"]
    elif split == "paper":
        if groups["validation"] is None:
            raise PreparationError(
                "--split paper pools the official training and validation parts (as the paper's 7:3 split did); "
                "the validation images and masks are missing"
            )
        pool, test = groups["train"] + groups["validation"], None
    else:
        if groups["test"] is None:
            raise PreparationError(
                "--split heldout keeps the official test part apart; its images and masks are missing"
            )
        pool, test = groups["train"] + (groups["validation"] or []), groups["test"]
    repeated = sorted(key for key, n in Counter(pair[0] for pair in pool + (test or [])).items() if n > 1)
    if repeated:
        raise PreparationError(f"the same image id appears in several input parts: {repeated[:5]}")
    if split == "paper":
        if test is not None:  # VM-UNet's archive: the authors' own 7:3 split, kept as it is
            return {"train": pool, "test": test}
        count = fraction_count(len(pool), train_fraction, "--train_fraction")
        order = shuffled(pool, seed)
        return {"train": order[:count], "test": order[count:]}
    count = fraction_count(len(pool), val_fraction, "--val_fraction")
    order = shuffled(pool, seed)
    return {"train": order[count:], "validation": order[:count], "test": test}


def binarize(mask):
    """{0, 255} uint8 from an 8-bit mask: >= 128 is lesion, or > 0 when the mask only holds {0, 1}."""
    array = np.asarray(mask)
    foreground = array > 0 if array.max(initial=0) <= 1 else array >= 128
    return foreground.astype(np.uint8) * 255


def convert_pair(image_file, mask_file, image_path, mask_path, size):
    """Write one image/mask pair; returns its metadata columns."""
    image, mask = image_file.load("RGB"), mask_file.load("L")
    if image.size != mask.size:
        raise PreparationError(
            f"{image_file} is {image.size[0]}x{image.size[1]} but its mask {mask_file} is {mask.size[0]}x{mask.size[1]}"
        )
    width, height = image.size
    mask = PIL.Image.fromarray(binarize(mask))
    if size:
        image = image.resize((size, size), PIL.Image.BILINEAR)
        mask = mask.resize((size, size), PIL.Image.NEAREST)
    image.save(image_path, format="PNG")
    mask.save(mask_path, format="PNG")
    fraction = float(np.mean(np.asarray(mask) > 0))
    return {"orig_width": width, "orig_height": height, "lesion_fraction": f"{fraction:.5f}"}


def run_jobs(jobs, num_workers):
    """`convert_pair` over the jobs, in ``num_workers`` processes; results in job order."""
    if num_workers <= 1:
        return [convert_pair(*job) for job in jobs]
    with ProcessPoolExecutor(num_workers) as pool:
        return list(pool.map(convert_pair, *zip(*jobs), chunksize=16))


SPLIT_NOTES = {
    "paper": "VM-UNet protocol: checkpoint selection and the reported numbers both use test/ (upstream's 'val').",
    "heldout": "select on validation/ (carved from the labelled non-test images), report on test/ (kept apart).",
}


def prepare(
    input_dir,
    output_dir,
    dataset,
    split="paper",
    size=256,
    seed=42,
    train_fraction=0.7,
    val_fraction=0.2,
    num_workers=1,
    overwrite=False,
):
    """Prepare ``dataset`` ('isic17' or 'isic18') from ``input_dir`` into ``output_dir``; returns the manifest."""
    if dataset not in OFFICIAL_PARTS:
        raise PreparationError(f"--dataset must be one of {sorted(OFFICIAL_PARTS)}, got {dataset!r}")
    if split not in ("paper", "heldout"):
        raise PreparationError(f"--split must be 'paper' or 'heldout', got {split!r}")
    if size < 0:
        raise PreparationError(f"--size must be 0 (keep the original size) or a positive size, got {size}")
    layout, groups = find_layout(input_dir, dataset)
    splits = assign_splits(layout, groups, split, seed, train_fraction, val_fraction)
    output_dir = prepare_output_dir(output_dir, OUTPUTS, overwrite)

    counts = {}
    for name, pairs in splits.items():
        columns = ("isic_id", "source", "orig_width", "orig_height", "lesion_fraction")
        writer = SplitWriter(output_dir / name, "mask", columns)
        jobs = [(image, mask, writer.image_path(key), writer.mask_path(key), size) for key, image, mask, _ in pairs]
        for (key, _, _, source), extra in zip(pairs, run_jobs(jobs, num_workers)):
            writer.add(key, isic_id=key, source=source, **extra)
        counts[name] = writer.close()
        print(f"{name}: {counts[name]} image/mask pairs in {output_dir / name}")

    manifest = {
        "dataset": dataset,
        "input": str(Path(input_dir).resolve()),
        "input_layout": "VM-UNet pre-split archive" if layout == "vmunet" else f"official {NAMES[dataset]} parts",
        "split": split,
        "seed": seed,
        "size": size,
        "counts": counts,
        "train_fraction": train_fraction if split == "paper" and layout == "official" else None,
        "val_fraction": val_fraction if split == "heldout" else None,
        "note": SPLIT_NOTES[split],
    }
    write_manifest(output_dir, manifest)
    return manifest


def build_parser():
    parser = script_parser(__doc__, "folder with the official parts or VM-UNet's train/ and val/")
    parser.add_argument("--dataset", required=True, choices=sorted(OFFICIAL_PARTS), help="which challenge")
    parser.add_argument(
        "--split",
        default="paper",
        choices=("paper", "heldout"),
        help="paper: VM-UNet's 7:3 protocol, written as train/ + test/; upstream selects its checkpoint on the same "
        "split it reports, and the paper-comparable recipe does the same. heldout: train/ + validation/ (drawn with "
        "--seed from the labelled non-test images) + test/ (kept apart: the official test part, or the archive's "
        "val/). Default: paper",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        help="resize to SIZE x SIZE (bilinear image, nearest mask) as the paper; 0 "
        "keeps the original sizes. Default: 256",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the random splits (default 42, upstream's)")
    parser.add_argument(
        "--train_fraction", type=float, default=0.7, help="paper split from the official parts: train share (0.7)"
    )
    parser.add_argument("--val_fraction", type=float, default=0.2, help="heldout split: validation share (0.2)")
    parser.add_argument("--num_workers", type=int, default=1, help="processes decoding and writing images")
    return parser


def main(argv=None):
    return prepare(**vars(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(run_cli(main))

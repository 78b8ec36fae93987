"""MedMNIST v2 ``.npz`` files as a `datasets.DatasetDict` with the official train / validation / test split.

A MedMNIST file holds ``{train,val,test}_images`` (uint8, N x H x W for the gray sets, N x H x W x 3 for the colour
ones) and ``{train,val,test}_labels`` (N x 1 class indices). It does not store class names: they come from
``id2label`` when given, else from `MEDMNIST_LABELS` (MedMNIST's ``INFO`` for the sets used here), else the class
indices as strings. Nothing is downloaded.
"""

import logging
import re
from pathlib import Path

import numpy as np


logger = logging.getLogger(__name__)

# Class names from MedMNIST's INFO (medmnist 3.0.2, `medmnist/info.py`).
MEDMNIST_LABELS = {
    "breastmnist": {0: "malignant", 1: "normal, benign"},
    "pneumoniamnist": {0: "normal", 1: "pneumonia"},
}
# DatasetDict split -> MedMNIST key prefix
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def medmnist_name(path):
    """The MedMNIST set a file holds, from its name: ``breastmnist_224.npz`` -> ``breastmnist``."""
    return re.sub(r"_(64|128|224)$", "", Path(path).stem.lower())


def _read_arrays(path):
    keys = [f"{prefix}_{kind}" for prefix in SPLITS.values() for kind in ("images", "labels")]
    with np.load(path) as data:  # allow_pickle stays False: a MedMNIST file holds plain arrays
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise ValueError(
                f"{path} is not a MedMNIST .npz file: it lacks {missing} (it has {sorted(data.files)}). A MedMNIST "
                "file has train/val/test images and labels."
            )
        return {split: (data[f"{prefix}_images"], data[f"{prefix}_labels"]) for split, prefix in SPLITS.items()}


def _class_indices(labels, path, split):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(
            f"{path}: {split} labels have shape {labels.shape}; only single-label sets (N x 1) are supported, not "
            "multi-label ones such as ChestMNIST."
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: {split} labels must be class indices >= 0, got {labels.min()}")
    return labels.astype(np.int64)


def medmnist_class_names(path, num_classes, id2label=None):
    """Class names in index order: ``id2label`` ({index: name}), else MedMNIST's for a known set, else "0", "1", ..."""
    names = id2label or MEDMNIST_LABELS.get(medmnist_name(path))
    if names is None:
        logger.warning(f"No class names known for {Path(path).name}: using the class indices; give --id2label.")
        return [str(i) for i in range(num_classes)]
    names = {int(k): str(v) for k, v in names.items()}
    if sorted(names) != list(range(len(names))) or len(names) < num_classes:
        raise ValueError(
            f"class names for {Path(path).name} must cover the indices 0..{num_classes - 1} without gaps, got "
            f"{sorted(names)}"
        )
    return [names[i] for i in range(len(names))]


def load_medmnist(path, id2label=None):
    """A `DatasetDict` with ``train``, ``validation`` (MedMNIST's ``val``) and ``test`` splits of ``image`` (8-bit
    gray or RGB images) and ``label`` (a `ClassLabel` with the class names of `medmnist_class_names`)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--medmnist_file {path} does not exist")
    arrays = _read_arrays(path)
    labels = {split: _class_indices(y, path, split) for split, (_, y) in arrays.items()}
    num_classes = int(max(y.max() for y in labels.values() if y.size)) + 1
    names = medmnist_class_names(path, num_classes, id2label)
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    splits = {}
    for split, (images, _) in arrays.items():
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels[split]):
            raise ValueError(
                f"{path}: {split} images must be uint8 N x H x W (x 3) with one label each, got {images.dtype} "
                f"{images.shape} for {len(labels[split])} labels"
            )
        splits[split] = Dataset.from_dict({"image": list(images), "label": labels[split].tolist()}, features=features)
    return DatasetDict(splits)

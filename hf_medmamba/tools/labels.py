"""Class names of converted models: the bundled ImageNet-1k names, an image-folder dataset's sub-folders, a JSON file
or a list, resolved from the conversion scripts' label options."""

import json
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ConversionError


IMAGENET_ID2LABEL_FILE = Path(__file__).with_name("data") / "imagenet1k_id2label.json"


def imagenet_id2label():
    """The 1000 ImageNet-1k class names (package data; source and licence in ``data/README.md``)."""
    with open(IMAGENET_ID2LABEL_FILE, encoding="utf-8") as f:
        return {int(k): v for k, v in json.load(f).items()}


def imagefolder_classes(directory):
    """Class names of an image-folder dataset: its sub-folder names, sorted (as torchvision's ``ImageFolder``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"--imagefolder {directory} is not a directory.")
    names = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not names:
        raise ConversionError(f"--imagefolder {directory} has no sub-folders (one per class is expected).")
    return names


def read_id2label(path):
    """Class names from a JSON file: a list of names, an ``{"0": name, ...}`` map, or a config with ``id2label``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, Mapping) and "id2label" in data:
        data = data["id2label"]
    if isinstance(data, list):
        return dict(enumerate(str(name) for name in data))
    if isinstance(data, Mapping):
        try:
            id2label = {int(k): str(v) for k, v in data.items()}
        except ValueError:
            raise ConversionError(f"{path}: id2label keys must be class indices, got {list(data)[:5]}.") from None
        if sorted(id2label) != list(range(len(id2label))):
            raise ConversionError(f"{path}: class indices must be 0..{len(id2label) - 1}, got {sorted(id2label)}.")
        return id2label
    raise ConversionError(f"{path}: expected a list of class names or an id2label object, got {type(data).__name__}.")


def resolve_id2label(labels=None, labels_json=None, imagefolder=None):
    """id2label from at most one source: a list of names, a JSON file, or an image-folder directory; else None."""
    given = [s for s in (labels, labels_json, imagefolder) if s is not None]
    if len(given) > 1:
        raise ConversionError("give the class names once: --labels, --labels-json or --imagefolder, not several.")
    if labels is not None:
        names = [n.strip() for n in labels.split(",")] if isinstance(labels, str) else list(labels)
        if len(set(names)) != len(names) or not all(names):
            raise ConversionError(f"class names must be non-empty and distinct, got {names}.")
        return dict(enumerate(names))
    if labels_json is not None:
        return read_id2label(labels_json)
    if imagefolder is not None:
        return dict(enumerate(imagefolder_classes(imagefolder)))
    return None

"""The example scripts' data: the arguments that name it, loading it with `datasets` (a Hub or local dataset, an
imagefolder with split folders, one imagefolder per split, or a MedMNIST ``.npz`` file), the train / evaluation /
test roles of its splits, a dataset's ``id2label.json``, and the conversion of images and masks to the 8-bit arrays
that albumentations and the image processors take, with augmentation that depends only on (seed, epoch, example).
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

from hf_medmamba.image_processing_common import apply_window


logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "valid", "val", "test")


@dataclass
class ImageDataArguments:
    """Where the data comes from and how much of it to use (the fields both scripts share)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A dataset on the Hub, or a local dataset folder, loaded with load_dataset."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_dir: str | None = field(
        default=None, metadata={"help": "A local imagefolder whose sub-folders are the splits (train/, test/, ...)."}
    )
    train_dir: str | None = field(default=None, metadata={"help": "A folder containing the training data."})
    validation_dir: str | None = field(default=None, metadata={"help": "A folder containing the validation data."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    eval_split_name: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation, valid, val or test, if present)."}
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no eval split."}
    )
    holdout_validation: bool = field(
        default=False,
        metadata={
            "help": "Evaluate (and choose checkpoints) on a held-out --train_val_split of train even when the dataset "
            "has a validation or test split: the test split is then only reported (--do_predict), never used to choose."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval examples."})
    max_predict_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many test examples (--do_predict)."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Model input size in pixels (overrides the image processor's size)."}
    )


def _is_local(name):
    return name is not None and Path(name).exists()


def load_image_datasets(data_args, cache_dir=None, token=None, id2label=None):
    """A `DatasetDict` from exactly one of ``--dataset_name`` (Hub id or local dataset), ``--data_dir`` (imagefolder
    with split sub-folders), ``--train_dir`` / ``--validation_dir`` (one imagefolder per split) or ``--medmnist_file``
    (classification only; ``id2label`` names its classes). Imagefolders take their labels from the sub-folder names
    or a ``metadata.csv``."""
    from datasets import load_dataset

    sources = {
        "--dataset_name": data_args.dataset_name,
        "--data_dir": data_args.data_dir,
        "--train_dir/--validation_dir": data_args.train_dir or data_args.validation_dir,
    }
    if hasattr(data_args, "medmnist_file"):
        sources["--medmnist_file"] = data_args.medmnist_file
    given = [flag for flag, value in sources.items() if value]
    if len(given) != 1:
        raise ValueError(f"Give exactly one data source of {', '.join(sources)}; got {', '.join(given) or 'none'}.")
    if data_args.dataset_name:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir, token=token)
    if given == ["--medmnist_file"]:
        from medmnist_npz import load_medmnist

        return load_medmnist(data_args.medmnist_file, id2label)
    folders = {"--data_dir": data_args.data_dir, "--train_dir": data_args.train_dir}
    folders["--validation_dir"] = data_args.validation_dir
    for flag, folder in folders.items():
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a directory")
    if data_args.data_dir:
        return load_dataset("imagefolder", data_dir=data_args.data_dir, cache_dir=cache_dir)
    data_files = {}
    if data_args.train_dir:
        data_files["train"] = str(Path(data_args.train_dir) / "**")
    if data_args.validation_dir:
        data_files["validation"] = str(Path(data_args.validation_dir) / "**")
    return load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)


@dataclass
class DataSplits:
    """The splits in their roles: train on ``train``, evaluate (and choose checkpoints) on ``eval``, report on
    ``test`` (``--do_predict``)."""

    train: object
    eval: object
    eval_name: str
    test: object = None
    test_name: str | None = None


def split_roles(dataset, data_args, seed):
    """The named eval split, else the first of validation/valid/val/test, else (or with ``--holdout_validation``) a
    held-out part of train; the test split is ``test`` when it exists and is not the eval split (MedMNIST: train /
    validation / test)."""
    train = dataset.get("train")
    names = [data_args.eval_split_name] if data_args.eval_split_name else list(EVAL_SPLITS)
    if getattr(data_args, "holdout_validation", False):
        if data_args.eval_split_name:
            raise ValueError("--holdout_validation evaluates on a part of train: do not also give --eval_split_name")
        names = []
    eval_name = next((name for name in names if name in dataset), None)
    if eval_name is None and data_args.eval_split_name:
        raise ValueError(f"no split {data_args.eval_split_name!r} in the dataset (splits: {list(dataset)})")
    if eval_name is not None:
        evaluation = dataset[eval_name]
    elif train is None:
        raise ValueError(f"the dataset has no 'train' and no evaluation split (splits: {list(dataset)})")
    else:
        held_out = train.train_test_split(test_size=data_args.train_val_split, seed=seed)
        train, evaluation = held_out["train"], held_out["test"]
        eval_name = f"held-out {data_args.train_val_split:g} of train (seed {seed})"
    test_name = "test" if "test" in dataset and eval_name != "test" else None
    return DataSplits(train, evaluation, eval_name, dataset[test_name] if test_name else None, test_name)


def check_splits(splits, training_args):
    """Clear errors for a requested step without its data."""
    if training_args.do_train and splits.train is None:
        raise ValueError("--do_train needs a 'train' split (give --train_dir, or a dataset with a train split)")
    if training_args.do_predict and splits.test is None:
        raise ValueError(
            f"--do_predict reports on a 'test' split distinct from the evaluation split ({splits.eval_name!r}); "
            "this dataset has none (a MedMNIST file or a dataset with validation and test splits has one)"
        )


def prepare_splits(splits, data_args, seed, transform, train_transform):
    """Seeded subsets of at most ``--max_train_samples`` / ``--max_eval_samples`` / ``--max_predict_samples``
    examples, an ``example_index`` on the training examples and the on-the-fly transforms (``train_transform`` for
    train, ``transform`` for the others), in place. Returns the example counts."""
    splits.train = limit(splits.train, data_args.max_train_samples, seed)
    splits.eval = limit(splits.eval, data_args.max_eval_samples, seed).with_transform(transform)
    splits.test = limit(splits.test, data_args.max_predict_samples, seed)
    sizes = {"num_train_examples": 0, "num_eval_examples": len(splits.eval)}
    if splits.train is not None:
        splits.train = with_example_index(splits.train).with_transform(train_transform)
        sizes["num_train_examples"] = len(splits.train)
    if splits.test is not None:
        splits.test = splits.test.with_transform(transform)
        sizes["num_test_examples"] = len(splits.test)
    return sizes


def limit(dataset, max_samples, seed):
    """At most ``max_samples`` examples, a seeded random subset (all of them when None)."""
    if dataset is None or max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def with_example_index(dataset):
    """Add an ``example_index`` column (0..N-1): it seeds the augmentation and records which process saw what."""
    return dataset.add_column("example_index", list(range(len(dataset))))


def dataset_id2label(data_args, cache_dir=None, token=None):
    """The ``id2label.json`` beside the data, as {index: name}: in a local ``--dataset_name`` or ``--data_dir``
    folder, or at the top of the Hub dataset repository ``--dataset_name`` (transformers' convention). None when
    there is none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    name = data_args.dataset_name
    folder = name if _is_local(name) else data_args.data_dir
    if folder:
        path = Path(folder) / "id2label.json"
        if not path.is_file():
            return None
    elif name:
        try:
            path = hf_hub_download(name, "id2label.json", repo_type="dataset", cache_dir=cache_dir, token=token)
        except EntryNotFoundError as err:  # missing in the repository, or offline and not cached
            logger.info(f"No id2label.json for the dataset {name} ({type(err).__name__})")
            return None
    else:
        return None
    labels = json.loads(Path(path).read_text())
    logger.info(f"Class names from the dataset's id2label.json ({len(labels)} classes)")
    return {int(k): str(v) for k, v in labels.items()}


def to_uint8_array(image, window=None):
    """An 8-bit (H, W) or (H, W, 3) array from a PIL image (or an array), the input albumentations works on. Data that
    is not 8-bit is windowed to ``window`` (the image processor's, as it would) when one is given."""
    if isinstance(image, PIL.Image.Image):
        if image.mode in ("L", "RGB"):
            return np.array(image)
        if image.mode in ("1", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr"):
            return np.array(image.convert("RGB" if image.mode not in ("1", "LA") else "L"))
        image = np.array(image)  # 16-bit or float: the processor's rules bring it to 8 bits
    array = np.asarray(image)
    if array.dtype != np.uint8 and window is not None:
        return np.rint(apply_window(array, window) * 255.0).astype(np.uint8)
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        scale = 255.0 if low >= 0.0 and high <= 1.0 and array.dtype.kind == "f" else 255.0 / max(high - low, 1e-12)
        offset = 0.0 if scale == 255.0 else low
        array = np.clip(np.rint((array - offset) * scale), 0, 255).astype(np.uint8)
    return array


def mask_array(mask):
    """A 2-D integer array from a mask image or array (uint8 when it fits, as albumentations and cv2 want)."""
    array = np.array(mask) if isinstance(mask, PIL.Image.Image) else np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {array.shape}")
    if array.dtype == np.bool_ or (array.size and array.min() >= 0 and array.max() <= 255):
        return array.astype(np.uint8)
    return array.astype(np.int32)


class SeededAugmentation:
    """An albumentations pipeline whose randomness is a function of (seed, epoch, example index) only.

    So the augmentation of an example is the same whatever the number of processes or data-loader workers, and a run
    resumed from a checkpoint sees exactly the augmentations of an uninterrupted one (the Trainer's RNG state is not
    involved). `AugmentationEpochCallback` keeps ``epoch`` current.
    """

    def __init__(self, compose, seed):
        self.compose, self.seed, self.epoch = compose, int(seed), 0

    def __call__(self, index, **data):
        state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0]
        self.compose.set_random_seed(int(state))
        return self.compose(**data)

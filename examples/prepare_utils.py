"""What `prepare_isic.py` and `prepare_synapse.py` share: their command line (shared arguments, errors printed as
``<script>: error: ...``), the guarded output folder, and the imagefolder split writer (PNG pairs plus the
``metadata.csv`` that `run_semantic_segmentation.py` reads).

Nothing here downloads anything; only numpy and Pillow are needed.
"""

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL.Image


MANIFEST = "preparation.json"


class PreparationError(Exception):
    """Input that cannot be prepared (unknown layout, missing files, a folder in the way): the message says why."""


def run_cli(main, argv=None):
    """Run ``main(argv)``; a `PreparationError` becomes ``<script>: error: <message>`` on stderr and exit status 2."""
    try:
        main(argv)
    except PreparationError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def script_parser(doc, input_help):
    """An `ArgumentParser` with the scripts' shared ``--input``, ``--output`` and ``--overwrite`` (as ``input_dir``,
    ``output_dir``, ``overwrite``); its description is the first paragraph of the docstring ``doc``, its epilog the
    rest, as written."""
    first, rest = doc.split("\n\n", 1)
    parser = argparse.ArgumentParser(
        description=first, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", dest="input_dir", required=True, help=input_help)
    parser.add_argument("--output", dest="output_dir", required=True, help="folder to write (empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier preparation in --output")
    return parser


def prepare_output_dir(output_dir, entries, overwrite):
    """Make ``output_dir`` ready for the ``entries`` (top-level names) a script writes.

    An empty or missing folder is used as it is. A non-empty one is refused unless ``overwrite``; then only the
    ``entries`` and the manifest are removed, and anything else in it (not written by these scripts) stops the run
    rather than being deleted or mixed into the dataset.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise PreparationError(f"--output {output_dir} is a file, not a folder")
    present = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    if present and not overwrite:
        raise PreparationError(
            f"--output {output_dir} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''}); "
            "pass --overwrite to replace what an earlier preparation wrote there, or choose an empty folder"
        )
    ours = {*entries, MANIFEST}
    foreign = [name for name in present if name not in ours]
    if foreign:
        raise PreparationError(
            f"--output {output_dir} holds {', '.join(foreign[:5])}, which this script did not write; --overwrite only "
            f"replaces {', '.join(sorted(ours))}. Move those away or choose an empty folder"
        )
    for name in present:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def save_png(array, path):
    """Write a 2-D (gray or label) or H x W x 3 uint8 array as PNG."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"PNG output must be uint8, got {array.dtype}")
    PIL.Image.fromarray(array).save(path, format="PNG")


class SplitWriter:
    """One imagefolder split: ``images/<name>.png``, ``<mask_folder>/<name>.png`` and ``metadata.csv`` whose
    ``file_name`` and ``<mask column>_file_name`` columns give the pair (``mask`` or ``label``), then ``extra``
    columns. Rows are written sorted by file name, so that the file does not depend on the order of processing."""

    def __init__(self, folder, mask_column, extra_columns=()):
        self.folder, self.mask_column = Path(folder), mask_column
        self.mask_folder = f"{mask_column}s"
        self.columns = ["file_name", f"{mask_column}_file_name", *extra_columns]
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        (self.folder / self.mask_folder).mkdir(parents=True, exist_ok=True)
        self.rows = []

    def image_path(self, name):
        return self.folder / "images" / f"{name}.png"

    def mask_path(self, name):
        return self.folder / self.mask_folder / f"{name}.png"

    def add(self, name, image=None, mask=None, **extra):
        """Record the pair ``name`` (writing the arrays when given) with its ``extra`` column values."""
        if image is not None:
            save_png(image, self.image_path(name))
        if mask is not None:
            save_png(mask, self.mask_path(name))
        row = {"file_name": f"images/{name}.png", f"{self.mask_column}_file_name": f"{self.mask_folder}/{name}.png"}
        self.rows.append({**row, **extra})

    def close(self):
        """Write ``metadata.csv``; returns the number of pairs."""
        with open(self.folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(self.rows, key=lambda row: row["file_name"]))
        return len(self.rows)


def write_manifest(output_dir, info):
    """``preparation.json``: what was prepared from what, with which settings, and the split sizes."""
    (Path(output_dir) / MANIFEST).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

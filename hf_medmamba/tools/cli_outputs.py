"""Outputs of ``hf-medmamba predict``: files staged in a hidden folder and moved into place together, label colours,
mask PNGs, overlays and the colour legend (label volumes are written by `medical_io.write_label_volume`)."""

import colorsys
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageFont


# Background first (never drawn), then 20 distinct colours (Trubetskoy's list); more labels get generated hues.
PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]


def label_colors(num_labels):
    """(num_labels, 3) uint8 colours: black background, the palette, then golden-ratio hues."""
    colors = list(PALETTE[:num_labels])
    for i in range(len(colors), num_labels):
        hue = (i * 0.618033988749895) % 1.0
        colors.append(tuple(int(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95)))
    return np.array(colors, dtype=np.uint8)


def overlay(image, labels, colors, alpha):
    """An (H, W, 3) uint8 image with every non-background pixel blended with its label's colour."""
    out = image.astype(np.float32)
    foreground = labels > 0
    out[foreground] = (1 - alpha) * out[foreground] + alpha * colors[labels[foreground]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mask_image(labels, num_labels):
    """Mask PNG: 0/255 for binary models, label values otherwise (8-bit, or 16-bit past 255 labels)."""
    if num_labels == 2:
        return PIL.Image.fromarray((labels > 0).astype(np.uint8) * 255)
    return PIL.Image.fromarray(labels.astype(np.uint8 if num_labels <= 256 else np.uint16))


def legend_image(entries):
    """A colour legend: a swatch and "value: name" per label."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
    texts = [f"{e['value']}: {e['label']}" + (" (not coloured)" if e["value"] == 0 else "") for e in entries]
    row, swatch = 24, 16
    width = 12 + swatch + 8 + int(max(measure.textlength(t, font=font) for t in texts)) + 12
    image = PIL.Image.new("RGB", (width, 8 + row * len(entries)), "white")
    draw = ImageDraw.Draw(image)
    for i, (entry, text) in enumerate(zip(entries, texts)):
        top = 8 + i * row
        draw.rectangle([12, top, 12 + swatch, top + swatch], fill=tuple(entry["color"]), outline="black")
        draw.text((12 + swatch + 8, top + 2), text, fill="black", font=font)
    return image


class StagedOutputs:
    """Output files written under a hidden staging folder inside the output folder and moved into place (atomic
    ``os.replace``) by `commit`."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".hf-medmamba-", dir=self.root))
        self.files = []

    def path(self, relative):
        """Staging path of an output (relative to the output folder); the output is committed with the others."""
        relative = Path(relative)
        path = self.staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(relative)
        return path

    def discard(self, relatives):
        for relative in relatives:
            (self.staging / relative).unlink(missing_ok=True)
            if relative in self.files:
                self.files.remove(relative)

    def commit(self):
        for relative in self.files:
            final = self.root / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / relative, final)

    def write_last(self, relative, text):
        """Write one file and move it into place now (the summary, after every other output)."""
        path = self.staging / relative
        path.write_text(text, encoding="utf-8")
        os.replace(path, self.root / relative)

    def cleanup(self):
        shutil.rmtree(self.staging, ignore_errors=True)

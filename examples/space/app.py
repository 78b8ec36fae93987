"""hf-medmamba in a web page: a MedMamba classifier and a VM-UNet segmenter on one medical image, as a Gradio app in the
layout of a Hugging Face Space.

Upload a PNG or JPEG image, a DICOM file, several DICOM files of one series, or a NIfTI volume (a slider picks the
slice). The page shows the classifier's class probabilities and the segmenter's mask overlaid on the image, with the
area of each class. Medical files are read by `hf_medmamba.tools.medical_io`, the reader of ``hf-medmamba predict``:
volumes in RAS orientation with axial slices in radiological display orientation, each model's own intensity window
(``preprocessor_config.json``), else the DICOM file's VOI LUT / window, else the data's range.

    python examples/space/app.py                       # the folders examples/demo.py trains (outputs/demo/...)
    python examples/space/app.py --classifier me/medmamba-busi --segmenter ./my-vmunet --port 7860

Models are any MedMamba / VMamba classifier or VM-UNet segmenter folder or Hub id (also from the page, or from the
``HF_MEDMAMBA_CLASSIFIER`` / ``HF_MEDMAMBA_SEGMENTER`` environment variables); one of the two may be left empty.
Nothing is fetched at run time except a Hub id you give: Gradio's analytics and version check are off and the theme
uses the system's fonts. Errors are reported in the page. A research demo, not a medical device.
"""

import os


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before Gradio loads: no telemetry, no version check

import argparse
import colorsys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch
from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # see hf_medmamba/__init__.py

import hf_medmamba  # noqa: F401  (registers the models with the Auto classes)
from hf_medmamba.tools import medical_io


# where examples/demo.py writes its models by default (relative to the folder it runs in, as there)
DEFAULT_CLASSIFIER = os.environ.get("HF_MEDMAMBA_CLASSIFIER", "outputs/demo/medmamba-busi")
DEFAULT_SEGMENTER = os.environ.get("HF_MEDMAMBA_SEGMENTER", "outputs/demo/vmunet-busi")
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# system fonts only: Gradio's default theme would serve (or, for Google fonts, fetch) web fonts
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
TASKS = {"classifier": AutoModelForImageClassification, "segmenter": AutoModelForSemanticSegmentation}


class UserError(Exception):
    """A problem to show in the page as it is (bad file, wrong model)."""


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def load_model(name, task):
    """(model, processor) of a folder or Hub id for ``task`` ("classifier" or "segmenter"), loaded once."""
    auto = TASKS[task]
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1  # a Hub id is "owner/name"
    if looks_local and not Path(name).expanduser().is_dir():
        raise UserError(f"the {task} folder {name} does not exist (examples/demo.py writes outputs/demo/...).")
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as err:
        raise UserError(f"cannot load the {task} {name}: {err}") from None
    if type(config) not in auto._model_mapping:
        raise UserError(f"{name} (model type {config.model_type!r}) is not an image {task}.")
    model = auto.from_pretrained(name, config=config).eval()
    return model, AutoImageProcessor.from_pretrained(name)


def class_probabilities(model, processor, frame):
    """{label: probability} of one frame (sigmoid per class for multi-label models, else softmax)."""
    pixel_values = medical_io.model_inputs(processor, [frame])["pixel_values"].to(model.device, model.dtype)
    with torch.inference_mode():
        logits = model(pixel_values=pixel_values).logits[0].float()
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"
    probabilities = logits.sigmoid() if multi_label else logits.softmax(-1)
    return {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """An uploaded input: a 2-D image, the frames of a DICOM file, or a volume; ``count`` frames or slices."""

    name: str
    count: int
    image: PIL.Image.Image | None = None
    dicom: medical_io.DicomFrames | None = None
    volume: medical_io.MedicalVolume | None = None
    spacing: tuple | None = None  # (row, column) pixel size in mm

    def frame(self, index, processor):
        """Frame ``index`` as ``processor``'s model gets it (windowed for that model)."""
        if self.image is not None:
            return medical_io.image_frames([self.image], processor)[0][0]
        if self.dicom is not None:
            frames = np.stack(self.dicom.frames)
            display = None if self.dicom.display is None else np.stack(self.dicom.display)
            values, _ = medical_io.unit_intensities(frames, processor, None, display, self.dicom.is_8bit)
            return values[index]
        return medical_io.volume_frame(self.volume, index, processor)[0]


def read_case(paths):
    """A `Case` from the uploaded file paths."""
    paths = [Path(p) for p in (paths or [])]
    if not paths:
        raise UserError("upload an image (PNG, JPEG), a DICOM file or series, or a NIfTI volume.")
    dicom = [p for p in paths if is_dicom(p)]
    if len(paths) > 1:
        if len(dicom) != len(paths):
            raise UserError("several files make one DICOM series; upload other files one at a time.")
        volume = medical_io.read_volume(paths)
        return Case(f"DICOM series ({len(paths)} files)", volume.data.shape[2], volume=volume, spacing=axial(volume))
    path = paths[0]
    if medical_io.is_nifti(path):
        volume = medical_io.read_volume(path)
        return Case(path.name, volume.data.shape[2], volume=volume, spacing=axial(volume))
    if dicom:
        try:
            frames = medical_io.read_dicom_frames(path)
        except medical_io.ImageInputError:
            raise
        except Exception as err:
            raise UserError(f"{path.name} is not a readable DICOM file: {err}") from None
        return Case(path.name, len(frames.frames), dicom=frames, spacing=dicom_spacing(path))
    if path.suffix.lower() in IMAGE_TYPES:
        try:
            with PIL.Image.open(path) as image:
                image.load()
                return Case(path.name, 1, image=image.copy())
        except (OSError, ValueError) as err:
            raise UserError(f"{path.name} is not a readable image: {err}") from None
    raise UserError(f"{path.name}: unsupported file type (PNG, JPEG, TIFF, DICOM, NIfTI .nii / .nii.gz).")


def is_dicom(path):
    """A ``.dcm`` / ``.dicom`` name, or the ``DICM`` marker of the DICOM file format."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as file:
        return file.read(132)[128:] == b"DICM"


def axial(volume):
    """(row, column) pixel size of the axial display slices: y and x."""
    return volume.spacing[1], volume.spacing[0]


def dicom_spacing(path):
    import pydicom

    spacing = pydicom.dcmread(str(path), stop_before_pixels=True).get("PixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing else None


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


def colour(label):
    if label <= len(COLOURS):
        return np.array(COLOURS[label - 1], dtype=np.float32)
    return np.array(colorsys.hsv_to_rgb((label * 0.618) % 1.0, 0.75, 0.95), dtype=np.float32) * 255


def display_rgb(frame):
    """An 8-bit RGB view of a model frame (an 8-bit PIL image, or an array in [0, 1])."""
    if isinstance(frame, PIL.Image.Image):
        return np.asarray(frame.convert("RGB"))
    array = np.clip(np.rint(np.asarray(frame, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]


def overlay(image, labels, alpha=0.45):
    out = image.astype(np.float32)
    for label in np.unique(labels[labels > 0]):
        where = labels == label
        out[where] = (1 - alpha) * out[where] + alpha * colour(int(label))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def area_table(labels, id2label, spacing):
    """Markdown: pixels (and mm² when the pixel size is known) of each class present, background left out."""
    rows = ["| class | pixels | share of the image |" + (" area (mm²) |" if spacing else ""), "|---|---|---|"]
    rows[1] += "---|" if spacing else ""
    for label in range(1, len(id2label)):
        count = int((labels == label).sum())
        row = f"| {id2label[label]} | {count} | {100 * count / labels.size:.1f} % |"
        rows.append(row + (f" {count * spacing[0] * spacing[1]:.1f} |" if spacing else ""))
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------------------------------


def analyse(case, index, classifier, segmenter):
    """(probabilities, overlay, markdown) of frame ``index`` of ``case``; problems become a message, not a traceback."""
    try:
        if case is None:
            raise UserError("upload an image (PNG, JPEG), a DICOM file or series, or a NIfTI volume.")
        if not (classifier or "").strip() and not (segmenter or "").strip():
            raise UserError("give a classifier, a segmenter or both (a model folder or a Hub id).")
        index = min(max(int(index or 1), 1), case.count) - 1  # the slider counts from 1
        where = case.name if case.count == 1 else f"{case.name}, slice {index + 1} of {case.count}"
        probabilities, picture, notes = None, None, [f"**{where}**"]
        if (classifier or "").strip():
            model, processor = load_model(classifier.strip(), "classifier")
            probabilities = class_probabilities(model, processor, case.frame(index, processor))
            best = max(probabilities, key=probabilities.get)
            notes.append(f"Classifier: **{best}** ({100 * probabilities[best]:.1f} %)")
        if (segmenter or "").strip():
            model, processor = load_model(segmenter.strip(), "segmenter")
            frame = case.frame(index, processor)
            labels = medical_io.label_maps(model, processor, [frame])[0]
            picture = overlay(display_rgb(frame), labels)
            id2label = {int(k): v for k, v in model.config.id2label.items()}
            notes.append("Segmenter, mask area:\n\n" + area_table(labels, id2label, case.spacing))
        else:
            picture = display_rgb(case.frame(index, None))
        return probabilities, picture, "\n\n".join(notes)
    except (UserError, medical_io.ImageInputError, ImportError, ValueError, OSError) as err:
        return None, None, f"**Error:** {err}"
    except Exception as err:  # anything else is still shown in the page, named, never as a traceback
        return None, None, f"**Error ({type(err).__name__}):** {err}"


def upload(paths, classifier, segmenter):
    """Read the upload, reset the slider to the middle slice and analyse it."""
    try:
        case = read_case(paths)
    except Exception as err:
        return None, gr.Slider(visible=False), None, None, f"**Error:** {err}"
    middle = (case.count + 1) // 2
    slider = gr.Slider(minimum=1, maximum=max(case.count, 2), value=middle, step=1, visible=case.count > 1)
    return (case, slider, *analyse(case, middle, classifier, segmenter))


def build(classifier=DEFAULT_CLASSIFIER, segmenter=DEFAULT_SEGMENTER):
    with gr.Blocks(title="hf-medmamba", analytics_enabled=False) as page:
        gr.Markdown(
            "# hf-medmamba: MedMamba and VM-UNet\n"
            "Classify and segment a medical image with Vision-Mamba models. Upload a PNG / JPEG image, a DICOM "
            "file (or every file of one series) or a NIfTI volume. *A research demo, not a medical device.*"
        )
        case = gr.State(None)
        with gr.Row():
            classifier_box = gr.Textbox(value=classifier, label="Classifier (MedMamba folder or Hub id)")
            segmenter_box = gr.Textbox(value=segmenter, label="Segmenter (VM-UNet folder or Hub id)")
        with gr.Row():
            with gr.Column():
                files = gr.File(label="Image, DICOM or NIfTI", file_count="multiple", elem_id="upload")
                slider = gr.Slider(1, 2, value=1, step=1, label="Slice", visible=False, elem_id="slice")
                run = gr.Button("Analyse", variant="primary")
            with gr.Column():
                probabilities = gr.Label(label="Class probabilities", num_top_classes=5, elem_id="probabilities")
                picture = gr.Image(label="Mask overlay", type="numpy", interactive=False, elem_id="overlay")
                notes = gr.Markdown(elem_id="notes")
        models = [classifier_box, segmenter_box]
        outputs = [probabilities, picture, notes]
        files.upload(upload, [files, *models], [case, slider, *outputs])
        slider.release(analyse, [case, slider, *models], outputs)
        run.click(analyse, [case, slider, *models], outputs)
    return page


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="classifier folder or Hub id ('' for none)")
    parser.add_argument("--segmenter", default=DEFAULT_SEGMENTER, help="segmenter folder or Hub id ('' for none)")
    parser.add_argument("--host", default=None, help="address to listen on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    args = parser.parse_args(argv)
    build(args.classifier, args.segmenter).launch(
        server_name=args.host, server_port=args.port, theme=THEME, ssr_mode=False, footer_links=[], show_error=True
    )


if __name__ == "__main__":
    main()

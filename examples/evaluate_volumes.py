"""Evaluate a segmentation model on 3-D volumes with the Synapse protocol of TransUNet / VM-UNet.

Each volume is segmented slice by slice: every axial slice is resized to the model's input size, segmented, and the
predicted label map is resized back with nearest neighbour (upstream zooms slices to 224 and back). Then, per volume
and per foreground class 1..C-1, Dice and HD95 (`hf_medmamba.tools.metrics.volume_dice_hd95`, Synapse conventions for
empty masks), averaged over volumes with `synapse_summary`, and written to a JSON file.

Inputs: NIfTI pairs (``--images ct.nii.gz --labels seg.nii.gz``; an image may also be a DICOM series folder, with a
NIfTI label volume in its geometry), read by `hf_medmamba.tools.medical_io` (the reader of ``hf-medmamba predict``):
brought to RAS orientation, sliced axially in radiological display orientation (anterior at the top, patient right on
the image left: the orientation of ``examples/data/ct_abdomen_organs/slices``), windowed with ``--window`` or else the
model processor's ``window`` (``preprocessor_config.json``), else TransUNet's [-125, 275] HU, and scaled to [0, 1].
HD95 is in mm from the voxel spacing unless ``--hd95_in_voxels``. Or TransUNet-style ``.npz`` volumes with ``image``
(D x H x W in [0, 1]) and ``label`` keys (HD95 in voxels, as no spacing is stored).

    python examples/evaluate_volumes.py --model_name_or_path outputs/vmunet-synapse \\
        --images examples/data/ct_abdomen_organs/nifti/ct.nii.gz \\
        --labels examples/data/ct_abdomen_organs/nifti/seg_synapse8.nii.gz --output_file outputs/synapse_eval.json

``--save_predictions`` writes each predicted label volume as NIfTI in its input's voxel order and affine.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # 5.17 exports a torchvision stub

import hf_medmamba  # noqa: F401  (registers the models with the Auto classes)
from hf_medmamba.tools import medical_io
from hf_medmamba.tools.metrics import synapse_summary, volume_dice_hd95


SYNAPSE_WINDOW = (-125.0, 275.0)  # TransUNet's Synapse preprocessing, HU


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="A saved segmentation model folder.")
    parser.add_argument(
        "--images", nargs="+", required=True, help="NIfTI image volumes, DICOM series folders, or .npz volumes."
    )
    parser.add_argument("--labels", nargs="*", default=None, help="Label volumes, one per image (not for .npz).")
    parser.add_argument("--output_file", required=True, help="Where to write the JSON results.")
    parser.add_argument(
        "--window",
        nargs=2,
        type=float,
        default=None,
        help="HU window (default: the processor's window, else -125 275).",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="Slices per forward pass.")
    parser.add_argument("--hd95_in_voxels", action="store_true", help="HD95 in voxels (TransUNet) instead of mm.")
    parser.add_argument("--save_predictions", default=None, help="Folder for the predicted volumes (NIfTI).")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available).")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow the folder's custom code.")
    args = parser.parse_args(argv)
    if args.labels is not None and args.labels and len(args.labels) != len(args.images):
        parser.error(f"got {len(args.images)} images but {len(args.labels)} labels")
    return args


def load_volume_case(image_path, label_path, processor, window):
    """(slices D x H x W in [0, 1], labels D x H x W, spacing per slice axis, the image volume, how it was windowed)
    of a NIfTI image (or DICOM series) and its NIfTI labels, through `medical_io` (RAS, axial display slices)."""
    image = medical_io.read_volume(image_path)
    label = medical_io.read_volume(label_path)
    if image.data.shape != label.data.shape or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise ValueError(
            f"{label_path} (shape {label.data.shape}) does not lie on the voxel grid of {image_path} (shape "
            f"{image.data.shape}); give labels in their image's geometry."
        )
    slices, intensity = medical_io.volume_frames(image, processor, axis=2, window=window)
    labels = medical_io.volume_slices(np.rint(label.data).astype(np.int64), axis=2)
    spacing_x, spacing_y, spacing_z = image.spacing
    return slices, labels, (spacing_z, spacing_y, spacing_x), image, intensity


def load_npz_case(path):
    data = np.load(path)
    return data["image"].astype(np.float32), data["label"].astype(np.int64), None, None, None


def input_size(processor):
    """[height, width] the processor resizes slices to."""
    size = dict(getattr(processor, "size", None) or {})
    if size.get("height"):
        return [size["height"], size["width"]]
    return [size.get("shortest_edge")] * 2


def evaluate(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForSemanticSegmentation.from_pretrained(
        args.model_name_or_path, trust_remote_code=args.trust_remote_code
    )
    model.to(device).eval()
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    num_classes = len(id2label)
    class_names = [id2label[k] for k in range(1, num_classes)]

    window = args.window or (None if getattr(processor, "window", None) is not None else SYNAPSE_WINDOW)
    cases, per_case = [], []
    labels = args.labels or [None] * len(args.images)
    for image_path, label_path in zip(args.images, labels):
        start = time.perf_counter()
        if str(image_path).endswith(".npz"):
            slices, target, spacing, volume, intensity = load_npz_case(image_path)
        else:
            if label_path is None:
                raise ValueError(f"{image_path}: NIfTI images need --labels")
            slices, target, spacing, volume, intensity = load_volume_case(image_path, label_path, processor, window)
        if target.min() < 0 or target.max() >= num_classes:
            raise ValueError(f"labels of {image_path} span {target.min()}..{target.max()}, model has {num_classes}")
        prediction = medical_io.segment_frames(model, processor, slices, args.batch_size)
        result = volume_dice_hd95(
            prediction,
            target,
            num_classes,
            spacing=None if args.hd95_in_voxels else spacing,
            empty_convention="synapse",
        )
        per_case.append(result)
        case = {
            "image": str(image_path),
            "label": None if label_path is None else str(label_path),
            "slices": len(slices),
            "slice_size": list(slices.shape[1:]),
            "spacing": spacing,
            "hd95_units": "voxels" if (args.hd95_in_voxels or spacing is None) else "mm",
            "intensity": intensity,
            "dice": dict(zip(class_names, result["dice"])),
            "hd95": dict(zip(class_names, result["hd95"])),
            "mean_dice": float(np.mean(result["dice"])),
            "mean_hd95": float(np.mean(result["hd95"])),
            "seconds": round(time.perf_counter() - start, 2),
        }
        if args.save_predictions and volume is not None:
            name = Path(image_path).name.split(".")[0] + "_pred.nii.gz"
            path = Path(args.save_predictions) / name
            medical_io.write_label_volume(volume, medical_io.stack_slices(prediction, axis=2), path)
            case["prediction"] = str(path)
        cases.append(case)
        print(f"{image_path}: mean Dice {case['mean_dice']:.4f}, mean HD95 {case['mean_hd95']:.2f}")

    summary = synapse_summary(per_case, class_names)
    results = {
        "model": str(args.model_name_or_path),
        "num_classes": num_classes,
        "class_names": class_names,
        "window_hu": list(medical_io.model_window(processor, window)[0]),
        "model_input_size": input_size(processor),
        "protocol": "slice-by-slice, resize to model size and back (nearest); Dice/HD95 per class 1..C-1, Synapse "
        "empty-mask conventions; means over cases, then over classes",
        "cases": cases,
        "summary": summary,
    }
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, allow_nan=True))
    dice, hd95 = summary["mean_dice"], summary["mean_hd95"]
    print(f"{len(cases)} volume(s): mean Dice {dice:.4f}, mean HD95 {hd95 if not math.isnan(hd95) else 'nan'}")
    print(f"Results written to {output}")
    return results


def main(argv=None):
    return evaluate(parse_args(argv))


if __name__ == "__main__":
    main()

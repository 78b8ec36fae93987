"""Evaluate a segmentation model on 3-D volumes with the Synapse protocol of TransUNet / VM-UNet.

Each volume is segmented slice by slice: every axial slice is resized to the model's input size, segmented, and the
predicted label map is resized back with nearest neighbour (upstream zooms slices to 224 and back). Then, per volume
and per foreground class 1..C-1, Dice and HD95 (`hf_medmamba.tools.metrics.volume_dice_hd95`, Synapse conventions for
empty masks), averaged over volumes with `synapse_summary`, and written to a JSON file.

Inputs: NIfTI pairs (``--images ct.nii.gz --labels seg.nii.gz``; the CT is windowed to ``--window`` HU, default
[-125, 275] as TransUNet's preprocessing, and scaled to [0, 1]; HD95 is in mm from the header's voxel spacing unless
``--hd95_in_voxels``), or TransUNet-style ``.npz`` volumes with ``image`` (D x H x W in [0, 1]) and ``label`` keys
(HD95 in voxels, as no spacing is stored).

    python examples/evaluate_volumes.py --model_name_or_path outputs/vmunet-synapse \\
        --images examples/data/ct_abdomen_organs/nifti/ct.nii.gz \\
        --labels examples/data/ct_abdomen_organs/nifti/seg_synapse8.nii.gz --output_file outputs/synapse_eval.json

NIfTI volumes are brought to RAS orientation and their axial slices shown as radiologists view them (anterior at the
top, patient right on the image left), the orientation of ``examples/data/ct_abdomen_organs/slices``.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor  # 5.17 exports a torchvision stub

import hf_medmamba  # noqa: F401  (registers the models with the Auto classes)
from hf_medmamba.tools.metrics import synapse_summary, volume_dice_hd95


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="A saved segmentation model folder.")
    parser.add_argument("--images", nargs="+", required=True, help="NIfTI image volumes, or .npz volumes.")
    parser.add_argument("--labels", nargs="*", default=None, help="Label volumes, one per image (not for .npz).")
    parser.add_argument("--output_file", required=True, help="Where to write the JSON results.")
    parser.add_argument("--window", nargs=2, type=float, default=[-125.0, 275.0], help="HU window of NIfTI images.")
    parser.add_argument("--batch_size", type=int, default=8, help="Slices per forward pass.")
    parser.add_argument("--hd95_in_voxels", action="store_true", help="HD95 in voxels (TransUNet) instead of mm.")
    parser.add_argument("--save_predictions", default=None, help="Folder for the predicted volumes (NIfTI, RAS).")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available).")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow the folder's custom code.")
    args = parser.parse_args(argv)
    if args.labels is not None and args.labels and len(args.labels) != len(args.images):
        parser.error(f"got {len(args.images)} images but {len(args.labels)} labels")
    return args


def load_nifti_case(image_path, label_path, window):
    """(slices D x H x W in [0, 1], labels D x H x W, spacing per axis, RAS affine) of a NIfTI pair."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(image_path))
    label = nib.as_closest_canonical(nib.load(label_path))
    if image.shape[:3] != label.shape[:3]:
        raise ValueError(f"{image_path} has shape {image.shape} but {label_path} has {label.shape}")
    low, high = window
    volume = (np.clip(image.get_fdata(dtype=np.float32), low, high) - low) / (high - low)
    labels = np.rint(np.asarray(label.dataobj)).astype(np.int64)
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    return ras_to_slices(volume), ras_to_slices(labels), (zooms[2], zooms[1], zooms[0]), image.affine


def ras_to_slices(volume):
    """RAS (x, y, z) -> axial slices (z, y, x) with y and x reversed: anterior at the top, patient right on the left."""
    return np.ascontiguousarray(volume.transpose(2, 1, 0)[:, ::-1, ::-1])


def slices_to_ras(slices):
    """The inverse of `ras_to_slices`."""
    return np.ascontiguousarray(slices[:, ::-1, ::-1].transpose(2, 1, 0))


def load_npz_case(path):
    data = np.load(path)
    return data["image"].astype(np.float32), data["label"].astype(np.int64), None, None


def predict_slices(model, processor, slices, batch_size, device):
    """Label maps (D x H x W) of the slices: resized to the model size, segmented, resized back (nearest)."""
    height, width = slices.shape[1:]
    predictions = []
    for start in range(0, len(slices), batch_size):
        inputs = processor(list(slices[start : start + batch_size]), return_tensors="pt")
        with torch.inference_mode():
            logits = model(pixel_values=inputs["pixel_values"].to(device)).logits.float()
        if logits.shape[1] == 1:
            maps = (torch.sigmoid(logits[:, 0]) >= getattr(processor, "threshold", 0.5)).to(torch.int32)
        else:
            maps = logits.argmax(dim=1).to(torch.int32)
        for label_map in maps.cpu().numpy():
            resized = PIL.Image.fromarray(label_map).resize((width, height), PIL.Image.NEAREST)
            predictions.append(np.asarray(resized, dtype=np.int64))
    return np.stack(predictions)


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

    cases, per_case = [], []
    labels = args.labels or [None] * len(args.images)
    for image_path, label_path in zip(args.images, labels):
        start = time.perf_counter()
        if str(image_path).endswith(".npz"):
            slices, target, spacing, affine = load_npz_case(image_path)
        else:
            if label_path is None:
                raise ValueError(f"{image_path}: NIfTI images need --labels")
            slices, target, spacing, affine = load_nifti_case(image_path, label_path, args.window)
        if target.min() < 0 or target.max() >= num_classes:
            raise ValueError(f"labels of {image_path} span {target.min()}..{target.max()}, model has {num_classes}")
        prediction = predict_slices(model, processor, slices, args.batch_size, device)
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
            "dice": dict(zip(class_names, result["dice"])),
            "hd95": dict(zip(class_names, result["hd95"])),
            "mean_dice": float(np.mean(result["dice"])),
            "mean_hd95": float(np.mean(result["hd95"])),
            "seconds": round(time.perf_counter() - start, 2),
        }
        if args.save_predictions and affine is not None:
            import nibabel as nib

            folder = Path(args.save_predictions)
            folder.mkdir(parents=True, exist_ok=True)
            ras = slices_to_ras(prediction).astype(np.uint8)
            path = folder / (Path(image_path).name.split(".")[0] + "_pred.nii.gz")
            nib.save(nib.Nifti1Image(ras, affine), path)
            case["prediction"] = str(path)
        cases.append(case)
        print(f"{image_path}: mean Dice {case['mean_dice']:.4f}, mean HD95 {case['mean_hd95']:.2f}")

    summary = synapse_summary(per_case, class_names)
    results = {
        "model": str(args.model_name_or_path),
        "num_classes": num_classes,
        "class_names": class_names,
        "window_hu": list(args.window),
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

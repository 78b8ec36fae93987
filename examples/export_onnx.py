"""Export a saved MedMamba / VMamba / VM-UNet folder to ONNX and validate the file with onnxruntime on real images.

The model is exported by `hf_medmamba.tools.export.export_onnx` (torch.export, then the dynamo-based ONNX exporter) at a
fixed image size, by default the size of the folder's image processor. The file is then run in onnxruntime (CPU) on
real images, prepared by the folder's image processor exactly as for PyTorch, and compared with the model in PyTorch
eager mode: max |logits difference| <= --atol + --rtol * max |logits| (1e-4 + 1e-4 * max |logits|, the rule that
every cross-backend comparison of this package uses), and the same predicted labels (classifiers) or identical masks
after the processor's post-processing (segmenters). Prints the export time, file size, max difference and agreement;
exits with status 1 when the check fails (2 for bad arguments).

    python examples/export_onnx.py --model outputs/medmamba --output outputs/medmamba.onnx
    python examples/export_onnx.py --model outputs/vmunet --output outputs/vmunet.onnx \\
        --validate-images "examples/data/busi_seg/test/images/*.png"

Without --validate-images the bundled test images are used: examples/data/busi_cls/test for classifiers,
examples/data/busi_seg/test/images for segmenters. Folders are searched recursively.
"""

import argparse
import glob
import sys
import time
from pathlib import Path

import PIL.Image
import torch

from hf_medmamba.tools.cli_inputs import IMAGE_EXTENSIONS, CLIError
from hf_medmamba.tools.cli_model import load_model
from hf_medmamba.tools.export import DEFAULT_OPSET, ExportError, export_onnx, verify_onnx
from hf_medmamba.tools.verification import OUTPUT_ATOL, OUTPUT_RTOL


DATA = Path(__file__).resolve().parent / "data"
DEFAULT_IMAGES = {"classification": DATA / "busi_cls" / "test", "segmentation": DATA / "busi_seg" / "test" / "images"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A saved model folder (config, weights, image processor).")
    parser.add_argument("--output", required=True, help="The .onnx file to write.")
    parser.add_argument(
        "--image-size", type=int, nargs="+", help="Height [width] of the graph's input; default: the processor's size."
    )
    parser.add_argument(
        "--dynamic-batch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="A symbolic batch dimension (default); --no-dynamic-batch fixes it to --batch-size.",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="Images per onnxruntime call when validating.")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= {DEFAULT_OPSET}).")
    parser.add_argument(
        "--validate-images", nargs="+", help="Image files, folders or glob patterns (default: the bundled test set)."
    )
    parser.add_argument("--max-images", type=int, default=32, help="Validate on at most this many images (sorted).")
    parser.add_argument(
        "--atol", type=float, default=OUTPUT_ATOL, help="Absolute part of the allowed |logits(onnx) - logits(torch)|."
    )
    parser.add_argument(
        "--rtol", type=float, default=OUTPUT_RTOL, help="Relative part, times the largest |logits(torch)|."
    )
    parser.add_argument("--threads", type=int, help="Threads of PyTorch and onnxruntime (default: theirs).")
    parser.add_argument("--trust-remote-code", action="store_true", help="Load a model folder with custom code.")
    return parser.parse_args(argv)


def find_images(patterns, max_images):
    """Sorted image files from files, folders (recursive) and glob patterns; at most ``max_images``."""
    found = set()
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = path.rglob("*")
        elif path.is_file():
            matches = [path]
        else:
            matches = map(Path, glob.glob(str(path), recursive=True))
        found.update(p for p in matches if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise CLIError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {' '.join(map(str, patterns))}.")
    return sorted(found)[:max_images]


def load_pixel_values(paths, processor, size):
    """The images as the processor prepares them for the model, resized to ``size``."""
    images = []
    for path in paths:
        with PIL.Image.open(path) as image:
            images.append(image.copy())
    return processor(images, size={"height": size[0], "width": size[1]}, return_tensors="pt")["pixel_values"]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, processor, task = load_model(args.model, trust_remote_code=args.trust_remote_code)
        size = args.image_size or [processor.size["height"], processor.size["width"]]
        if len(size) not in (1, 2):
            raise CLIError(f"--image-size takes a height and an optional width, got {size}.")
        size = (size[0], size[-1])
        paths = find_images([str(p) for p in args.validate_images or [DEFAULT_IMAGES[task]]], args.max_images)
        pixel_values = load_pixel_values(paths, processor, size)

        batch = "dynamic batch" if args.dynamic_batch else f"fixed batch of {args.batch_size}"
        print(f"exporting {type(model).__name__} at {size[0]} x {size[1]}, {batch}, opset {args.opset} ...", flush=True)
        start = time.perf_counter()
        path = export_onnx(
            model, args.output, size, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, opset=args.opset
        )
        seconds = time.perf_counter() - start
        print(f"exported {path} in {seconds:.1f} s, {path.stat().st_size / 2**20:.1f} MiB", flush=True)

        check = verify_onnx(
            path, model, pixel_values, args.atol, processor, args.batch_size, args.threads, rtol=args.rtol
        )
    except (CLIError, ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"validated on {len(paths)} real images ({paths[0].parent} ...), onnxruntime against PyTorch eager:")
    print(f"  {check.summary()}")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())

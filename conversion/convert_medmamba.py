"""Convert an upstream MedMamba checkpoint (a bare ``state_dict`` saved by MedMamba's train.py) into a Hugging Face
folder: config.json, model.safetensors, preprocessor_config.json, the remote-code files and a model card.

The architecture (depths, widths, classes, channels) is read from the tensor shapes; the preset (MedMamba-T/S/B) is
named when it matches. Checkpoints of the pre-April-2024 block design (``finalconv11.*`` keys) are refused.

Example:
    python conversion/convert_medmamba.py MedMambaNet.pth out/medmamba-busi --imagefolder data/busi/train
"""

import argparse
import sys

from hf_medmamba.tools.convert import (
    add_label_arguments,
    add_output_arguments,
    convert_medmamba,
    output_options,
    run_cli,
)
from hf_medmamba.tools.labels import resolve_id2label


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("checkpoint", help="upstream MedMamba checkpoint (.pth state dict or .safetensors)")
    parser.add_argument("output_dir", help="folder to write (must not exist unless --overwrite)")
    add_label_arguments(parser)
    parser.add_argument("--image-size", type=int, help="processor resize target (default 224, as upstream)")
    add_output_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    id2label = resolve_id2label(args.labels, args.labels_json, args.imagefolder)
    result = convert_medmamba(
        args.checkpoint, args.output_dir, id2label=id2label, image_size=args.image_size, **output_options(args)
    )
    print(result.summary())
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))

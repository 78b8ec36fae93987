"""Convert a trained upstream VM-UNet checkpoint (``best.pth``: a bare ``vmunet.*`` state dict, or ``latest.pth``: a
dict with ``model_state_dict``) into a Hugging Face folder with its model card.

Encoder/decoder depths, widths and the head are read from the tensor shapes (preset vmunet-paper, vmunet-synapse,
vmunet-default or custom). A one-channel head is upstream's binary sigmoid head: the processor gets the ISIC min-max
normalisation ([0, 255] inputs), {0, 255} masks and 256 x 256. A 9-class head is the Synapse setting: standard
normalisation, gray input, class-index masks, 224 x 224. Every choice can be overridden.

Example:
    python conversion/convert_vmunet.py results/vmunet_isic18/checkpoints/best.pth out/vmunet-isic18
"""

import argparse
import sys

from hf_medmamba.tools.convert import (
    add_label_arguments,
    add_output_arguments,
    add_vmunet_processor_arguments,
    convert_vmunet,
    output_options,
    run_cli,
    vmunet_processor_options,
)
from hf_medmamba.tools.labels import resolve_id2label


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("checkpoint", help="VM-UNet best.pth / latest.pth (or .safetensors)")
    parser.add_argument("output_dir", help="folder to write (must not exist unless --overwrite)")
    add_label_arguments(parser)
    parser.add_argument("--num-channels", type=int, choices=(1, 3), help="input channels (default: 1 for 9 classes)")
    add_vmunet_processor_arguments(parser)
    add_output_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    id2label = resolve_id2label(args.labels, args.labels_json, args.imagefolder)
    result = convert_vmunet(
        args.checkpoint,
        args.output_dir,
        id2label=id2label,
        num_channels=args.num_channels,
        **vmunet_processor_options(args),
        **output_options(args),
    )
    print(result.summary())
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))

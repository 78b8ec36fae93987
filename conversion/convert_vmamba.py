"""Convert a VMamba v0 ImageNet checkpoint (e.g. VMamba-S v0, ``vssmsmall_dp03_ckpt_epoch_238.pth``) into a Hugging
Face folder, either as the ImageNet classifier or as an initialised VM-UNet.

Subcommands:
    classifier   VMambaForImageClassification with the 1000 ImageNet-1k class names
    vmunet-init  VMUNetForSegmentation initialised exactly as upstream VM-UNet's load_from: encoder tensors copied by
                 name, decoder stage layers_up.{3-i} blocks copied from encoder stage i; upsampling layers and head
                 left at their initialisation. Prints the loaded / skipped / left-random counts.

Training states ({"model", "model_ema", ...}) are read from "model" unless --ema is given.

Examples:
    python conversion/convert_vmamba.py classifier vssmsmall_dp03_ckpt_epoch_238.pth out/vmamba-s
    python conversion/convert_vmamba.py vmunet-init vmamba_small_e238_ema.pth out/vmunet-init --preset vmunet-paper
"""

import argparse
import sys

from hf_medmamba.configuration_vmunet import VMUNET_PRESETS
from hf_medmamba.tools.convert import (
    add_label_arguments,
    add_output_arguments,
    add_vmunet_processor_arguments,
    convert_vmamba,
    convert_vmamba_to_vmunet,
    output_options,
    run_cli,
    vmunet_processor_options,
)
from hf_medmamba.tools.labels import resolve_id2label


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("classifier", "VMamba v0 ImageNet classifier"),
        ("vmunet-init", "VM-UNet initialised from the VMamba weights (upstream load_from)"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("checkpoint", help="VMamba v0 checkpoint (.pth training state or state dict, or .safetensors)")
        sub.add_argument("output_dir", help="folder to write (must not exist unless --overwrite)")
        sub.add_argument("--ema", action="store_true", help="read the 'model_ema' entry instead of 'model'")
        add_label_arguments(sub)
        if name == "vmunet-init":
            sub.add_argument(
                "--preset", default="vmunet-paper", choices=sorted(VMUNET_PRESETS), help="VM-UNet configuration"
            )
            sub.add_argument("--num-labels", type=int, help="number of classes, background included (default: preset)")
            add_vmunet_processor_arguments(sub)
        add_output_arguments(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    id2label = resolve_id2label(args.labels, args.labels_json, args.imagefolder)
    options = output_options(args)
    if args.command == "classifier":
        result = convert_vmamba(args.checkpoint, args.output_dir, ema=args.ema, id2label=id2label, **options)
    else:
        result = convert_vmamba_to_vmunet(
            args.checkpoint,
            args.output_dir,
            preset=args.preset,
            id2label=id2label,
            num_labels=args.num_labels,
            ema=args.ema,
            **vmunet_processor_options(args),
            **options,
        )
    print(result.summary())
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))

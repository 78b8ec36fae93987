"""Upstream checkpoints -> verified hf_medmamba folders, end to end: state dicts -> models holding exactly their
tensors, checkpoint files -> folders with their card (`convert_medmamba`, `convert_vmamba`, `convert_vmunet`,
`convert_vmamba_to_vmunet`), and the command-line plumbing of the scripts in ``conversion/``, which are thin
interfaces over these functions.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..image_processing_medmamba import MedMambaImageProcessor
from ..image_processing_vmamba import VMambaImageProcessor
from ..image_processing_vmunet import VMUNetImageProcessor
from ..modeling_medmamba import MedMambaForImageClassification
from ..modeling_vmamba import VMambaForImageClassification
from ..modeling_vmunet import VMUNetForSegmentation
from .architecture import infer_medmamba_config, infer_vmamba_config, infer_vmunet_config
from .checkpoints import load_checkpoint, sha256_file, unwrap_state_dict
from .errors import ConversionError
from .folders import write_folder
from .key_maps import MEDMAMBA_PREFIXES, VMAMBA_PREFIXES, VMUNET_PREFIXES, map_prefixes
from .model_card import build_model_card
from .verification import VerificationError
from .vmunet_init import VMUNetInitReport, init_vmunet_from_vmamba, vmunet_config_for_init


# ----------------------------------------------------------------------------------------------------------------------
# Strict loading
# ----------------------------------------------------------------------------------------------------------------------


def check_state_dict_fits(expected_shapes, state_dict, what):
    """Raise unless ``state_dict`` has exactly the keys and shapes of ``expected_shapes``, listing a few missing,
    unexpected and mis-shaped keys with what was expected (no partial loads)."""
    missing = [k for k in expected_shapes if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected_shapes]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs expected {tuple(shape)}"
        for k, shape in expected_shapes.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:4]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})")
    if mismatched:
        problems.append(f"{len(mismatched)} with the wrong shape (e.g. {mismatched[:3]})")
    if problems:
        raise ConversionError(
            f"{what}: the checkpoint does not fit the inferred architecture: {'; '.join(problems)}. "
            f"The model has {len(expected_shapes)} tensors, the checkpoint {len(state_dict)}."
        )


def build_and_load(model_class, config, state_dict, what):
    """``model_class(config)`` holding exactly the tensors of ``state_dict`` (checked by `check_state_dict_fits`),
    in eval mode. The model is built on the meta device and takes copies of the tensors in its own dtypes, so no
    time goes into a random initialisation that every tensor would overwrite."""
    with torch.device("meta"):
        model = model_class(config)
    expected = model.state_dict()
    check_state_dict_fits({k: v.shape for k, v in expected.items()}, state_dict, what)
    weights = {k: state_dict[k].detach().to(dtype=v.dtype, copy=True).contiguous() for k, v in expected.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def _rename(state_dict, prefixes, what):
    try:
        return map_prefixes(state_dict, prefixes)
    except KeyError as err:
        raise ConversionError(f"{what}: {err.args[0]}") from None


def convert_medmamba_state_dict(state_dict, id2label=None, **overrides):
    """An upstream MedMamba state dict as a `MedMambaForImageClassification` (eval mode), with its preset name."""
    config, preset = infer_medmamba_config(state_dict, id2label=id2label, **overrides)
    model = build_and_load(
        MedMambaForImageClassification, config, _rename(state_dict, MEDMAMBA_PREFIXES, "MedMamba"), "MedMamba"
    )
    return model, preset


def convert_vmamba_state_dict(state_dict, id2label=None, **overrides):
    """A VMamba v0 classifier state dict as a `VMambaForImageClassification` (eval mode), with its preset name."""
    config, preset = infer_vmamba_config(state_dict, id2label=id2label, **overrides)
    model = build_and_load(
        VMambaForImageClassification, config, _rename(state_dict, VMAMBA_PREFIXES, "VMamba v0"), "VMamba v0"
    )
    return model, preset


def convert_vmunet_state_dict(state_dict, id2label=None, num_channels=None, **overrides):
    """A trained upstream VM-UNet state dict as a `VMUNetForSegmentation` (eval mode), with its preset name."""
    config, preset = infer_vmunet_config(state_dict, id2label=id2label, num_channels=num_channels, **overrides)
    model = build_and_load(VMUNetForSegmentation, config, _rename(state_dict, VMUNET_PREFIXES, "VM-UNet"), "VM-UNet")
    return model, preset


# ----------------------------------------------------------------------------------------------------------------------
# End-to-end conversions (what the scripts call)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionResult:
    """What a conversion produced: the folder, the in-memory model, the preset it matched, provenance, reports."""

    output_dir: Path
    model: object
    preset: str | None
    source_file: str
    source_sha256: str
    checkpoint_entry: str
    verification: dict
    init_report: VMUNetInitReport | None = None

    def summary(self):
        config = self.model.config
        lines = [
            f"converted {self.source_file} ({self.checkpoint_entry}; sha256 {self.source_sha256[:16]}...) -> "
            f"{self.output_dir}",
            f"  {type(self.model).__name__}: preset {self.preset or 'custom'}, depths {config.depths}"
            + (f" / decoder {config.depths_decoder}" if hasattr(config, "depths_decoder") else "")
            + f", dims {config.dims}, {config.num_labels} labels, {config.num_channels} input channel(s)",
        ]
        if self.init_report is not None:
            lines.append(self.init_report.summary())
        if "remote_max_abs_diff" in self.verification:
            check = self.verification
            lines.append(
                "  verified: remote code in a fresh process matches (weights bit for bit; outputs max abs diff "
                f"{check['remote_max_abs_diff']:.2e}, tolerance {check['remote_tolerance']:.2e})"
            )
        else:
            lines.append("  not verified in a fresh process (--no-verify)")
        if "reference_max_abs_diff" in self.verification:
            lines.append(f"  reference output matches (max abs diff {self.verification['reference_max_abs_diff']:.2e})")
        return "\n".join(lines)


def _read_state_dict(checkpoint, ema, trust_pickle):
    path = Path(checkpoint)
    state_dict, entry = unwrap_state_dict(load_checkpoint(path, trust_pickle=trust_pickle), ema=ema)
    return state_dict, entry, path.name, sha256_file(path)


def _card(model, processor, card_options, **provenance):
    options = dict(card_options or {})
    return build_model_card(model.config, processor, num_parameters=model.num_parameters(), **provenance, **options)


def _finish(model, processor, output_dir, card, preset, source, entry, verify_options, init_report=None):
    verification = write_folder(model, processor, output_dir, card=card, **verify_options)
    return ConversionResult(
        output_dir=Path(output_dir),
        model=model,
        preset=preset,
        source_file=source[0],
        source_sha256=source[1],
        checkpoint_entry=entry,
        verification=verification,
        init_report=init_report,
    )


def convert_medmamba(
    checkpoint,
    output_dir,
    id2label=None,
    image_size=None,
    trust_pickle=False,
    card_options=None,
    **verify_options,
):
    """Upstream MedMamba checkpoint file -> a verified hf_medmamba folder (see `write_folder` for the options)."""
    state_dict, entry, name, digest = _read_state_dict(checkpoint, False, trust_pickle)
    model, preset = convert_medmamba_state_dict(state_dict, id2label=id2label)
    processor = MedMambaImageProcessor.for_model(model.config, image_size)
    card = _card(model, processor, card_options, variant=preset, source_file=name, source_sha256=digest)
    return _finish(model, processor, output_dir, card, preset, (name, digest), entry, verify_options)


def convert_vmamba(checkpoint, output_dir, ema=False, id2label=None, trust_pickle=False, card_options=None, **verify):
    """VMamba v0 checkpoint file -> a verified `VMambaForImageClassification` folder (ImageNet labels by default)."""
    state_dict, entry, name, digest = _read_state_dict(checkpoint, ema, trust_pickle)
    model, preset = convert_vmamba_state_dict(state_dict, id2label=id2label)
    processor = VMambaImageProcessor.for_model(model.config)
    card = _card(
        model, processor, card_options, variant=preset, source_file=name, source_sha256=digest, checkpoint_entry=entry
    )
    return _finish(model, processor, output_dir, card, preset, (name, digest), entry, verify)


def convert_vmamba_to_vmunet(
    checkpoint,
    output_dir,
    preset="vmunet-paper",
    id2label=None,
    num_labels=None,
    ema=False,
    trust_pickle=False,
    normalization_mode=None,
    mask_mode=None,
    image_size=None,
    card_options=None,
    **verify,
):
    """VMamba v0 checkpoint file -> a VM-UNet folder initialised as upstream's ``load_from`` (not trained)."""
    state_dict, entry, name, digest = _read_state_dict(checkpoint, ema, trust_pickle)
    config = vmunet_config_for_init(preset, id2label=id2label, num_labels=num_labels)
    model, report = init_vmunet_from_vmamba(state_dict, config, checkpoint_entry=entry, preset=preset)
    processor = VMUNetImageProcessor.for_model(config, normalization_mode, mask_mode, image_size)
    card = _card(
        model,
        processor,
        card_options,
        variant=preset,
        status="initialised",
        source_file=name,
        source_sha256=digest,
        checkpoint_entry=entry,
        init_summary=report.summary(),
    )
    return _finish(model, processor, output_dir, card, preset, (name, digest), entry, verify, init_report=report)


def convert_vmunet(
    checkpoint,
    output_dir,
    id2label=None,
    num_channels=None,
    normalization_mode=None,
    mask_mode=None,
    image_size=None,
    trust_pickle=False,
    card_options=None,
    **verify,
):
    """Trained upstream VM-UNet checkpoint (``best.pth`` or ``latest.pth``) -> a verified hf_medmamba folder."""
    state_dict, entry, name, digest = _read_state_dict(checkpoint, False, trust_pickle)
    model, preset = convert_vmunet_state_dict(state_dict, id2label=id2label, num_channels=num_channels)
    processor = VMUNetImageProcessor.for_model(model.config, normalization_mode, mask_mode, image_size)
    card = _card(model, processor, card_options, variant=preset, source_file=name, source_sha256=digest)
    return _finish(model, processor, output_dir, card, preset, (name, digest), entry, verify)


# ----------------------------------------------------------------------------------------------------------------------
# Shared command-line plumbing of the scripts in conversion/
# ----------------------------------------------------------------------------------------------------------------------


def add_output_arguments(parser):
    """Arguments every conversion script shares: output handling, verification and the model card."""
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint that needs full pickle loading (weights_only=False): this RUNS code stored in the "
        "file, so use it only for files from a source you trust",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reloading the folder as remote code in a fresh process"
    )
    parser.add_argument("--reference-input", help="input tensor file (torch.save) the original code was run on")
    parser.add_argument("--reference-output", help="output tensor file of the original code on --reference-input")
    parser.add_argument(
        "--reference-is",
        choices=("logits", "probabilities"),
        default="logits",
        help="what --reference-output holds (upstream VMUNet.forward returns sigmoid probabilities for one class)",
    )
    card = parser.add_argument_group("model card")
    card.add_argument("--model-name", help="name in the card (default: the output folder's name)")
    card.add_argument("--repo-id", help="Hub repository id used in the card's loading examples")
    card.add_argument("--dataset", action="append", dest="datasets", help="training dataset id (repeatable)")
    card.add_argument("--license", help="licence of the weights for the card's metadata")
    card.add_argument("--base-model", help="Hub id of the model these weights were fine-tuned / initialised from")
    card.add_argument(
        "--eval-results",
        help="JSON file of MEASURED evaluation results for the card's model-index (list of objects with task_type, "
        "dataset_type, dataset_name, metric_type, metric_value, ...); the papers' numbers never go there",
    )


def add_label_arguments(parser):
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--labels", help="comma-separated class names, in class-index order")
    labels.add_argument("--labels-json", help="JSON file: a list of class names or an id2label object")
    labels.add_argument("--imagefolder", help="image-folder dataset directory: class names = sorted sub-folder names")


def add_vmunet_processor_arguments(parser):
    """The VM-UNet image-processor overrides (the defaults follow the head: ISIC for binary, Synapse otherwise)."""
    parser.add_argument("--normalization-mode", choices=("isic", "standard"), help="processor normalisation")
    parser.add_argument("--mask-mode", choices=("binary", "index"), help="processor mask mode")
    parser.add_argument("--image-size", type=int, help="processor resize target (default 256 binary, 224 otherwise)")


def vmunet_processor_options(args):
    """Keyword arguments of the VM-UNet convert functions from `add_vmunet_processor_arguments`."""
    return {"normalization_mode": args.normalization_mode, "mask_mode": args.mask_mode, "image_size": args.image_size}


def output_options(args):
    """Keyword arguments of the convert_* functions from the parsed shared arguments."""
    card = {
        "model_name": args.model_name or Path(args.output_dir).name,
        "repo_id": args.repo_id,
        "datasets": args.datasets,
        "license": args.license,
        "base_model": args.base_model,
        "eval_results": args.eval_results,
    }
    return {
        "overwrite": args.overwrite,
        "verify": not args.no_verify,
        "reference_input": args.reference_input,
        "reference_output": args.reference_output,
        "reference_is": args.reference_is,
        "trust_pickle": args.trust_pickle,
        "card_options": {k: v for k, v in card.items() if v is not None},
    }


def run_cli(main, argv=None):
    """Run a script's ``main(argv)``: status 0, or 1 after printing one ``error: ...`` line on stderr (progress bars
    are switched off so that the error stays the only line)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        main(argv)
    except Exception as err:
        if os.environ.get("HF_MEDMAMBA_TRACEBACK"):
            raise
        known = isinstance(err, (ConversionError, VerificationError, OSError, ValueError))
        message = " ".join(str(err).split()) or type(err).__name__
        if not known:
            message = f"{type(err).__name__}: {message} (set HF_MEDMAMBA_TRACEBACK=1 for the traceback)"
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0

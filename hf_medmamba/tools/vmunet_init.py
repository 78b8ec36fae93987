"""Upstream VM-UNet's ``load_from``: a VM-UNet initialised from a VMamba v0 checkpoint, planned over key names and
shapes (`plan_vmunet_init`), applied (`init_vmunet_from_vmamba`) and reported group by group (`VMUNetInitReport`)."""

import collections
from dataclasses import dataclass, field

import torch

from ..configuration_vmunet import VMUNetConfig
from ..modeling_vmunet import VMUNetForSegmentation
from .architecture import expect_architecture
from .errors import ConversionError


def _inner_key(model_key):
    """A `VMUNetForSegmentation` key in upstream ``VMUNet.vmunet`` naming (what ``load_from`` matches against)."""
    return model_key[len("vmunet.") :] if model_key.startswith("vmunet.") else model_key


def _decoder_name(checkpoint_key):
    """Upstream's decoder-pass rename: the first of ``layers.0`` .. ``layers.3`` found anywhere in the key (substring
    test, in that order) becomes ``layers_up.3`` .. ``layers_up.0``; keys without one are dropped (None)."""
    for i in range(4):
        if f"layers.{i}" in checkpoint_key:
            return checkpoint_key.replace(f"layers.{i}", f"layers_up.{3 - i}")
    return None


def _group(key):
    """The report group of a checkpoint or model key."""
    inner = _inner_key(key)
    for name in ("patch_embed", "final_up", "final_conv"):
        if inner.startswith(name + "."):
            return name
    if inner.startswith(("norm.", "head.")):
        return "norm/head"
    for part in ("downsample", "upsample", "blocks"):
        if f".{part}." in inner:
            return part
    return "other"


def _count_groups(keys):
    counts = collections.Counter(_group(k) for k in keys)
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items())) or "none"


@dataclass
class VMUNetInitReport:
    """What upstream's ``load_from`` does with a VMamba checkpoint for a given VM-UNet: which model tensor came from
    which checkpoint tensor in each pass, which checkpoint tensors were skipped and which model tensors stay at
    their initialisation."""

    model_tensors: int
    checkpoint_tensors: int
    encoder: dict = field(default_factory=dict)  # model key -> checkpoint key
    decoder: dict = field(default_factory=dict)
    decoder_candidates: int = 0  # checkpoint tensors renamed by the decoder pass (upstream's printed count)
    skipped_encoder: list = field(default_factory=list)  # checkpoint keys
    skipped_decoder: list = field(default_factory=list)  # checkpoint keys (original names)
    never_loaded: list = field(default_factory=list)  # model keys
    checkpoint_entry: str = "model"
    preset: str | None = None

    def summary(self):
        unexpected_random = [k for k in self.never_loaded if _group(k) not in ("upsample", "final_up", "final_conv")]
        lines = [
            f"VMamba checkpoint ({self.checkpoint_entry}, {self.checkpoint_tensors} tensors) -> VM-UNet "
            f"({self.preset or 'custom'}, {self.model_tensors} tensors), upstream load_from rules:",
            f"  encoder: loaded {len(self.encoder)} ({_count_groups(self.encoder)}); skipped "
            f"{len(self.skipped_encoder)} checkpoint tensors ({_count_groups(self.skipped_encoder)})",
            f"  decoder: loaded {len(self.decoder)} of {self.decoder_candidates} renamed checkpoint tensors "
            f"(layers_up.{{3-i}}.blocks.j <- layers.i.blocks.j); skipped {len(self.skipped_decoder)} "
            f"({_count_groups(self.skipped_decoder)})",
            f"  left at their initialisation: {len(self.never_loaded)} model tensors "
            f"({_count_groups(self.never_loaded)})",
        ]
        if unexpected_random:
            lines.append(
                f"  warning: {len(unexpected_random)} encoder/decoder tensors have no source in this checkpoint "
                f"(e.g. {unexpected_random[:3]}) and stay random, as upstream would leave them."
            )
        return "\n".join(lines)


def plan_vmunet_init(model_shapes, checkpoint_shapes):
    """Upstream ``load_from`` as a plan over names and shapes (no tensors needed, so it works on meta models).

    ``model_shapes``: `VMUNetForSegmentation` state-dict keys -> shapes; ``checkpoint_shapes``: VMamba v0 keys ->
    shapes. Encoder pass: a checkpoint key that exists verbatim in upstream's ``VMUNet.vmunet`` is copied. Decoder
    pass: keys renamed by `_decoder_name` that exist are copied. A name match with a different shape raises, as
    upstream's strict ``load_state_dict`` does.
    """
    by_inner = {_inner_key(k): k for k in model_shapes}
    report = VMUNetInitReport(model_tensors=len(model_shapes), checkpoint_tensors=len(checkpoint_shapes))

    def take(target, model_key, checkpoint_key):
        got, want = tuple(checkpoint_shapes[checkpoint_key]), tuple(model_shapes[model_key])
        if got != want:
            raise ConversionError(
                f"VMamba -> VM-UNet: checkpoint tensor {checkpoint_key!r} has shape {got} but {model_key!r} needs "
                f"{want}. VM-UNet's encoder is VMamba v0 with the same widths (dims 96 for the presets): use a "
                "matching VMamba v0 checkpoint (e.g. VMamba-S v0, vssmsmall_dp03_ckpt_epoch_238.pth)."
            )
        target[model_key] = checkpoint_key

    for key in checkpoint_shapes:
        if key in by_inner:
            take(report.encoder, by_inner[key], key)
        else:
            report.skipped_encoder.append(key)
    for key in checkpoint_shapes:
        renamed = _decoder_name(key)
        if renamed is None:
            continue
        report.decoder_candidates += 1
        if renamed in by_inner:
            take(report.decoder, by_inner[renamed], key)
        else:
            report.skipped_decoder.append(key)
    if not report.encoder:
        raise ConversionError(
            "VMamba -> VM-UNet: no checkpoint tensor matches VM-UNet's encoder by name; this is not a VMamba v0 "
            f"checkpoint (first keys: {list(checkpoint_shapes)[:3]})."
        )
    loaded = set(report.encoder) | set(report.decoder)
    report.never_loaded = [k for k in model_shapes if k not in loaded]
    return report


def init_vmunet_from_vmamba(state_dict, config, checkpoint_entry="model", preset=None):
    """A `VMUNetForSegmentation` for ``config`` initialised from a VMamba v0 state dict exactly as upstream's
    ``load_from``; returns the model and its `VMUNetInitReport` (the only conversion here that loads partially, by
    design: the report lists every skipped group)."""
    expect_architecture(state_dict, "vmamba-v0", "VMamba -> VM-UNet")
    with torch.device("meta"):  # plan (and fail) before paying for the random initialisation
        shapes = {k: v.shape for k, v in VMUNetForSegmentation(config).state_dict().items()}
    report = plan_vmunet_init(shapes, {k: v.shape for k, v in state_dict.items()})
    model = VMUNetForSegmentation(config)
    target = model.state_dict()
    report.checkpoint_entry = checkpoint_entry
    report.preset = preset
    with torch.no_grad():
        for model_key, checkpoint_key in {**report.encoder, **report.decoder}.items():
            target[model_key].copy_(state_dict[checkpoint_key])
    return model.eval(), report


def vmunet_config_for_init(preset="vmunet-paper", id2label=None, num_labels=None, **overrides):
    """The VM-UNet config for a VMamba initialisation: a preset, with other labels when given (a label count other
    than 2 turns the one-channel sigmoid head off)."""
    if id2label is not None and num_labels is not None and len(id2label) != num_labels:
        raise ConversionError(f"--num-labels {num_labels} disagrees with the {len(id2label)} class names given.")
    if id2label is not None or num_labels is not None:
        count = len(id2label) if id2label is not None else num_labels
        overrides = {**overrides, **({"id2label": id2label} if id2label is not None else {"num_labels": count})}
        if count != 2:
            overrides["sigmoid_head"] = False
    try:
        return VMUNetConfig.from_preset(preset, **overrides)
    except ValueError as err:
        raise ConversionError(str(err)) from None

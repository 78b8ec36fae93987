"""What a state dict is: the architecture named by its keys (`detect_architecture`), and the configuration inferred
from its tensor shapes (depths, widths, SS2D settings, channels, head; the preset when one matches)."""

import collections
import math
import re

from ..configuration_medmamba import MEDMAMBA_PRESETS, MedMambaConfig
from ..configuration_vmamba import VMAMBA_PRESETS, VMambaConfig
from ..configuration_vmunet import BINARY_LABELS, SYNAPSE_LABELS, VMUNET_PRESETS, VMUNetConfig
from .errors import ConversionError
from .labels import imagenet_id2label


# SS2D settings every upstream checkpoint was trained with; a preset is named only when a checkpoint has them.
_UPSTREAM_SSM = {"patch_size": 4, "d_state": 16, "d_conv": 3, "expand": 2, "dt_rank": "auto"}


ARCHITECTURES = {
    "medmamba": "an upstream MedMamba state dict (VSSM with SS_Conv_SSM blocks): use convert_medmamba.py",
    "medmamba-pre-2024-04": "a MedMamba checkpoint of the block design used before April 2024",
    "vmamba-v0": "a VMamba v0 (vanilla VMamba) ImageNet checkpoint: use convert_vmamba.py",
    "vmamba-v2": "a VMamba v2 checkpoint (March 2024 and later: another architecture, not supported)",
    "vmunet": "a trained upstream VM-UNet state dict (keys vmunet.*): use convert_vmunet.py",
    "hf_medmamba": "already in hf_medmamba's format: load it with from_pretrained / load_state_dict",
    "unknown": "not a checkpoint of MedMamba, VMamba v0 or VM-UNet",
}

OLD_MEDMAMBA_MESSAGE = (
    "this checkpoint has 'finalconv11.*' keys: it comes from MedMamba's block design before 2024-04-07 (residual "
    "inside the SSM branch, no leading BatchNorm, concatenation followed by a 1x1 'finalconv11' instead of the "
    "channel shuffle). That is a different network and is not supported; only checkpoints of the current "
    "SS_Conv_SSM block (upstream commit 37630a4 and later, e.g. the weights released in June 2024) convert."
)


def detect_architecture(state_dict):
    """One of the `ARCHITECTURES` keys, from the key names alone."""
    keys = list(state_dict)
    if any("finalconv11" in k for k in keys):
        return "medmamba-pre-2024-04"
    if any(k.startswith(("medmamba.", "vmamba.", "final_conv.")) for k in keys):
        return "hf_medmamba"
    if any(k.startswith("vmunet.") for k in keys):
        return "vmunet"
    if any(".conv33conv33conv11." in k for k in keys):
        return "medmamba"
    if any(k.startswith(("classifier.", "patch_embed.0.")) or ".op." in k for k in keys):
        return "vmamba-v2"
    if any(k.startswith("layers.") and ".self_attention." in k for k in keys):
        return "vmamba-v0"
    return "unknown"


def expect_architecture(state_dict, expected, what):
    found = detect_architecture(state_dict)
    if found == expected:
        return
    if found == "medmamba-pre-2024-04":
        raise ConversionError(f"{what}: {OLD_MEDMAMBA_MESSAGE}")
    if found == "unknown":
        raise ConversionError(
            f"{what}: the keys match no supported architecture (first keys: {list(state_dict)[:3]}); expected "
            f"{ARCHITECTURES[expected].split(':')[0]}."
        )
    raise ConversionError(
        f"{what}: this is {ARCHITECTURES[found]}, not {ARCHITECTURES[expected].split(':')[0]} "
        f"(first keys: {list(state_dict)[:3]})."
    )


def _shape(state_dict, key, what):
    if key not in state_dict:
        raise ConversionError(f"{what}: expected the tensor {key!r}, which the checkpoint lacks.")
    return tuple(state_dict[key].shape)


def stage_depths(keys, prefix):
    """Blocks per stage from keys ``{prefix}.{i}.blocks.{j}.*``; stages and blocks must be numbered 0..n-1."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.blocks\.(\d+)\.")
    blocks = collections.defaultdict(set)
    for key in keys:
        match = pattern.match(key)
        if match:
            blocks[int(match[1])].add(int(match[2]))
    if not blocks:
        raise ConversionError(f"no '{prefix}.<i>.blocks.<j>.*' keys: the checkpoint has no stages where expected.")
    stages = sorted(blocks)
    if stages != list(range(len(stages))):
        raise ConversionError(f"the stages under '{prefix}' are numbered {stages}, expected 0..{len(stages) - 1}.")
    depths = []
    for stage in stages:
        indices = sorted(blocks[stage])
        if indices != list(range(len(indices))):
            raise ConversionError(f"'{prefix}.{stage}' has blocks {indices}: block indices must be 0..n-1.")
        depths.append(len(indices))
    return depths


def _ssm_settings(state_dict, prefix, d_model, what):
    """d_state, d_conv, expand and dt_rank of the SS2D ``{prefix}.self_attention`` of width ``d_model``."""
    sa = f"{prefix}.self_attention."
    d_state = _shape(state_dict, sa + "A_logs", what)[1]
    d_inner = _shape(state_dict, sa + "in_proj.weight", what)[0] // 2
    if d_inner % d_model:
        raise ConversionError(f"{what}: {sa}in_proj has inner width {d_inner}, not a multiple of d_model={d_model}.")
    d_conv = _shape(state_dict, sa + "conv2d.weight", what)[-1]
    dt_rank = _shape(state_dict, sa + "dt_projs_weight", what)[-1]
    return {
        "d_state": d_state,
        "d_conv": d_conv,
        "expand": d_inner // d_model,
        "dt_rank": "auto" if dt_rank == math.ceil(d_model / 16) else dt_rank,
    }


def _patch_embed(state_dict, prefix, what):
    out_dim, in_channels, patch, _ = _shape(state_dict, f"{prefix}patch_embed.proj.weight", what)
    return out_dim, in_channels, patch


def _matching_preset(presets, settings, fields):
    for name, preset in presets.items():
        if all(preset.get(f) == settings.get(f) for f in fields) and all(
            settings.get(k) == v for k, v in _UPSTREAM_SSM.items()
        ):
            return name
    return None


def infer_medmamba_config(state_dict, id2label=None, **overrides):
    """`MedMambaConfig` whose depths, widths, SS2D settings, channels and num_labels come from an upstream MedMamba
    state dict's tensor shapes, and the preset name (``"medmamba-t"``/``-s``/``-b``) when they match one, else None."""
    what = "MedMamba"
    expect_architecture(state_dict, "medmamba", what)
    depths = stage_depths(state_dict, "layers")
    dims = [2 * _shape(state_dict, f"layers.{i}.blocks.0.ln_1.weight", what)[0] for i in range(len(depths))]
    stem_dim, in_channels, patch = _patch_embed(state_dict, "", what)
    if stem_dim != dims[0]:
        raise ConversionError(f"{what}: patch_embed has {stem_dim} channels but stage 0 blocks have {dims[0]}.")
    num_labels = _shape(state_dict, "head.weight", what)[0]
    settings = {"depths": depths, "dims": dims, "patch_size": patch}
    settings.update(_ssm_settings(state_dict, "layers.0.blocks.0", dims[0] // 2, what))
    preset = _matching_preset(MEDMAMBA_PRESETS, settings, ("depths", "dims"))
    labels = _label_kwargs(num_labels, id2label, what)
    config = MedMambaConfig(num_channels=in_channels, **settings, **labels, **overrides)
    return config, preset


def infer_vmamba_config(state_dict, id2label=None, **overrides):
    """`VMambaConfig` from a VMamba v0 classifier state dict (ImageNet labels for a 1000-class head), and the preset
    name (``"vmamba-s"``) when it matches."""
    what = "VMamba v0"
    expect_architecture(state_dict, "vmamba-v0", what)
    depths = stage_depths(state_dict, "layers")
    dims = [_shape(state_dict, f"layers.{i}.blocks.0.ln_1.weight", what)[0] for i in range(len(depths))]
    stem_dim, in_channels, patch = _patch_embed(state_dict, "", what)
    if stem_dim != dims[0]:
        raise ConversionError(f"{what}: patch_embed has {stem_dim} channels but stage 0 blocks have {dims[0]}.")
    _shape(state_dict, "norm.weight", what)
    num_labels = _shape(state_dict, "head.weight", what)[0]
    settings = {"depths": depths, "dims": dims, "patch_size": patch}
    settings.update(_ssm_settings(state_dict, "layers.0.blocks.0", dims[0], what))
    preset = _matching_preset(VMAMBA_PRESETS, settings, ("depths", "dims"))
    if id2label is None and num_labels == 1000:
        id2label = imagenet_id2label()
    if preset is not None and "drop_path_rate" not in overrides:
        overrides["drop_path_rate"] = VMAMBA_PRESETS[preset]["drop_path_rate"]
    labels = _label_kwargs(num_labels, id2label, what)
    config = VMambaConfig(num_channels=in_channels, **settings, **labels, **overrides)
    return config, preset


def infer_vmunet_config(state_dict, id2label=None, num_channels=None, **overrides):
    """`VMUNetConfig` from a trained upstream VM-UNet state dict (keys ``vmunet.*``): encoder and decoder depths,
    widths, SS2D settings, and the head from ``final_conv`` (one channel: binary with the sigmoid head; otherwise
    ``num_labels`` channels). The preset name is ``"vmunet-paper"``, ``"vmunet-synapse"``, ``"vmunet-default"`` or
    None (custom). ``num_channels`` defaults to 1 for a 9-class (Synapse-style) head, else 3."""
    what = "VM-UNet"
    expect_architecture(state_dict, "vmunet", what)
    depths = stage_depths(state_dict, "vmunet.layers")
    depths_decoder = stage_depths(state_dict, "vmunet.layers_up")
    dims = [_shape(state_dict, f"vmunet.layers.{i}.blocks.0.ln_1.weight", what)[0] for i in range(len(depths))]
    _, in_channels, patch = _patch_embed(state_dict, "vmunet.", what)
    if in_channels != 3:
        raise ConversionError(
            f"{what}: the patch embedding takes {in_channels} channels; upstream VM-UNet's is always 3-channel "
            "(1-channel inputs are repeated), so this is not an upstream VM-UNet checkpoint."
        )
    outputs = _shape(state_dict, "vmunet.final_conv.weight", what)[0]
    settings = {"depths": depths, "depths_decoder": depths_decoder, "dims": dims, "patch_size": patch}
    settings.update(_ssm_settings(state_dict, "vmunet.layers.0.blocks.0", dims[0], what))
    sigmoid_head = outputs == 1
    num_labels = 2 if sigmoid_head else outputs
    if id2label is None:
        id2label = BINARY_LABELS if sigmoid_head else SYNAPSE_LABELS if outputs == 9 else None
    if num_channels is None:
        num_channels = 1 if outputs == 9 else 3
    preset = _vmunet_preset(settings, sigmoid_head, num_labels)
    labels = _label_kwargs(num_labels, id2label, what)
    config = VMUNetConfig(num_channels=num_channels, sigmoid_head=sigmoid_head, **settings, **labels, **overrides)
    return config, preset


def _vmunet_preset(settings, sigmoid_head, num_labels):
    """The VM-UNet preset with these depths, widths (96 for all presets), SS2D settings and head, or None."""
    for name, values in VMUNET_PRESETS.items():
        same_shape = {**values, "dims": [96, 192, 384, 768]}
        same_head = values.get("sigmoid_head", False) == sigmoid_head and len(values["id2label"]) == num_labels
        if same_head and _matching_preset({name: same_shape}, settings, ("depths", "depths_decoder", "dims")):
            return name
    return None


def _label_kwargs(num_labels, id2label, what):
    if id2label is None:
        return {"num_labels": num_labels}
    if len(id2label) != num_labels:
        raise ConversionError(
            f"{what}: the checkpoint's head has {num_labels} classes but {len(id2label)} class names were given "
            f"({list(id2label.values())[:10]})."
        )
    return {"id2label": dict(id2label)}

"""Upstream checkpoints -> hf_medmamba models: the key maps (data), safe checkpoint loading, architecture inference
from tensor shapes, upstream VM-UNet's ``load_from`` rules, and writing a Hub-ready folder that is verified in a fresh
process.

Not part of the remote-code files: nothing in the modeling files imports this module. The scripts in ``conversion/``
are thin command-line interfaces over the functions below.
"""

import collections
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_medmamba import MEDMAMBA_PRESETS, MedMambaConfig
from .configuration_vmamba import VMAMBA_PRESETS, VMambaConfig
from .configuration_vmunet import BINARY_LABELS, SYNAPSE_LABELS, VMUNET_PRESETS, VMUNetConfig
from .image_processing_medmamba import MedMambaImageProcessor
from .image_processing_vmamba import VMambaImageProcessor
from .image_processing_vmunet import VMUNetImageProcessor
from .verification import VerificationError, check_reference, verify_folder


# Upstream MedMamba ``VSSM`` keys -> ``MedMambaForImageClassification`` keys: a prefix change only; every name below
# the prefix is upstream's.
MEDMAMBA_PREFIXES = {
    "patch_embed.": "medmamba.patch_embed.",
    "layers.": "medmamba.layers.",
    "head.": "head.",
}


# VMamba v0 checkpoint (``ckpt["model"]``) keys -> ``VMambaForImageClassification`` keys.
VMAMBA_PREFIXES = {
    "patch_embed.": "vmamba.patch_embed.",
    "layers.": "vmamba.layers.",
    "norm.": "vmamba.norm.",
    "head.": "head.",
}

# Upstream ``VMUNet`` keys -> ``VMUNetForSegmentation`` keys: the 1x1 head moves up one level, the rest is unchanged.
VMUNET_PREFIXES = {
    "vmunet.final_conv.": "final_conv.",
    "vmunet.": "vmunet.",
}

IMAGENET_ID2LABEL_FILE = Path(__file__).with_name("data") / "imagenet1k_id2label.json"

# SS2D settings every upstream checkpoint was trained with; a preset is named only when a checkpoint has them.
_UPSTREAM_SSM = {"patch_size": 4, "d_state": 16, "d_conv": 3, "expand": 2, "dt_rank": "auto"}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says what was found and what was expected."""


def map_prefixes(state_dict, prefixes):
    """Rename keys by their leading prefix (the first match in ``prefixes`` order); a key that matches no prefix
    raises (nothing is dropped silently)."""
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                mapped[new + key[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"{len(unknown)} key(s) match none of the expected prefixes {sorted(prefixes)}: {unknown[:5]}. "
            "This is not a checkpoint of the expected architecture."
        )
    return mapped


# ----------------------------------------------------------------------------------------------------------------------
# Safe checkpoint loading and unwrapping
# ----------------------------------------------------------------------------------------------------------------------


def sha256_file(path):
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _numpy_safe_globals():
    """What numpy scalars, dtypes and plain numeric arrays need to unpickle, under numpy 1.x and 2.x names."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    allowed = [scalar, reconstruct, np.dtype, np.ndarray]
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [(scalar, "numpy._core.multiarray.scalar"), (reconstruct, "numpy._core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: the class of every dtype instance (np.dtypes.Float64DType)
    if dtypes is not None:
        allowed += [
            getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)
        ]
    return allowed


def checkpoint_safe_globals():
    """The only non-tensor types `load_checkpoint` lets through ``torch.load(weights_only=True)``.

    - numpy scalars, dtypes and numeric arrays (training states store accuracies and epochs as numpy values);
    - yacs ``CfgNode`` (VMamba's training config), read as an inert ``OrderedDict``: its keys and values are kept, no
      yacs code is imported or run.
    """
    return [*_numpy_safe_globals(), (collections.OrderedDict, "yacs.config.CfgNode")]


def _unsafe_globals(path):
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an old-format (non-zip) file; the unpickling error message still names the type
        return []


def load_checkpoint(path, trust_pickle=False):
    """A checkpoint file read on the CPU, without running code from it.

    ``.safetensors`` files are read with safetensors. Anything else goes through ``torch.load(weights_only=True)``
    with `checkpoint_safe_globals` allowed. A file that needs other pickled types is refused unless
    ``trust_pickle=True``, which falls back to ``weights_only=False``: that executes code stored in the file, so only
    use it for files from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist or is not a file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    import pickle

    try:
        with torch.serialization.safe_globals(checkpoint_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            unsafe = [g for g in _unsafe_globals(path) if not _is_allowed_global(g)]
            found = f"pickled objects of type(s) {unsafe}" if unsafe else f"pickled objects ({_first_line(err)})"
            raise ConversionError(
                f"{path.name} contains {found} beyond tensors, containers, numpy scalars and yacs configs. Loading "
                "them would run code stored in the file (weights_only=False). If you trust the file's source, pass "
                "--trust-pickle (trust_pickle=True); otherwise re-save its state dict with safetensors."
            ) from None
    print(
        f"warning: loading {path.name} with weights_only=False (--trust-pickle): code stored in the file may run.",
        file=sys.stderr,
    )
    return torch.load(path, map_location="cpu", weights_only=False)


def _is_allowed_global(name):
    allowed = {"yacs.config.CfgNode", "numpy.dtype", "numpy.ndarray"}
    return name in allowed or name.startswith(("numpy.core.multiarray.", "numpy._core.multiarray.", "numpy.dtypes."))


def _first_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def _is_state_dict(obj):
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(checkpoint, ema=False):
    """The state dict inside a checkpoint, and where it was found.

    Accepts a bare state dict, VMamba's training state ``{"model", "model_ema", ...}`` (``model`` unless ``ema``),
    VM-UNet's ``latest.pth`` ``{"model_state_dict", ...}`` and ``{"state_dict", ...}``. A ``module.`` prefix
    (DataParallel) on every key is removed.
    """
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f"the checkpoint holds a {type(checkpoint).__name__}, not a state dict or a dict of them; save "
            "model.state_dict() rather than the model object."
        )
    if _is_state_dict(checkpoint) and not ema:
        state_dict, entry = checkpoint, "state dict"
    elif ema:
        if "model_ema" not in checkpoint:
            raise ConversionError(
                f"--ema asks for the 'model_ema' entry, but the checkpoint has none (top-level keys: "
                f"{sorted(map(str, checkpoint))[:10]})."
            )
        state_dict, entry = checkpoint["model_ema"], "model_ema"
    else:
        for entry in ("model_state_dict", "model", "state_dict"):
            if entry in checkpoint:
                state_dict = checkpoint[entry]
                break
        else:
            raise ConversionError(
                f"cannot find the weights: the checkpoint is a dict with keys {sorted(map(str, checkpoint))[:10]} but "
                "no tensors at the top level and no 'model', 'model_ema', 'model_state_dict' or 'state_dict' entry."
            )
    if isinstance(state_dict, Mapping) and "state_dict" in state_dict and not _is_state_dict(state_dict):
        state_dict = state_dict["state_dict"]
    if not _is_state_dict(state_dict):
        bad = (
            [k for k, v in state_dict.items() if not torch.is_tensor(v)][:5] if isinstance(state_dict, Mapping) else []
        )
        raise ConversionError(
            f"the checkpoint's {entry!r} entry is not a state dict of tensors (non-tensor entries: {bad or 'all'})."
        )
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict), entry


# ----------------------------------------------------------------------------------------------------------------------
# What a state dict is
# ----------------------------------------------------------------------------------------------------------------------

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


def _expect_architecture(state_dict, expected, what):
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


# ----------------------------------------------------------------------------------------------------------------------
# Inference of the architecture from tensor shapes
# ----------------------------------------------------------------------------------------------------------------------


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
    _expect_architecture(state_dict, "medmamba", what)
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
    _expect_architecture(state_dict, "vmamba-v0", what)
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
    _expect_architecture(state_dict, "vmunet", what)
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


# ----------------------------------------------------------------------------------------------------------------------
# Class names
# ----------------------------------------------------------------------------------------------------------------------


def imagenet_id2label():
    """The 1000 ImageNet-1k class names (package data; source and licence in ``data/README.md``)."""
    with open(IMAGENET_ID2LABEL_FILE, encoding="utf-8") as f:
        return {int(k): v for k, v in json.load(f).items()}


def imagefolder_classes(directory):
    """Class names of an image-folder dataset: its sub-folder names, sorted (as torchvision's ``ImageFolder``)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConversionError(f"--imagefolder {directory} is not a directory.")
    names = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not names:
        raise ConversionError(f"--imagefolder {directory} has no sub-folders (one per class is expected).")
    return names


def read_id2label(path):
    """Class names from a JSON file: a list of names, an ``{"0": name, ...}`` map, or a config with ``id2label``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, Mapping) and "id2label" in data:
        data = data["id2label"]
    if isinstance(data, list):
        return dict(enumerate(str(name) for name in data))
    if isinstance(data, Mapping):
        try:
            id2label = {int(k): str(v) for k, v in data.items()}
        except ValueError:
            raise ConversionError(f"{path}: id2label keys must be class indices, got {list(data)[:5]}.") from None
        if sorted(id2label) != list(range(len(id2label))):
            raise ConversionError(f"{path}: class indices must be 0..{len(id2label) - 1}, got {sorted(id2label)}.")
        return id2label
    raise ConversionError(f"{path}: expected a list of class names or an id2label object, got {type(data).__name__}.")


def resolve_id2label(labels=None, labels_json=None, imagefolder=None):
    """id2label from at most one source: a list of names, a JSON file, or an image-folder directory; else None."""
    given = [s for s in (labels, labels_json, imagefolder) if s is not None]
    if len(given) > 1:
        raise ConversionError("give the class names once: --labels, --labels-json or --imagefolder, not several.")
    if labels is not None:
        names = [n.strip() for n in labels.split(",")] if isinstance(labels, str) else list(labels)
        if len(set(names)) != len(names) or not all(names):
            raise ConversionError(f"class names must be non-empty and distinct, got {names}.")
        return dict(enumerate(names))
    if labels_json is not None:
        return read_id2label(labels_json)
    if imagefolder is not None:
        return dict(enumerate(imagefolder_classes(imagefolder)))
    return None


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
    from .modeling_medmamba import MedMambaForImageClassification

    config, preset = infer_medmamba_config(state_dict, id2label=id2label, **overrides)
    model = build_and_load(
        MedMambaForImageClassification, config, _rename(state_dict, MEDMAMBA_PREFIXES, "MedMamba"), "MedMamba"
    )
    return model, preset


def convert_vmamba_state_dict(state_dict, id2label=None, **overrides):
    """A VMamba v0 classifier state dict as a `VMambaForImageClassification` (eval mode), with its preset name."""
    from .modeling_vmamba import VMambaForImageClassification

    config, preset = infer_vmamba_config(state_dict, id2label=id2label, **overrides)
    model = build_and_load(
        VMambaForImageClassification, config, _rename(state_dict, VMAMBA_PREFIXES, "VMamba v0"), "VMamba v0"
    )
    return model, preset


def convert_vmunet_state_dict(state_dict, id2label=None, num_channels=None, **overrides):
    """A trained upstream VM-UNet state dict as a `VMUNetForSegmentation` (eval mode), with its preset name."""
    from .modeling_vmunet import VMUNetForSegmentation

    config, preset = infer_vmunet_config(state_dict, id2label=id2label, num_channels=num_channels, **overrides)
    model = build_and_load(VMUNetForSegmentation, config, _rename(state_dict, VMUNET_PREFIXES, "VM-UNet"), "VM-UNet")
    return model, preset


# ----------------------------------------------------------------------------------------------------------------------
# VMamba v0 checkpoint -> VM-UNet initialisation (upstream ``load_from``)
# ----------------------------------------------------------------------------------------------------------------------


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
    from .modeling_vmunet import VMUNetForSegmentation

    _expect_architecture(state_dict, "vmamba-v0", "VMamba -> VM-UNet")
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


# ----------------------------------------------------------------------------------------------------------------------
# Writing a folder
# ----------------------------------------------------------------------------------------------------------------------


def write_folder(
    model,
    processor,
    output_dir,
    card=None,
    overwrite=False,
    verify=True,
    reference_input=None,
    reference_output=None,
    reference_is="logits",
):
    """Compare ``model`` with the reference output when given (before writing anything), save it (config.json with
    its auto_map, model.safetensors, the remote-code files), ``processor`` and the model card (README.md) into a
    temporary folder next to ``output_dir``, verify that folder in a fresh process (`verify_folder`, unless ``verify``
    is False) and move it into place. Nothing is left behind on failure. Returns the measured differences."""
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; pass --overwrite to replace it.")
    result = {}
    if reference_input is not None or reference_output is not None:
        if reference_input is None or reference_output is None:
            raise VerificationError("give both --reference-input and --reference-output.")
        result["reference_max_abs_diff"] = check_reference(model, reference_input, reference_output, reference_is)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}-partial-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if card is not None:
            card.save(staging / "README.md")
        if verify:
            result.update(verify_folder(staging, model, reference_input, reference_output, reference_is))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private (0700); give it a normal folder's mode
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{output_dir.name}-old-", dir=output_dir.parent))
            os.replace(output_dir, old / output_dir.name)
            os.replace(staging, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result


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
    from .model_card import build_model_card

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

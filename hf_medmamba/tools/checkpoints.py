"""Reading upstream checkpoint files safely: SHA-256, ``torch.load(weights_only=True)`` with an allow-list of the
non-tensor types upstream training states hold (``trust_pickle`` as the explicit way out), and unwrapping the state
dict from the training-state layouts."""

import collections
import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import ConversionError


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

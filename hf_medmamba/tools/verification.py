"""Verification of a saved folder: loaded as remote code in a fresh process, it must hold exactly the weights of the
in-memory model and give its outputs up to float32 rounding; with a reference pair, it must reproduce the outputs of
the original upstream code.

Two rules, used wherever weights or outputs are compared across processes or scan backends (conversion, Hub
publishing, ONNX export):

- weights are compared **bit for bit** (`compare_state_dicts`): a save / load round trip changes nothing;
- outputs are compared with `outputs_match`: ``max |got - expected| <= OUTPUT_ATOL + OUTPUT_RTOL * max |expected|``.
  The backends (compiled kernel, chunked scan, onnxruntime) differ by float32 rounding, which grows with depth but
  stays near 1e-5 on the deepest presets; a wrong scan-direction order or a dropped bias moves the outputs by 1e-2
  and more.

Outputs of the original upstream code are compared with the project's absolute rule, `REFERENCE_ATOL` (1e-4).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


OUTPUT_ATOL = 1e-4
OUTPUT_RTOL = 1e-4  # times the largest |value| of the expected output
REFERENCE_ATOL = 1e-4  # our model vs outputs of the original upstream code


class VerificationError(RuntimeError):
    """A folder or export that does not reproduce the in-memory model or the reference outputs."""


# ----------------------------------------------------------------------------------------------------------------------
# The two comparison rules
# ----------------------------------------------------------------------------------------------------------------------


def output_tolerance(expected):
    """The largest max-abs difference from ``expected`` that float32 backend rounding explains."""
    return OUTPUT_ATOL + OUTPUT_RTOL * expected.detach().float().abs().max().item()


def outputs_match(got, expected, what):
    """``(max abs difference, tolerance)``; raises `VerificationError` when the difference exceeds the tolerance or
    the shapes differ."""
    if tuple(got.shape) != tuple(expected.shape):
        raise VerificationError(f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}.")
    diff = (got.detach().float() - expected.detach().float()).abs().max().item()
    tolerance = output_tolerance(expected)
    if not diff <= tolerance:  # also catches NaN
        raise VerificationError(
            f"{what} differs by {diff:.3g} (max abs; tolerance {OUTPUT_ATOL:g} + {OUTPUT_RTOL:g} * max|expected| = "
            f"{tolerance:.3g}). Float32 rounding between scan backends stays far below this: the weights or the "
            "computation differ."
        )
    return diff, tolerance


def _bits(tensor):
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def compare_state_dicts(got, expected, what):
    """Raise `VerificationError` unless ``got`` and ``expected`` have the same keys and every tensor is bit for bit
    equal (same dtype, shape and bytes)."""
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise VerificationError(f"{what}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}.")
    differ = []
    for key, tensor in expected.items():
        other = got[key]
        if other.dtype != tensor.dtype or other.shape != tensor.shape or not torch.equal(_bits(other), _bits(tensor)):
            differ.append(key)
    if differ:
        example = differ[0]
        detail = ""
        if got[example].shape == expected[example].shape and expected[example].is_floating_point():
            delta = (got[example].float() - expected[example].float()).abs().max().item()
            detail = f" (max abs difference in {example}: {delta:.3g})"
        raise VerificationError(
            f"{what}: {len(differ)} of {len(expected)} tensors differ from the in-memory model, e.g. "
            f"{', '.join(differ[:5])}{detail}. Saving and loading must not change a single bit."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Loading a folder as remote code in a fresh process
# ----------------------------------------------------------------------------------------------------------------------

# The child: hf_medmamba made unimportable (so every class must come from the folder's remote code), its own HF_HOME,
# offline. It loads the model and processor with trust_remote_code=True, saves its state dict and its logits for the
# given inputs.
_CHILD_SOURCE = r"""
import importlib.abc, json, sys


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_medmamba" or name.startswith("hf_medmamba."):
            raise ImportError(f"{name} is blocked: this check loads the folder as remote code")
        return None


sys.meta_path.insert(0, _Block())
import torch
import transformers
from safetensors.torch import save_file

spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
model = getattr(transformers, spec["auto_class"]).from_pretrained(spec["folder"], trust_remote_code=True).eval()
report = {"model_class": type(model).__module__ + "." + type(model).__name__}
if spec["processor"]:
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(spec["folder"], trust_remote_code=True)
    report["processor_class"] = type(processor).__module__ + "." + type(processor).__name__
save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, spec["state"])
inputs = torch.load(spec["inputs"], weights_only=True)
with torch.no_grad():
    outputs = {name: model(x).logits for name, x in inputs.items()}
torch.save(outputs, spec["outputs"])
report["hf_medmamba_imported"] = any(m == "hf_medmamba" or m.startswith("hf_medmamba.") for m in sys.modules)
print(json.dumps(report))
"""

_BASE_AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoBackbone")


def head_auto_class(folder):
    """The task Auto class named in a folder's ``config.json`` ``auto_map`` (e.g. AutoModelForImageClassification)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        raise VerificationError(f"{folder} has no config.json.")
    auto_map = json.loads(config_file.read_text(encoding="utf-8")).get("auto_map") or {}
    heads = [name for name in auto_map if name not in _BASE_AUTO_CLASSES]
    if len(heads) != 1 or not {"AutoConfig", "AutoModel"} <= set(auto_map):
        raise VerificationError(
            f"{config_file}: auto_map must name AutoConfig, AutoModel and one task class, got {sorted(auto_map)}."
        )
    return heads[0]


def run_remote_code(folder, inputs, timeout=600):
    """Load ``folder`` with ``trust_remote_code=True`` in a fresh Python process that cannot import hf_medmamba.

    Returns (its logits for each named input, its state dict, the child's report)."""
    from safetensors.torch import load_file

    folder = Path(folder).resolve()
    auto_class = head_auto_class(folder)
    with tempfile.TemporaryDirectory(prefix="hf_medmamba_verify_") as work:
        work = Path(work)
        torch.save(dict(inputs), work / "inputs.pt")
        spec = {
            "folder": str(folder),
            "auto_class": auto_class,
            "processor": (folder / "preprocessor_config.json").is_file(),
            "inputs": str(work / "inputs.pt"),
            "outputs": str(work / "outputs.pt"),
            "state": str(work / "state.safetensors"),
        }
        (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
        env.pop("HF_MEDMAMBA_SCAN_BACKEND", None)
        env.update(HF_HOME=str(work / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD_SOURCE, str(work / "spec.json")],
                env=env,
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise VerificationError(f"loading {folder} as remote code took more than {timeout} s.") from None
        if proc.returncode != 0:
            tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
            raise VerificationError(f"{folder} does not load with trust_remote_code=True in a fresh process: {tail}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        outputs = torch.load(work / "outputs.pt", weights_only=True)
        state = load_file(work / "state.safetensors")
    if report["hf_medmamba_imported"] or not report["model_class"].startswith("transformers_modules."):
        raise VerificationError(f"the fresh process did not use the folder's remote code: {report}")
    return outputs, state, report


def verification_input(config, batch=2):
    """A fixed input (seed 0) of the model's channel count, 2x the stages' size multiple (64 for the presets)."""
    side = 2 * config.patch_size * 2 ** (len(config.depths) - 1)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, config.num_channels, side, side, generator=generator)


def load_tensor(path):
    """A tensor saved with torch.save (weights_only) or safetensors (its only / first tensor)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return next(iter(tensors.values()))
    value = torch.load(path, map_location="cpu", weights_only=True)
    if not torch.is_tensor(value):
        raise VerificationError(f"{path} holds a {type(value).__name__}, expected a tensor.")
    return value


def _activate(logits, reference_is):
    if reference_is == "logits":
        return logits
    if reference_is == "probabilities":
        return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
    raise ValueError(f"reference_is must be 'logits' or 'probabilities', got {reference_is!r}.")


def _reference_diff(got, expected, what):
    if tuple(got.shape) != tuple(expected.shape):
        raise VerificationError(f"{what}: shape {tuple(got.shape)} vs expected {tuple(expected.shape)}.")
    return (got.float() - expected.float()).abs().max().item()


def check_reference(model, reference_input, reference_output, reference_is="logits", what="the converted model"):
    """Max abs difference between ``model`` on the reference input and the reference output (outputs of the original
    upstream code); raises above `REFERENCE_ATOL`."""
    with torch.no_grad():
        got = _activate(model(load_tensor(reference_input)).logits, reference_is)
    diff = _reference_diff(got, load_tensor(reference_output), "output")
    if not diff <= REFERENCE_ATOL:
        raise VerificationError(
            f"{what} differs from the reference output by {diff:.3g} (max abs; tolerance {REFERENCE_ATOL:g}, "
            f"compared as {reference_is})."
        )
    return diff


def verify_folder(folder, model=None, reference_input=None, reference_output=None, reference_is="logits"):
    """Check a saved folder, loaded as remote code in a fresh process, against ``model`` (or, without it, the folder
    loaded here with hf_medmamba's classes): its state dict bit for bit (`compare_state_dicts`) and its logits on a
    fixed input (`outputs_match`). With a reference input/output pair (from the original upstream code) both must
    agree with it to `REFERENCE_ATOL`. Returns a dict of the measured differences; raises `VerificationError`."""
    folder = Path(folder)
    if model is None:  # hf_medmamba is imported (this module is part of it), so its classes are registered
        import transformers

        model = getattr(transformers, head_auto_class(folder)).from_pretrained(folder).eval()
    inputs = {"fixed": verification_input(model.config)}
    result = {}
    if reference_input is not None or reference_output is not None:
        if reference_input is None or reference_output is None:
            raise VerificationError("give both --reference-input and --reference-output.")
        inputs["reference"] = load_tensor(reference_input)
        result["reference_max_abs_diff"] = check_reference(model, reference_input, reference_output, reference_is)
    with torch.no_grad():
        local = {name: model(x).logits for name, x in inputs.items()}
    remote, state, report = run_remote_code(folder, inputs)
    compare_state_dicts(state, model.state_dict(), "the folder loaded as remote code in a fresh process")
    diffs = [outputs_match(remote[n], local[n], f"the folder loaded as remote code ({n} input)") for n in inputs]
    result["remote_max_abs_diff"] = max(diff for diff, _ in diffs)
    result["remote_tolerance"] = min(tolerance for _, tolerance in diffs)
    result["state_dict_identical"] = True
    if "reference" in inputs:
        remote_ref = _reference_diff(_activate(remote["reference"], reference_is), load_tensor(reference_output), "")
        result["remote_reference_max_abs_diff"] = remote_ref
        if not remote_ref <= REFERENCE_ATOL:
            raise VerificationError(f"the remote-code model differs from the reference output by {remote_ref:.3g}.")
    result.update(report)
    return result

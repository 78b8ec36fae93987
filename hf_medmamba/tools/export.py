"""Deployment export of MedMamba, VMamba and VM-UNet: `torch.export` programs and ONNX files checked with onnxruntime.

The compiled scan kernels (the CPU kernel behind ctypes, mamba-ssm's CUDA kernel) cannot be traced. For the duration
of an export the model is switched to the pure-PyTorch scan backend ``"export"`` (see
`hf_medmamba.scan_export`: one ONNX ``Scan`` node per selective scan) and restored afterwards, through
``model.scan_backend_context``.

The exported graph takes ``pixel_values`` of shape (batch, channels, height, width) and returns the logits:
(batch, num_labels) for the classifiers, (batch, num_outputs, height, width) for VM-UNet. The height and width are
those given at export time (or, with ``dynamic_spatial=True``, any multiple of the model's downsampling factor, 32 for
the presets); the batch is dynamic or fixed. Pre- and post-processing (the image processor) stay outside.

This module is not part of the Hub remote code: no modeling file imports it. Usage::

    from hf_medmamba.tools.export import export_onnx, verify_onnx

    path = export_onnx(model, "medmamba.onnx", image_size=224)
    check = verify_onnx(path, model, processor(images, return_tensors="pt")["pixel_values"], image_processor=processor)
    print(check.summary())  # OK: ... max |logits(onnx) - logits(torch)| = ..., predicted labels: identical
"""

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .verification import OUTPUT_ATOL, OUTPUT_RTOL


EXPORT_BACKEND = "export"
DEFAULT_OPSET = 18
"""ONNX opset of `export_onnx`: the lowest the ONNX exporter's operator library (torchlib) targets."""

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """A model or a setting that cannot be exported; the message says why and what to do instead."""


# ----------------------------------------------------------------------------------------------------------------------
# Preparing the model
# ----------------------------------------------------------------------------------------------------------------------


def _image_hw(image_size):
    """``224`` or ``(224, 224)`` -> (224, 224)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or a (height, width) pair of ints, got {image_size!r}.")
    return size


def _check_exportable(model):
    if not hasattr(model, "scan_backend_context"):
        raise ExportError(
            f"{type(model).__name__} is not an hf_medmamba model (no scan_backend_context); export handles "
            "MedMambaForImageClassification, VMambaForImageClassification and VMUNetForSegmentation."
        )
    if model.config.scan_backend == "mamba_ssm":
        raise ExportError(
            "this model is forced to the 'mamba_ssm' scan backend. mamba-ssm's CUDA kernel is a compiled extension "
            "that torch.export and ONNX cannot trace; export uses the pure-PyTorch scan formulation 'export' instead "
            "(same results to float32 rounding). Call model.set_scan_backend('auto') before exporting; the runtime "
            "backend is restored after the export."
        )


def input_multiple(model):
    """The factor the height and width must be multiples of (VM-UNet pads to it; the classifiers require it)."""
    return model.config.size_multiple


def _dynamic_shapes(model, height, width, dynamic_batch, dynamic_spatial):
    """torch.export's ``dynamic_shapes`` for the one input: a symbolic batch and/or multiples of `input_multiple`."""
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1)
    if dynamic_spatial:
        multiple = input_multiple(model)
        if height % multiple or width % multiple:
            raise ExportError(
                f"with dynamic_spatial the height and width are exported as multiples of {multiple} (the model's "
                f"downsampling factor), so the example size must be one: got {height} x {width}. Pass such an "
                f"image_size, or export at the fixed size {height} x {width} with dynamic_spatial=False."
            )
        dims[2] = multiple * torch.export.Dim("height_blocks", min=1)
        dims[3] = multiple * torch.export.Dim("width_blocks", min=1)
    return (dims,) if dims else None


@contextlib.contextmanager
def _eval_mode(model):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


class LogitsOnly(nn.Module):
    """``pixel_values -> logits`` of a model: the signature of the exported graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values, return_dict=True).logits


def example_input(model, image_size, batch_size=1, seed=0):
    """A random (batch, num_channels, height, width) float32 input for ``model``."""
    height, width = _image_hw(image_size)
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, model.config.num_channels, height, width)
    device = next(model.parameters()).device
    return torch.randn(shape, generator=generator).to(device)


# ----------------------------------------------------------------------------------------------------------------------
# torch.export and ONNX
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the ONNX exporter's notes that do not concern these models (torchvision ops, a pytree deprecation)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_program(model, image_size, batch_size=1, dynamic_batch=True, dynamic_spatial=False):
    """A `torch.export.ExportedProgram` of ``pixel_values -> logits`` traced at ``image_size``.

    With ``dynamic_batch`` the batch dimension is symbolic (any size >= 1; the trace uses a batch of at least 2, since
    a batch of 1 would be specialised); otherwise the program accepts exactly ``batch_size`` images. The height and
    width are fixed to ``image_size`` unless ``dynamic_spatial``, which makes them any multiple of `input_multiple`
    (``image_size`` must then be one). The model is switched to the ``"export"`` scan backend and eval mode during the
    trace and restored afterwards.
    """
    height, width = _image_hw(image_size)
    _check_exportable(model)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    dynamic_shapes = _dynamic_shapes(model, height, width, dynamic_batch, dynamic_spatial)
    example = example_input(model, (height, width), max(batch_size, 2) if dynamic_batch else batch_size)
    with _eval_mode(model), torch.no_grad():
        model(pixel_values=example[:1])  # the model's own checks of the input, with their messages, before tracing
        with model.scan_backend_context(EXPORT_BACKEND):
            return torch.export.export(LogitsOnly(model), (example,), dynamic_shapes=dynamic_shapes, strict=False)


def export_onnx(model, path, image_size, batch_size=1, dynamic_batch=True, opset=DEFAULT_OPSET, dynamic_spatial=False):
    """Export ``pixel_values -> logits`` to one ONNX file with the dynamo-based exporter; returns its path.

    The graph is traced by `export_program` (same arguments) and translated by ``torch.onnx.export(..., dynamo=True)``
    at ``opset`` (18 or later), weights included in the file. Input ``pixel_values``, output ``logits``.
    """
    if not (isinstance(opset, int) and opset >= DEFAULT_OPSET):
        raise ValueError(
            f"opset must be an int >= {DEFAULT_OPSET} (the ONNX exporter's operator library), got {opset!r}."
        )
    program = export_program(model, image_size, batch_size, dynamic_batch, dynamic_spatial)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter's passes re-run the graph: under autograd the scan op fails on symbolic sizes, hence no_grad.
    with torch.no_grad(), _quiet_exporter():
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=True,
            verbose=False,
        )
    onnx_program.save(str(path), external_data=False)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Verification with onnxruntime
# ----------------------------------------------------------------------------------------------------------------------


def onnx_session(path, num_threads=None):
    """An onnxruntime CPU session for ``path`` (``num_threads`` intra-op threads, onnxruntime's default if None).

    Idle worker threads sleep instead of spinning, so that the session does not take CPU from other work in the
    process (PyTorch, in `verify_onnx` and the benchmark).
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("verifying an ONNX file needs onnxruntime: pip install 'hf-medmamba[export]'.") from err
    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predictions(logits, image_processor=None):
    """Class indices (classification) or label maps (segmentation, via the processor's post-processing if given)."""
    if logits.dim() == 2:
        return logits.argmax(-1)
    if image_processor is not None and hasattr(image_processor, "post_process_semantic_segmentation"):
        return torch.stack(image_processor.post_process_semantic_segmentation(logits))
    return (logits[:, 0] >= 0).long() if logits.shape[1] == 1 else logits.argmax(1)  # sigmoid >= 0.5, or argmax


@dataclass
class OnnxCheck:
    """What `verify_onnx` found: ``ok`` when the logits agree within ``tolerance`` (``atol + rtol * max |torch
    logits|``, the rule of `hf_medmamba.tools.verification`) and the predictions are identical."""

    task: str
    num_images: int
    max_abs_diff: float
    tolerance: float
    disagreements: int
    onnx_logits: torch.Tensor
    torch_logits: torch.Tensor

    @property
    def ok(self):
        return self.max_abs_diff <= self.tolerance and self.disagreements == 0

    def summary(self):
        what = "predicted labels" if self.task == "classification" else "masks after post-processing"
        agreement = "identical" if self.disagreements == 0 else f"{self.disagreements} differ"
        unit = "images" if self.task == "classification" else "pixels"
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{verdict}: {self.num_images} images, max |logits(onnx) - logits(torch)| = {self.max_abs_diff:.2e} "
            f"(limit {self.tolerance:.1e}), {what}: {agreement}" + ("" if self.disagreements == 0 else f" ({unit})")
        )


def _run_in_batches(fn, pixel_values, batch_size, fixed_batch=None):
    """``fn`` over chunks of ``batch_size`` rows, concatenated; with a ``fixed_batch`` graph the last chunk is padded
    (with copies of its last image) to that size and the padding dropped from the result."""
    outputs = []
    for start in range(0, len(pixel_values), batch_size):
        chunk = pixel_values[start : start + batch_size]
        rows = len(chunk)
        if fixed_batch is not None and rows < fixed_batch:
            chunk = torch.cat([chunk, chunk[-1:].expand(fixed_batch - rows, *chunk.shape[1:])])
        outputs.append(fn(chunk)[:rows])
    return torch.cat(outputs)


def verify_onnx(
    path,
    model,
    pixel_values,
    atol=OUTPUT_ATOL,
    image_processor=None,
    batch_size=None,
    num_threads=None,
    rtol=OUTPUT_RTOL,
):
    """Run the ONNX file in onnxruntime (CPU) on ``pixel_values`` and compare with the model in PyTorch eager mode:
    the logits must agree within ``atol + rtol * max |torch logits|``.

    The PyTorch side runs with the model's own scan backend (the compiled kernel by default). Classification compares
    the predicted classes, segmentation the masks after post-processing (``image_processor``'s
    ``post_process_semantic_segmentation`` if given, else sigmoid >= 0.5 or argmax). Both sides run ``batch_size``
    images at a time (all at once if None; a graph exported with a fixed batch always gets its own batch size).
    Returns an `OnnxCheck`.
    """
    session = onnx_session(path, num_threads)
    graph_input = session.get_inputs()[0]
    fixed_batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None
    pixel_values = pixel_values.detach().float().cpu()
    batch_size = fixed_batch or batch_size or len(pixel_values)

    def run_onnx(chunk):
        return torch.from_numpy(session.run(None, {graph_input.name: chunk.numpy()})[0])

    device = next(model.parameters()).device

    def run_torch(chunk):
        return model(pixel_values=chunk.to(device), return_dict=True).logits.float().cpu()

    onnx_logits = _run_in_batches(run_onnx, pixel_values, batch_size, fixed_batch)
    with _eval_mode(model), torch.no_grad():
        torch_logits = _run_in_batches(run_torch, pixel_values, batch_size)
    if onnx_logits.shape != torch_logits.shape:
        raise ExportError(
            f"the ONNX graph returned logits of shape {tuple(onnx_logits.shape)}, PyTorch {tuple(torch_logits.shape)}."
        )
    task = "classification" if torch_logits.dim() == 2 else "segmentation"
    disagreements = int((predictions(onnx_logits, image_processor) != predictions(torch_logits, image_processor)).sum())
    return OnnxCheck(
        task=task,
        num_images=len(pixel_values),
        max_abs_diff=(onnx_logits - torch_logits).abs().max().item(),
        tolerance=atol + rtol * torch_logits.abs().max().item(),
        disagreements=disagreements,
        onnx_logits=onnx_logits,
        torch_logits=torch_logits,
    )


__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_BACKEND",
    "ExportError",
    "LogitsOnly",
    "OnnxCheck",
    "example_input",
    "export_onnx",
    "export_program",
    "input_multiple",
    "onnx_session",
    "predictions",
    "verify_onnx",
]

"""`torch.compile`: the scan backends are operators of the package's custom-op scheme (`hf_medmamba.scan_ops`), so a
compiled block or model has no graph break from the scan; the operators pass `torch.library.opcheck`; a compiled model
(inductor) equals eager (slow)."""

import sys
import types

import pytest
import torch

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
    scan_kernels,
)
from hf_medmamba import selective_scan as ss
from hf_medmamba.modeling_medmamba import MedMambaBlock
from hf_medmamba.scan_ops import existing_op
from hf_medmamba.vss_layers import VSSBlock

from .conftest import make_inputs, rel_err


TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "drop_path_rate": 0.0}


def graph_breaks(fn, *args):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [reason.reason.splitlines()[0] for reason in explanation.break_reasons]


@pytest.mark.parametrize("backend", ["cpu_kernel", "chunked", "reference"])
@pytest.mark.parametrize("block", [VSSBlock, MedMambaBlock])
def test_no_graph_break_inside_a_block(block, backend):
    config = MedMambaConfig(**TINY, num_labels=3, scan_backend=backend)
    module = block(config, 16).eval()
    count, reasons = graph_breaks(module, torch.randn(2, 6, 7, 16))  # odd, non-square grid
    assert count == 0, reasons


@pytest.mark.parametrize("backend", ["cpu_kernel", "chunked"])
@pytest.mark.parametrize("kind", ["medmamba", "vmunet"])
def test_whole_tiny_models_have_no_graph_break(kind, backend):
    if kind == "medmamba":
        model = MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3, scan_backend=backend))
    else:
        labels = {0: "background", 1: "lesion"}
        config = VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], id2label=labels, sigmoid_head=True)
        model = VMUNetForSegmentation(config.__class__(**{**config.to_dict(), "scan_backend": backend}))
    count, reasons = graph_breaks(model.eval(), torch.randn(2, 3, 64, 64))
    assert count == 0, reasons  # input checks, scan dispatch and the scan operators all trace


@pytest.mark.parametrize("kind", ["medmamba", "vmunet"])
def test_with_labels_the_only_graph_breaks_are_the_label_checks(kind):
    """Validating the labels (values in range, no raw {0, 255} masks) reads them: two data-dependent breaks, both in
    `hf_medmamba.validation`; the model, the scan and the loss trace."""
    x = torch.randn(2, 3, 64, 64)
    if kind == "medmamba":
        model, labels, check = (
            MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3)),
            torch.tensor([0, 2]),
            "check_class_labels",
        )
    else:
        config = VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], id2label={0: "b", 1: "l"}, sigmoid_head=True)
        model, labels, check = (
            VMUNetForSegmentation(config),
            torch.randint(0, 2, (2, 64, 64)),
            "check_segmentation_labels",
        )
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model.eval())(x, labels=labels)
    assert explanation.graph_break_count == 2
    assert [reason.user_stack[-1].name for reason in explanation.break_reasons] == [check, check]


def test_the_scan_operators_are_registered_once():
    torch.zeros(1)  # the operators exist once the backends' modules are imported
    for name in ("cpu_scan_forward", "cpu_scan_backward", "chunked_scan_forward", "chunked_scan_backward"):
        assert existing_op(name) is not None, name
    assert existing_op("mamba_ssm_scan_forward") is not None


@pytest.mark.parametrize("backend", ["cpu_kernel", "chunked"])
def test_scan_operators_pass_opcheck(backend):
    """Fake (meta) implementations, schemas and autograd registrations agree with the real kernels."""
    inp = make_inputs(2, 8, 37, 16, 2)
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    B, C = leaves["B"], leaves["C"]
    if backend == "chunked":
        from hf_medmamba import scan_chunked

        op = scan_chunked._chunked_scan_forward
        args = (leaves["u"], torch.nn.functional.softplus(leaves["delta"]).detach().requires_grad_(), leaves["A"], B, C)
    else:
        kernel = scan_kernels.cpu_kernel()
        u, delta, A, bc, D, bias = kernel._prepare(leaves["u"], leaves["delta"], leaves["A"], B, C, leaves["D"],
                                                   leaves["delta_bias"])  # fmt: skip
        A, bc = (t.detach().requires_grad_() for t in (A, bc))
        op = existing_op("cpu_scan_forward")
        args = (u, delta, A, bc, D, bias, None, [], kernel.library_id, 0, 0, True, True)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---------------------------------------------------------------------------------------------------------------------
# mamba-ssm through its operator, with a stand-in kernel on CPU
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def stand_in_mamba_ssm(monkeypatch):
    """An importable mamba_ssm whose ``selective_scan_fn`` is the reference scan (mamba-ssm's semantics)."""
    calls = []

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, last=False):
        calls.append(torch.is_grad_enabled())
        return ss.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, last, backend="reference")

    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = selective_scan_fn
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    scan_kernels.mamba_ssm_kernel.cache_clear()
    yield calls
    scan_kernels.mamba_ssm_kernel.cache_clear()


def test_mamba_ssm_operator_values_gradients_and_no_graph_break(stand_in_mamba_ssm):
    inp = make_inputs(2, 8, 21, 4, 2, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    grads = []
    for fn in (scan_kernels.scan_mamba_ssm, ss.scan_reference):
        leaves = {k: inp[k].clone().requires_grad_() for k in names}
        y, last = fn(*(leaves[k] for k in names), True)
        (y.square().sum() + last.sum()).backward()
        grads.append([leaves[k].grad for k in names])
    for name, got, expected in zip(names, *grads):
        assert rel_err(got, expected) <= 1e-10, name
    assert stand_in_mamba_ssm == [False, True]  # forward without autograd; backward runs it again with autograd

    def step(u, delta, A, B, C):
        y, last = scan_kernels.scan_mamba_ssm(u, delta, A, B, C, None, None, None, True)
        return y.sum() + last.sum()

    args = [inp[k].float() for k in ("u", "delta", "A", "B", "C")]
    count, reasons = graph_breaks(step, *args)
    assert count == 0, reasons


# ---------------------------------------------------------------------------------------------------------------------
# Inductor
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu_kernel", "chunked"])
@pytest.mark.parametrize("kind", ["medmamba", "vmunet"])
def test_inductor_compiled_model_equals_eager(kind, backend):
    torch.manual_seed(0)
    if kind == "medmamba":
        model = MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3, scan_backend=backend))
        labels = torch.tensor([0, 2])
    else:
        config = VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], id2label={0: "b", 1: "l"}, sigmoid_head=True,
                              scan_backend=backend)  # fmt: skip
        model = VMUNetForSegmentation(config)
        labels = torch.randint(0, 2, (2, 64, 64))
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    eager = model(x, labels=labels)
    eager.loss.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor")(x, labels=labels)
    compiled.loss.backward()
    assert (compiled.logits - eager.logits).abs().max() <= 1e-4
    for name, p in model.named_parameters():
        assert (p.grad - expected[name]).abs().max() <= 1e-4 * max(1.0, expected[name].abs().max().item()), name

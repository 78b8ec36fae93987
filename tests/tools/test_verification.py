"""The verification rules of `hf_medmamba.tools.verification`: weights bit for bit, outputs within float32 rounding.

Float32 rounding between scan backends must pass; a one-entry weight change, a wrong scan-direction order and a dropped
bias must fail. The deepest presets convert and pass their own fresh-process verification (``slow``).
"""

import pytest
import torch

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMambaConfig,
    VMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
)
from hf_medmamba.tools.folders import write_folder
from hf_medmamba.tools.key_maps import MEDMAMBA_PREFIXES, VMUNET_PREFIXES, map_prefixes
from hf_medmamba.tools.verification import (
    OUTPUT_ATOL,
    OUTPUT_RTOL,
    VerificationError,
    compare_state_dicts,
    output_tolerance,
    outputs_match,
    verify_folder,
)

from ..conftest import (
    TINY,
    perturb,
    run_script,
    upstream_case,
    upstream_case_kwargs,
    upstream_medmamba,
    upstream_vmamba,
)


def micro_model(case, backend="auto"):
    """The upstream micro case's model (perturbed upstream weights) with ``backend``, and its input."""
    root = upstream_case(case)
    upstream = upstream_case_kwargs(root)
    if case.startswith("medmamba"):
        config = MedMambaConfig(depths=upstream["depths"], dims=upstream["dims"], num_labels=3, scan_backend=backend)
        model, prefixes = MedMambaForImageClassification(config), MEDMAMBA_PREFIXES
    else:
        config = VMUNetConfig(
            depths=upstream["depths"],
            depths_decoder=upstream["depths_decoder"],
            dims=upstream["dims"],
            id2label={0: "background", 1: "lesion"},
            sigmoid_head=True,
            scan_backend=backend,
        )
        model, prefixes = VMUNetForSegmentation(config), VMUNET_PREFIXES
    model.load_state_dict(map_prefixes(torch.load(root / "state_dict.pth", weights_only=True), prefixes))
    return model.eval(), torch.load(root / "input.pt", weights_only=True)


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_tolerance_is_absolute_plus_relative_to_the_largest_expected_value():
    expected = torch.tensor([[-3.0, 1.0], [0.5, 2.0]])
    assert output_tolerance(expected) == pytest.approx(OUTPUT_ATOL + 3 * OUTPUT_RTOL)
    diff, tolerance = outputs_match(expected + 3e-4, expected, "x")
    assert diff == pytest.approx(3e-4, rel=1e-3) and tolerance == pytest.approx(4e-4)
    with pytest.raises(VerificationError, match=r"differs by 0\.0005 .*= 0\.0004\)"):
        outputs_match(expected + 5e-4, expected, "x")
    with pytest.raises(VerificationError, match="differs by nan"):
        outputs_match(expected * float("nan"), expected, "x")
    with pytest.raises(VerificationError, match="shape"):
        outputs_match(expected[0], expected, "x")


# ---------------------------------------------------------------------------------------------------------------------
# Weights: bit for bit
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["medmamba_micro", "vmunet_micro"])
def test_a_one_entry_change_of_1e3_in_any_tensor_fails_the_state_dict_check(case):
    model, _ = micro_model(case)
    expected = model.state_dict()
    compare_state_dicts({k: v.clone() for k, v in expected.items()}, expected, "copy")
    for key, tensor in expected.items():
        changed = {k: v.clone() for k, v in expected.items()}
        flat = changed[key].view(-1)
        flat[flat.numel() // 2] += 1e-3 if tensor.is_floating_point() else 1
        with pytest.raises(VerificationError, match=f"1 of {len(expected)} tensors differ.*{key}"):
            compare_state_dicts(changed, expected, "changed")


def test_state_dict_check_names_missing_keys_and_dtype_changes():
    expected = {"a": torch.zeros(3), "b": torch.ones(2)}
    with pytest.raises(VerificationError, match=r"missing keys \['b'\]"):
        compare_state_dicts({"a": torch.zeros(3)}, expected, "x")
    with pytest.raises(VerificationError, match="b"):
        compare_state_dicts({"a": torch.zeros(3), "b": torch.ones(2, dtype=torch.float64)}, expected, "x")


# ---------------------------------------------------------------------------------------------------------------------
# Outputs: backend rounding passes, real errors fail
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["medmamba_micro", "vmunet_micro"])
def test_scan_backends_agree_within_the_output_tolerance(case):
    outputs = {}
    for backend in ("reference", "chunked", "cpu_kernel"):
        model, x = micro_model(case, backend)
        outputs[backend] = logits(model, x)
    outputs_match(outputs["chunked"], outputs["cpu_kernel"], "chunked vs kernel")
    outputs_match(outputs["reference"], outputs["cpu_kernel"], "reference vs kernel")


def swap_directions(model, first=1, second=3):
    """Every SS2D's per-direction parameters of directions ``first`` and ``second`` exchanged: the same model with the
    two scan orders swapped."""
    for name, module in model.named_modules():
        if not name.endswith("self_attention"):
            continue
        E = module.d_inner
        with torch.no_grad():
            for param in (module.x_proj_weight, module.dt_projs_weight, module.dt_projs_bias):
                param[[first, second]] = param[[second, first]].clone()
            for param in (module.A_logs, module.Ds):
                rows = param.view(4, E, *param.shape[1:])
                rows[[first, second]] = rows[[second, first]].clone()
    return model


def drop_step_size_bias(model):
    for name, module in model.named_modules():
        if name.endswith("self_attention"):
            with torch.no_grad():
                module.dt_projs_bias.zero_()
    return model


@pytest.mark.parametrize("case", ["medmamba_micro", "vmunet_micro"])
@pytest.mark.parametrize(
    ("break_model", "what"),
    [
        (lambda m: swap_directions(m, 1, 3), "column-major and reversed column-major swapped"),
        (lambda m: swap_directions(m, 0, 2), "row-major and reversed row-major swapped"),
        (drop_step_size_bias, "the scan's step-size bias dropped"),
    ],
    ids=["swap-1-3", "swap-0-2", "no-dt-bias"],
)
def test_wrong_direction_order_or_dropped_bias_fails_the_output_check(case, break_model, what):
    model, x = micro_model(case)
    expected = logits(model, x)
    got = logits(break_model(micro_model(case)[0]), x)
    with pytest.raises(VerificationError, match="differs by"):
        outputs_match(got, expected, what)


def test_verify_folder_catches_a_weight_change_after_saving(tmp_path):
    model = perturb(MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3)))
    write_folder(model, MedMambaImageProcessor.for_model(model.config), tmp_path / "ok")  # verifies
    with torch.no_grad():
        model.head.bias[0] += 1e-3  # the in-memory model no longer equals the folder
    with pytest.raises(VerificationError, match=r"1 of \d+ tensors differ.*head\.bias"):
        verify_folder(tmp_path / "ok", model)


# ---------------------------------------------------------------------------------------------------------------------
# The deepest presets convert and pass their own verification
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "preset", "argv"),
    [
        ("convert_medmamba", "medmamba-b", ["{checkpoint}", "{out}", "--labels", "a,b,c"]),
        ("convert_vmamba", "vmamba-s", ["classifier", "{checkpoint}", "{out}"]),
        ("convert_vmamba", "vmunet-default", ["vmunet-init", "{checkpoint}", "{out}", "--preset", "vmunet-default"]),
    ],
)
def test_deepest_presets_convert_and_verify(script, preset, argv, tmp_path, capsys):
    if preset == "medmamba-b":
        model = MedMambaForImageClassification(MedMambaConfig.from_preset(preset, num_labels=3))
        source = upstream_medmamba(perturb(model))
    else:  # a VMamba-S v0 checkpoint, for the classifier and for VM-UNet's initialisation
        source = {"model": upstream_vmamba(perturb(VMambaForImageClassification(VMambaConfig.from_preset("vmamba-s"))))}
    torch.save(source, tmp_path / "upstream.pth")
    paths = {"checkpoint": tmp_path / "upstream.pth", "out": tmp_path / "out"}
    status, stdout, stderr = run_script(script, [a.format(**paths) for a in argv], capsys)
    assert status == 0, stderr
    assert "verified: remote code in a fresh process matches (weights bit for bit" in stdout

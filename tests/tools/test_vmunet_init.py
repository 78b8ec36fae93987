"""VMamba v0 -> VM-UNet initialisation (`hf_medmamba.tools.vmunet_init`): upstream's ``load_from`` rules tensor by
tensor, its counts on the presets, refusals, the config's labels and the conversion script's report."""

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard

from hf_medmamba import VMambaConfig, VMambaForImageClassification, VMUNetConfig, VMUNetForSegmentation
from hf_medmamba.tools.checkpoints import unwrap_state_dict
from hf_medmamba.tools.errors import ConversionError
from hf_medmamba.tools.vmunet_init import init_vmunet_from_vmamba, plan_vmunet_init, vmunet_config_for_init

from ..conftest import (
    perturbed_medmamba,
    perturbed_vmamba,
    read_key_list,
    run_script,
    upstream_medmamba,
    upstream_vmamba,
)


DECODER_KEY = re.compile(r"^vmunet\.layers_up\.(\d)\.blocks\.(\d+)\.(.+)$")
RANDOM_GROUPS = re.compile(r"^(vmunet\.layers_up\.[123]\.upsample\.|vmunet\.final_up\.|final_conv\.)")


def expected_source(model_key):
    """The checkpoint tensor upstream's load_from copies into ``model_key`` (None: left at its initialisation)."""
    if model_key.startswith(("vmunet.patch_embed.", "vmunet.layers.")):
        return model_key[len("vmunet.") :]
    match = DECODER_KEY.match(model_key)
    if match:
        return f"layers.{3 - int(match[1])}.blocks.{match[2]}.{match[3]}"
    return None


def test_vmamba_s_into_vmunet_paper_follows_load_from_tensor_by_tensor():
    shapes = read_key_list("vmamba_s_ckpt_keys.txt")
    generator = torch.Generator().manual_seed(0)
    ema = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    training_state = {"model": {k: torch.zeros(s) for k, s in shapes.items()}, "model_ema": ema, "epoch": 238}
    state_dict, entry = unwrap_state_dict(training_state, ema=True)
    model, report = init_vmunet_from_vmamba(state_dict, VMUNetConfig.from_preset("vmunet-paper"), entry, "vmunet-paper")
    assert (report.model_tensors, report.checkpoint_tensors) == (222, 446)
    assert (len(report.encoder), len(report.decoder), len(report.never_loaded)) == (117, 91, 14)
    assert report.decoder_candidates == 438
    assert (len(report.skipped_encoder), len(report.skipped_decoder)) == (329, 347)
    weights = model.state_dict()
    never_loaded = []
    for key, tensor in weights.items():
        source = expected_source(key)
        if source is None or source not in ema:
            never_loaded.append(key)
            continue
        assert {**report.encoder, **report.decoder}[key] == source
        assert torch.equal(tensor, ema[source]), key
    assert sorted(never_loaded) == sorted(report.never_loaded)
    assert all(RANDOM_GROUPS.match(k) for k in never_loaded)
    assert (
        report.decoder["vmunet.layers_up.0.blocks.1.self_attention.A_logs"] == "layers.3.blocks.1.self_attention.A_logs"
    )
    assert report.decoder["vmunet.layers_up.3.blocks.0.ln_1.weight"] == "layers.0.blocks.0.ln_1.weight"
    assert "vmunet.layers_up.3.blocks.1.ln_1.weight" not in weights  # decoder stage 3 has one block
    assert "layers.2.blocks.2.ln_1.weight" in report.skipped_encoder  # VMamba-S blocks beyond the model's depth
    assert "norm.weight" in report.skipped_encoder and "head.weight" in report.skipped_encoder
    assert "layers.0.downsample.reduction.weight" in report.skipped_decoder
    summary = report.summary()
    assert "encoder: loaded 117" in summary and "decoder: loaded 91 of 438" in summary
    assert "14 model tensors (final_conv 2, final_up 3, upsample 9)" in summary


def test_vmamba_s_into_vmunet_default_counts():
    with torch.device("meta"):
        model = VMUNetForSegmentation(VMUNetConfig.from_preset("vmunet-default"))
    report = plan_vmunet_init(
        {k: v.shape for k, v in model.state_dict().items()}, read_key_list("vmamba_s_ckpt_keys.txt")
    )
    assert (report.model_tensors, len(report.encoder), len(report.decoder), len(report.never_loaded)) == (
        417,
        208,
        195,
        14,
    )


def test_vmunet_init_refuses_other_widths():
    state = upstream_vmamba(perturbed_vmamba())
    with pytest.raises(ConversionError, match=r"needs \(96, 3, 4, 4\)"):
        init_vmunet_from_vmamba(state, VMUNetConfig.from_preset("vmunet-paper"))
    with pytest.raises(ConversionError, match="this is an upstream MedMamba"):
        init_vmunet_from_vmamba(upstream_medmamba(perturbed_medmamba()), VMUNetConfig.from_preset("vmunet-paper"))


def test_vmunet_init_config_labels():
    config = vmunet_config_for_init("vmunet-paper", id2label={0: "bg", 1: "a", 2: "b"})
    assert (config.num_labels, config.sigmoid_head, config.depths_decoder) == (3, False, [2, 2, 2, 1])
    assert vmunet_config_for_init("vmunet-paper", num_labels=2).sigmoid_head
    with pytest.raises(ConversionError, match="disagrees"):
        vmunet_config_for_init("vmunet-paper", id2label={0: "a", 1: "b"}, num_labels=3)


def test_vmunet_init_script_reports_and_writes_a_folder(tmp_path, capsys):
    with torch.device("meta"):
        shapes = {
            k: v.shape
            for k, v in upstream_vmamba(
                VMambaForImageClassification(VMambaConfig(depths=[1, 1, 1, 1], num_labels=1000))
            ).items()
        }
    generator = torch.Generator().manual_seed(0)
    torch.save({"model": {k: torch.randn(s, generator=generator) for k, s in shapes.items()}}, tmp_path / "vmamba.pth")
    out = tmp_path / "init"
    status, stdout, stderr = run_script(
        "convert_vmamba", ["vmunet-init", tmp_path / "vmamba.pth", out, "--no-verify"], capsys
    )
    assert status == 0, stderr
    # one block per VMamba stage: the paper preset's second encoder blocks and three decoder blocks have no source
    assert "encoder: loaded 65" in stdout and "decoder: loaded 52" in stdout
    assert "warning: 91 encoder/decoder tensors have no source" in stdout
    readme = (out / "README.md").read_text()
    assert "Not trained for segmentation" in readme and "encoder: loaded 65" in readme
    assert ModelCard.load(out / "README.md").data.license == "mit"  # the VMamba weights' licence
    assert json.loads((out / "preprocessor_config.json").read_text())["normalization_mode"] == "isic"

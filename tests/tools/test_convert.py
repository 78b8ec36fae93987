"""Converters: upstream checkpoints (fake ones with upstream key names, and the reference cases produced by the original
code) -> verified hf_medmamba folders through the scripts; architecture inference, refusals, strict loading, class
names. Safe loading, VM-UNet's load_from rules and folder writing have their own test files."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from hf_medmamba import MedMambaConfig, MedMambaForImageClassification
from hf_medmamba.configuration_vmunet import SYNAPSE_LABELS
from hf_medmamba.tools.architecture import (
    detect_architecture,
    infer_medmamba_config,
    infer_vmamba_config,
    infer_vmunet_config,
)
from hf_medmamba.tools.convert import convert_medmamba_state_dict
from hf_medmamba.tools.errors import ConversionError
from hf_medmamba.tools.labels import read_id2label, resolve_id2label
from hf_medmamba.tools.verification import check_reference

from ..conftest import (
    MEDMAMBA_CASES,
    REPO,
    SCRIPTS,
    TINY,
    VMUNET_CASES,
    load_script,
    logits,
    perturb,
    perturbed_medmamba,
    perturbed_vmamba,
    perturbed_vmunet,
    read_key_list,
    run_script,
    upstream_case,
    upstream_case_kwargs,
    upstream_medmamba,
    upstream_vmamba,
    upstream_vmunet,
)


def meta_tensors(shapes):
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Reference data: the original upstream code's outputs, converted through the scripts
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", MEDMAMBA_CASES)
def test_medmamba_reference_converts_verified_in_a_fresh_process(case, tmp_path, capsys):
    root = upstream_case(case)
    out = tmp_path / "medmamba-ref"
    argv = [root / "state_dict.pth", out, "--labels", "a,b,c"]
    argv += ["--reference-input", root / "input.pt", "--reference-output", root / "output.pt"]
    status, stdout, stderr = run_script("convert_medmamba", argv, capsys)
    assert status == 0, stderr
    assert "verified: remote code in a fresh process matches" in stdout
    assert "reference output matches" in stdout
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    expected = torch.load(root / "output.pt", weights_only=True)
    assert (logits(model, torch.load(root / "input.pt", weights_only=True)) - expected).abs().max() <= 1e-4
    upstream = upstream_case_kwargs(root)
    assert model.config.depths == upstream["depths"] and model.config.dims == upstream["dims"]
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".py") == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert not list(tmp_path.glob("*partial*"))


@pytest.mark.parametrize("case", VMUNET_CASES)
def test_vmunet_reference_converts_to_logits_and_probabilities(case, tmp_path, capsys):
    root = upstream_case(case)
    out = tmp_path / "vmunet-ref"
    argv = [root / "state_dict.pth", out, "--no-verify", "--reference-input", root / "input.pt"]
    status, stdout, stderr = run_script("convert_vmunet", [*argv, "--reference-output", root / "logits.pt"], capsys)
    assert status == 0, stderr
    assert "reference output matches" in stdout
    model = AutoModelForSemanticSegmentation.from_pretrained(out).eval()
    x = torch.load(root / "input.pt", weights_only=True)
    got = logits(model, x)
    assert (got - torch.load(root / "logits.pt", weights_only=True)).abs().max() <= 1e-4
    assert (torch.sigmoid(got) - torch.load(root / "output.pt", weights_only=True)).abs().max() <= 1e-4
    config = model.config
    assert (config.depths, config.depths_decoder, config.sigmoid_head) == ([1, 1, 1, 1], [1, 1, 1, 1], True)
    assert config.id2label == {0: "background", 1: "lesion"}
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor["normalization_mode"], processor["mask_mode"]) == ("isic", "binary")
    # upstream's VMUNet.forward returns sigmoid probabilities for one class: compared with --reference-is
    argv = [*argv, "--reference-output", root / "output.pt", "--overwrite"]
    status, _, stderr = run_script("convert_vmunet", argv, capsys)  # as logits: must fail, before writing
    assert status == 1
    assert "differs from the reference output" in stderr and len(stderr.strip().splitlines()) == 1
    assert (out / "config.json").is_file() and not list(tmp_path.glob("*partial*"))
    assert check_reference(model, root / "input.pt", root / "output.pt", reference_is="probabilities") <= 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# MedMamba
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "labels"), [("medmamba-t", 6), ("medmamba-s", 4), ("medmamba-b", 9)])
def test_medmamba_presets_are_inferred_from_shapes(preset, labels):
    with torch.device("meta"):
        model = MedMambaForImageClassification(MedMambaConfig.from_preset(preset, num_labels=labels))
    config, found = infer_medmamba_config(upstream_medmamba(model))
    assert found == preset
    assert (config.depths, config.dims, config.num_labels) == (model.config.depths, model.config.dims, labels)


def test_medmamba_t_key_list_is_medmamba_t():
    config, preset = infer_medmamba_config(meta_tensors(read_key_list("medmamba_t_state_dict.txt")))
    assert preset == "medmamba-t"
    assert config.num_labels == 6 and config.num_channels == 3 and config.dt_rank == "auto"


def test_medmamba_custom_round_trip_with_imagefolder_classes(tmp_path, capsys):
    source = perturb(
        MedMambaForImageClassification(MedMambaConfig(**{**TINY, "depths": [1, 2, 1, 1]}, num_channels=1, num_labels=4))
    )
    state = {f"module.{k}": v for k, v in upstream_medmamba(source).items()}  # DataParallel prefix
    torch.save(state, tmp_path / "MedMambaNet.pth")
    classes = tmp_path / "train"
    for name in ("normal", "Benign", "malignant", "cyst"):
        (classes / name).mkdir(parents=True)
    (classes / "notes.txt").write_text("not a class")
    out = tmp_path / "out"
    argv = [tmp_path / "MedMambaNet.pth", out, "--imagefolder", classes, "--no-verify", "--image-size", 96]
    status, stdout, stderr = run_script("convert_medmamba", argv, capsys)
    assert status == 0, stderr
    assert "preset custom" in stdout
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "Benign", 1: "cyst", 2: "malignant", 3: "normal"}  # sorted, as ImageFolder
    assert (model.config.depths, model.config.num_channels) == ([1, 2, 1, 1], 1)
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(logits(model, x), logits(source, x), rtol=0, atol=1e-6)
    processor = AutoImageProcessor.from_pretrained(out)
    assert processor.num_channels == 1 and processor.size["height"] == 96
    assert "MedMambaNet.pth" in (out / "README.md").read_text()


def test_pre_april_2024_medmamba_is_refused_with_a_clear_message(tmp_path):
    old = {
        "patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
        "layers.0.blocks.0.conv33conv33conv11.0.weight": torch.zeros(48, 48, 3, 3),
        "layers.0.blocks.0.finalconv11.weight": torch.zeros(96, 96, 1, 1),
        "head.weight": torch.zeros(6, 768),
    }
    torch.save(old, tmp_path / "old.pth")
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "convert_medmamba.py"), str(tmp_path / "old.pth"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "finalconv11" in lines[0] and "before 2024-04-07" in lines[0] and "not supported" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("script", "build", "expected"),
    [
        ("convert_medmamba", lambda: upstream_vmamba(perturbed_vmamba()), "VMamba v0"),
        ("convert_medmamba", lambda: upstream_vmunet(perturbed_vmunet()), "convert_vmunet.py"),
        ("convert_vmunet", lambda: upstream_medmamba(perturbed_medmamba()), "convert_medmamba.py"),
        ("convert_vmunet", lambda: perturbed_vmunet().state_dict(), "already in hf_medmamba's format"),
    ],
)
def test_wrong_checkpoints_are_refused(tmp_path, capsys, script, build, expected):
    torch.save(build(), tmp_path / "ckpt.pth")
    status, _, stderr = run_script(script, [tmp_path / "ckpt.pth", tmp_path / "out", "--no-verify"], capsys)
    assert status == 1
    assert expected in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_vmamba_v2_checkpoints_are_recognised():
    keys = {"patch_embed.0.weight": torch.zeros(1), "layers.0.blocks.0.op.A_logs": torch.zeros(1)}
    assert detect_architecture(keys) == "vmamba-v2"


def test_missing_unexpected_and_mis_shaped_tensors_are_listed():
    state = upstream_medmamba(perturbed_medmamba())
    broken = dict(state)
    del broken["layers.1.blocks.0.self_attention.Ds"]
    broken["layers.0.blocks.0.conv33conv33conv11.1.weight"] = torch.zeros(4, 8, 3, 3)
    broken["layers.0.blocks.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError) as info:
        convert_medmamba_state_dict(broken)
    message = str(info.value)
    assert "1 missing" in message and "medmamba.layers.1.blocks.0.self_attention.Ds" in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert "1 with the wrong shape" in message
    assert (
        "medmamba.layers.0.blocks.0.conv33conv33conv11.1.weight: checkpoint (4, 8, 3, 3) vs expected (8, 8, 3, 3)"
        in message
    )


def test_class_names_must_match_the_head(tmp_path):
    state = upstream_medmamba(perturbed_medmamba())
    with pytest.raises(ConversionError, match="3 classes but 2 class names"):
        infer_medmamba_config(state, id2label={0: "a", 1: "b"})
    (tmp_path / "list.json").write_text(json.dumps(["x", "y", "z"]))
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "y", "0": "x"}}))
    (tmp_path / "gap.json").write_text(json.dumps({"0": "x", "2": "z"}))
    assert read_id2label(tmp_path / "list.json") == {0: "x", 1: "y", 2: "z"}
    assert read_id2label(tmp_path / "config.json") == {0: "x", 1: "y"}
    with pytest.raises(ConversionError, match=r"0\.\.1"):
        read_id2label(tmp_path / "gap.json")
    with pytest.raises(ConversionError, match="once"):
        resolve_id2label(labels="a,b", labels_json=tmp_path / "list.json")
    with pytest.raises(ConversionError, match="distinct"):
        resolve_id2label(labels="a,a")
    assert resolve_id2label() is None


# ---------------------------------------------------------------------------------------------------------------------
# VMamba v0 -> ImageNet classifier
# ---------------------------------------------------------------------------------------------------------------------


def test_vmamba_s_key_list_is_vmamba_s_with_imagenet_labels():
    config, preset = infer_vmamba_config(meta_tensors(read_key_list("vmamba_s_ckpt_keys.txt")))
    assert preset == "vmamba-s"
    assert (config.depths, config.dims, config.drop_path_rate) == ([2, 2, 27, 2], [96, 192, 384, 768], 0.3)
    assert config.num_labels == 1000
    assert config.id2label[0] == "tench, Tinca tinca" and config.id2label[999].startswith("toilet tissue")


def test_vmamba_classifier_from_the_ema_weights_of_a_training_state(tmp_path, capsys):
    ema_model, plain_model = perturbed_vmamba(num_labels=1000), perturbed_vmamba(num_labels=1000)
    state = {"model": upstream_vmamba(plain_model), "model_ema": upstream_vmamba(ema_model), "epoch": 238}
    torch.save(state, tmp_path / "ckpt_epoch_238.pth")
    out = tmp_path / "vmamba"
    argv = ["classifier", tmp_path / "ckpt_epoch_238.pth", out, "--ema", "--no-verify"]
    status, stdout, stderr = run_script("convert_vmamba", argv, capsys)
    assert status == 0, stderr
    assert "model_ema" in stdout
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(logits(model, x), logits(ema_model, x), rtol=0, atol=1e-6)
    assert model.config.id2label[1] == "goldfish, Carassius auratus"
    assert AutoImageProcessor.from_pretrained(out).crop_size["height"] == 224
    assert "`model_ema`" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# Trained VM-UNet
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_list", "preset", "sigmoid"),
    [("vmunet_state_dict.txt", "vmunet-paper", True), ("vmunet_default_state_dict.txt", "vmunet-default", True)],
)
def test_vmunet_presets_are_inferred_from_key_lists(key_list, preset, sigmoid):
    config, found = infer_vmunet_config(meta_tensors(read_key_list(key_list)))
    assert found == preset
    assert config.sigmoid_head is sigmoid and config.id2label == {0: "background", 1: "lesion"}


def test_vmunet_synapse_head_from_shapes():
    shapes = read_key_list("vmunet_state_dict.txt")
    shapes["vmunet.final_conv.weight"], shapes["vmunet.final_conv.bias"] = (9, 24, 1, 1), (9,)
    config, preset = infer_vmunet_config(meta_tensors(shapes))
    assert preset == "vmunet-synapse"
    assert (config.num_labels, config.sigmoid_head, config.num_channels) == (9, False, 1)
    assert config.id2label == SYNAPSE_LABELS


def test_vmunet_latest_pth_synapse_style_with_overrides(tmp_path, capsys):
    source = perturbed_vmunet(num_labels=9, sigmoid_head=False, num_channels=1)
    latest = {"model_state_dict": upstream_vmunet(source), "optimizer_state_dict": {"state": {}, "param_groups": []}}
    latest.update(epoch=300, min_loss=0.25, min_epoch=280, loss=0.3)
    torch.save(latest, tmp_path / "latest.pth")
    out = tmp_path / "synapse"
    status, stdout, stderr = run_script("convert_vmunet", [tmp_path / "latest.pth", out, "--no-verify"], capsys)
    assert status == 0, stderr
    assert "model_state_dict" in stdout
    model = AutoModelForSemanticSegmentation.from_pretrained(out).eval()
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(logits(model, x), logits(source, x), rtol=0, atol=1e-6)
    assert model.config.id2label[5] == "liver" and model.config.num_channels == 1
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor["normalization_mode"], processor["mask_mode"], processor["size"]["height"]) == (
        "standard",
        "index",
        224,
    )
    argv = [tmp_path / "latest.pth", out, "--no-verify", "--overwrite", "--num-channels", "3"]
    argv += ["--normalization-mode", "isic", "--image-size", "128", "--labels", ",".join(f"c{i}" for i in range(9))]
    status, _, stderr = run_script("convert_vmunet", argv, capsys)
    assert status == 0, stderr
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor["normalization_mode"], processor["num_channels"], processor["size"]["height"]) == ("isic", 3, 128)
    assert AutoModelForSemanticSegmentation.from_pretrained(out).config.id2label[8] == "c8"


@pytest.mark.parametrize("script", ["convert_medmamba", "convert_vmamba", "convert_vmunet", "push_to_hub"])
def test_scripts_have_help(script, capsys):
    with pytest.raises(SystemExit) as info:
        load_script(script).main(["--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_scripts_are_thin():
    """All conversion logic lives in hf_medmamba (tested there); the scripts only parse arguments."""
    for path in SCRIPTS.glob("*.py"):
        source = path.read_text()
        assert "torch.load" not in source and "import torch" not in source, path.name
        assert len(source.splitlines()) < 120, path.name


def test_conversion_is_not_remote_code():
    for path in Path(REPO / "hf_medmamba").glob("*.py"):
        if path.name.startswith(("modeling_", "configuration_", "image_processing_")):
            imported = [
                (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names
            ]
            assert not [m for m in imported if m.startswith(("tools", "hf_medmamba.tools"))], path.name
    code = "import sys, hf_medmamba.configuration_medmamba; print(sorted(m for m in sys.modules if 'tools' in m))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert "hf_medmamba.tools" not in loaded.stdout  # the package and its remote-code modules never import the tooling

"""Converters: upstream checkpoints (fake ones with upstream key names, and the reference cases produced by the original
code) -> verified hf_medmamba folders; architecture inference, refusals, safe loading, and VM-UNet's load_from rules."""

import collections
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification, AutoModelForSemanticSegmentation
from transformers.models.auto.image_processing_auto import AutoImageProcessor

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMambaConfig,
    VMambaForImageClassification,
    VMUNetConfig,
    VMUNetForSegmentation,
)
from hf_medmamba.configuration_vmunet import SYNAPSE_LABELS
from hf_medmamba.convert import (
    ConversionError,
    convert_medmamba_state_dict,
    detect_architecture,
    infer_medmamba_config,
    infer_vmamba_config,
    infer_vmunet_config,
    init_vmunet_from_vmamba,
    load_checkpoint,
    plan_vmunet_init,
    read_id2label,
    resolve_id2label,
    run_cli,
    unwrap_state_dict,
    vmunet_config_for_init,
    write_folder,
)
from hf_medmamba.verification import VerificationError, check_reference

from .conftest import MEDMAMBA_CASES, REPO, VMUNET_CASES, key_list, upstream_case, upstream_case_kwargs


SCRIPTS = REPO / "conversion"
TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128], "drop_path_rate": 0.0}


def load_script(name):
    """A conversion/ script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"conversion_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, argv, capsys):
    """Run a script's main through its CLI wrapper: (exit status, stdout, stderr)."""
    status = run_cli(load_script(name).main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def read_key_list(name):
    return {key: shape for key, (shape, _) in key_list(name).items()}


def meta_tensors(shapes):
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def strip(state_dict, old, new=""):
    return {(new + k[len(old) :] if k.startswith(old) else k): v.clone() for k, v in state_dict.items()}


def upstream_medmamba(model):
    """Our MedMamba's weights under upstream's key names (the inverse of MEDMAMBA_PREFIXES)."""
    return strip(model.state_dict(), "medmamba.")


def upstream_vmamba(model):
    return strip(model.state_dict(), "vmamba.")


def upstream_vmunet(model):
    return strip(model.state_dict(), "final_conv.", "vmunet.final_conv.")


def perturb(model):
    """Non-trivial norms, biases and BatchNorm statistics, so that a wrong mapping cannot match by accident."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and ("norm" in name or "bias" in name or "running" in name or ".0." in name):
                tensor.add_(0.1 * torch.rand(tensor.shape, generator=generator))
    return model.eval()


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


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
        ("convert_medmamba", lambda: upstream_vmamba(tiny_vmamba()), "VMamba v0"),
        ("convert_medmamba", lambda: upstream_vmunet(tiny_vmunet()), "convert_vmunet.py"),
        ("convert_vmunet", lambda: upstream_medmamba(tiny_medmamba()), "convert_medmamba.py"),
        ("convert_vmunet", lambda: tiny_vmunet().state_dict(), "already in hf_medmamba's format"),
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


def tiny_medmamba(**kwargs):
    return perturb(MedMambaForImageClassification(MedMambaConfig(**TINY, num_labels=3, **kwargs)))


def tiny_vmamba(**kwargs):
    kwargs.setdefault("num_labels", 5)
    return perturb(VMambaForImageClassification(VMambaConfig(**TINY, **kwargs)))


def tiny_vmunet(**kwargs):
    if "num_labels" not in kwargs:
        kwargs.setdefault("id2label", {0: "background", 1: "lesion"})
        kwargs.setdefault("sigmoid_head", True)
    return perturb(VMUNetForSegmentation(VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], **kwargs)))


def test_missing_unexpected_and_mis_shaped_tensors_are_listed():
    state = upstream_medmamba(tiny_medmamba())
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
    state = upstream_medmamba(tiny_medmamba())
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
# Checkpoint loading: weights_only, trust_pickle, wrappers
# ---------------------------------------------------------------------------------------------------------------------


class NotAState:
    """A custom object a training script might pickle (unpickling it needs this class: code from the file's source)."""

    def __init__(self, value):
        self.value = value


@pytest.fixture
def fake_yacs(monkeypatch):
    """A ``yacs.config.CfgNode`` stand-in to pickle a VMamba-style training config (yacs is not installed)."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, data=None):
            super().__init__(data or {})
            self.__dict__["__immutable__"] = False

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def test_numpy_scalars_and_yacs_configs_load_with_weights_only(tmp_path, fake_yacs, monkeypatch):
    import numpy as np

    weights = {"w": torch.ones(2)}
    config = fake_yacs({"MODEL": fake_yacs({"TYPE": "vssm", "DEPTHS": [2, 2, 27, 2]}), "SEED": 0})
    state = {"model": weights, "max_accuracy": np.float64(83.5), "epoch": np.int64(238), "config": config}
    torch.save(state, tmp_path / "train_state.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")  # loading must not need (or import) yacs
    loaded = load_checkpoint(tmp_path / "train_state.pth")
    assert loaded["max_accuracy"] == 83.5 and loaded["epoch"] == 238
    assert type(loaded["config"]) is collections.OrderedDict and loaded["config"]["MODEL"]["TYPE"] == "vssm"
    assert "yacs.config" not in sys.modules
    torch.testing.assert_close(unwrap_state_dict(loaded)[0]["w"], weights["w"])


def test_custom_objects_need_trust_pickle(tmp_path, capsys):
    torch.save({"model": {"w": torch.ones(2)}, "extra": NotAState(3)}, tmp_path / "custom.pth")
    with pytest.raises(ConversionError) as info:
        load_checkpoint(tmp_path / "custom.pth")
    message = str(info.value)
    assert "NotAState" in message and "--trust-pickle" in message and "run code" in message
    loaded = load_checkpoint(tmp_path / "custom.pth", trust_pickle=True)
    assert loaded["extra"].value == 3
    assert "weights_only=False" in capsys.readouterr().err
    status, _, stderr = run_script("convert_medmamba", [tmp_path / "custom.pth", tmp_path / "out"], capsys)
    assert status == 1 and "--trust-pickle" in stderr


def test_safetensors_and_wrapped_checkpoints(tmp_path):
    weights = {"layers.0.blocks.0.ln_1.weight": torch.ones(2), "head.weight": torch.zeros(3, 2)}
    save_file(weights, tmp_path / "w.safetensors")
    assert set(load_checkpoint(tmp_path / "w.safetensors")) == set(weights)
    ema = {k: v + 1 for k, v in weights.items()}
    training = {"model": weights, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 3}
    assert unwrap_state_dict(training)[1] == "model"
    state, entry = unwrap_state_dict(training, ema=True)
    assert entry == "model_ema" and torch.equal(state["head.weight"], ema["head.weight"])
    latest = {"model_state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 10, "min_loss": 0.1}
    state, entry = unwrap_state_dict(latest)
    assert entry == "model_state_dict" and set(state) == set(weights)
    with pytest.raises(ConversionError, match="'model_ema' entry, but the checkpoint has none"):
        unwrap_state_dict({"model": weights}, ema=True)
    with pytest.raises(ConversionError, match="cannot find the weights"):
        unwrap_state_dict({"epoch": 3, "optim": {}})
    with pytest.raises(ConversionError, match="not a state dict"):
        unwrap_state_dict(torch.nn.Linear(2, 2))
    with pytest.raises(ConversionError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


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
    ema_model, plain_model = tiny_vmamba(num_labels=1000), tiny_vmamba(num_labels=1000)
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
# VMamba v0 -> VM-UNet initialisation: upstream load_from, tensor by tensor
# ---------------------------------------------------------------------------------------------------------------------

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
    state = upstream_vmamba(tiny_vmamba())
    with pytest.raises(ConversionError, match=r"needs \(96, 3, 4, 4\)"):
        init_vmunet_from_vmamba(state, VMUNetConfig.from_preset("vmunet-paper"))
    with pytest.raises(ConversionError, match="this is an upstream MedMamba"):
        init_vmunet_from_vmamba(upstream_medmamba(tiny_medmamba()), VMUNetConfig.from_preset("vmunet-paper"))


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
    source = tiny_vmunet(num_labels=9, sigmoid_head=False, num_channels=1)
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


# ---------------------------------------------------------------------------------------------------------------------
# Writing folders
# ---------------------------------------------------------------------------------------------------------------------


def test_failed_verification_leaves_nothing_behind(tmp_path):
    model = tiny_medmamba()
    x = torch.randn(1, 3, 64, 64)
    torch.save(x, tmp_path / "input.pt")
    torch.save(logits(model, x) + 1e-3, tmp_path / "wrong.pt")
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match="differs from the reference output"):
        write_folder(
            model,
            MedMambaImageProcessor.for_model(model.config),
            out,
            verify=False,
            reference_input=tmp_path / "input.pt",
            reference_output=tmp_path / "wrong.pt",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.pt", "wrong.pt"]
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConversionError, match="--overwrite"):
        write_folder(model, MedMambaImageProcessor.for_model(model.config), out, verify=False)
    write_folder(model, MedMambaImageProcessor.for_model(model.config), out, verify=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.pt", "out", "wrong.pt"]


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
            source = path.read_text()
            assert "from .convert" not in source and "import convert" not in source, path.name

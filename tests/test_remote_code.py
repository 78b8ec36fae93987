"""Saved folders load as remote code (trust_remote_code=True) in a fresh process that cannot import hf_medmamba.

Under CI's editable install every process could import the package, so the child blocks it with a meta-path finder
and uses its own HF_HOME; it must find every class in ``transformers_modules``. One child checks all folders.

MedMamba's and VMamba's folders also load as `AutoBackbone` from a Hub repository id, served by a local stand-in
(tests/hub_stand_in.py): transformers' ``AutoBackbone.from_pretrained`` asks the Hub whether the repository exists
before anything else, so it takes no local folder (see tests/test_modeling_backbones.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch

from hf_medmamba import (
    MedMambaBackbone,
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMambaBackbone,
    VMambaConfig,
    VMambaForImageClassification,
    VMambaImageProcessor,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
)

from .conftest import REMOTE_FILES, data_path
from .hub_stand_in import LocalHub


CHILD = Path(__file__).with_name("remote_code_child.py")
TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
ALL_STAGES = ["stem", "stage1", "stage2", "stage3", "stage4"]


def save_case(folder, model, processor, task, head_class, image):
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    x = torch.randn(2, model.config.num_channels, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    torch.save(x, folder / "input.pt")
    torch.save(expected, folder / "expected.pt")
    return {
        "folder": str(folder),
        "auto_classes": ["AutoModel", head_class],
        "head_class": head_class,
        "task": task,
        "input": str(folder / "input.pt"),
        "expected": str(folder / "expected.pt"),
        "image": str(image),
    }


def add_backbone_check(case, backbone_class):
    """The child also loads the folder as `AutoBackbone` from the Hub id ``lab/<name>``, all five feature maps."""
    folder = Path(case["folder"])
    backbone = backbone_class.from_pretrained(folder, out_features=ALL_STAGES).eval()
    with torch.no_grad():
        maps = backbone(torch.load(case["input"], weights_only=True)).feature_maps
    torch.save(maps, folder.parent / f"{folder.name}_feature_maps.pt")
    case["backbone"] = {
        "repo_id": f"lab/{folder.name}",
        "out_features": ALL_STAGES,
        "expected": str(folder.parent / f"{folder.name}_feature_maps.pt"),
    }
    return case


def saved_cases(root):
    torch.manual_seed(0)
    classify = ("image-classification", "AutoModelForImageClassification")
    segment = ("image-segmentation", "AutoModelForSemanticSegmentation")
    ultrasound = data_path("busi_cls", "test", "benign", "benign_0003.png")
    lesion = data_path("busi_seg", "test", "images", "benign_0032.png")
    labels = {0: "benign", 1: "malignant", 2: "normal"}
    size = {"height": 64, "width": 64}
    medmamba = MedMambaForImageClassification(MedMambaConfig(**TINY, id2label=labels))
    vmamba = VMambaForImageClassification(VMambaConfig(**TINY, id2label=labels))
    vmunet = VMUNetForSegmentation(
        VMUNetConfig(**TINY, depths_decoder=[1, 1, 1, 1], id2label={0: "background", 1: "lesion"}, sigmoid_head=True)
    )
    return [
        add_backbone_check(
            save_case(root / "medmamba", medmamba, MedMambaImageProcessor(size=size), *classify, ultrasound),
            MedMambaBackbone,
        ),
        add_backbone_check(
            save_case(
                root / "vmamba",
                vmamba,
                VMambaImageProcessor(size={"shortest_edge": 72}, crop_size=size),
                *classify,
                ultrasound,
            ),
            VMambaBackbone,
        ),
        save_case(root / "vmunet", vmunet, VMUNetImageProcessor(size=size), *segment, lesion),
    ]


@pytest.fixture(scope="module")
def fresh_process_reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    cases = saved_cases(root)
    spec = root / "cases.json"
    spec.write_text(json.dumps(cases))
    hub = LocalHub(model_api=True)
    for case in cases:
        if "backbone" in case:
            hub.add(case["backbone"]["repo_id"], case["folder"])
    env = dict(os.environ, HF_HOME=str(root / "hf_home"), PYTHONPATH="", HF_ENDPOINT=hub.endpoint)
    env.update(HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_HUB_OFFLINE", None)  # the Hub is the local stand-in
    hub.serve()
    try:
        proc = subprocess.run(
            [sys.executable, str(CHILD), str(spec)], env=env, capture_output=True, text=True, cwd=root, timeout=600
        )
    finally:
        hub.stop()
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {Path(r["folder"]).name: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("medmamba", "AutoModelForImageClassification"),
        ("vmamba", "AutoModelForImageClassification"),
        ("vmunet", "AutoModelForSemanticSegmentation"),
    ],
)
def test_saved_folder_is_complete(fresh_process_reports, name, head):
    folder = Path(fresh_process_reports[name]["folder"])
    assert REMOTE_FILES[name] <= {p.name for p in folder.glob("*.py")}
    config = json.loads((folder / "config.json").read_text())
    backbone = {"AutoBackbone"} if name in ("medmamba", "vmamba") else set()
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", head} | backbone
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert set(processor["auto_map"]) == {"AutoImageProcessor"}


@pytest.mark.parametrize("name", ["medmamba", "vmamba", "vmunet"])
def test_loads_as_remote_code_in_a_fresh_process(fresh_process_reports, name):
    report = fresh_process_reports[name]
    assert not report["hf_medmamba_imported"]
    assert set(report["classes"]) >= {"AutoModel", "AutoImageProcessor"}
    for auto_name, module in report["classes"].items():
        assert module.startswith("transformers_modules."), (auto_name, module)
    assert report["max_abs_diff"] <= 1e-5  # the pure-PyTorch scan in the child, the compiled kernel here


@pytest.mark.parametrize("name", ["medmamba", "vmamba"])
def test_classification_pipeline_in_a_fresh_process(fresh_process_reports, name):
    results = fresh_process_reports[name]["pipeline"]
    assert sorted(r["label"] for r in results) == ["benign", "malignant", "normal"]
    assert abs(sum(r["score"] for r in results) - 1) < 1e-5


def test_segmentation_pipeline_in_a_fresh_process(fresh_process_reports):
    results = fresh_process_reports["vmunet"]["pipeline"]
    assert results
    assert {r["label"] for r in results} <= {"background", "lesion"}
    with PIL.Image.open(data_path("busi_seg", "test", "images", "benign_0032.png")) as image:
        assert all(r["mask_size"] == list(image.size) for r in results)


@pytest.mark.parametrize("name", ["medmamba", "vmamba"])
def test_auto_backbone_from_the_hub_in_a_fresh_process(fresh_process_reports, name):
    report = fresh_process_reports[name]
    assert report["classes"]["AutoBackbone"].startswith(f"transformers_modules.lab.{name}.")
    assert report["backbone_channels"] == [16, 16, 32, 64, 128]
    assert report["backbone_shapes"] == [[2, 16, 16, 16], [2, 16, 16, 16], [2, 32, 8, 8], [2, 64, 4, 4], [2, 128, 2, 2]]
    assert report["backbone_max_abs_diff"] <= 1e-5

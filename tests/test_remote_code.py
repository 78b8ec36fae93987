"""Saved folders load as remote code (trust_remote_code=True) in a fresh process that cannot import hf_medmamba.

Under CI's editable install every process could import the package, so the child blocks it with a meta-path finder
and uses its own HF_HOME; it must find every class in ``transformers_modules``. One child checks all folders.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_medmamba import MedMambaConfig, MedMambaForImageClassification, MedMambaImageProcessor

from .conftest import shared_path


CHILD = Path(__file__).with_name("remote_code_child.py")
REMOTE_FILES = {
    "configuration_medmamba.py",
    "configuration_ssm.py",
    "modeling_medmamba.py",
    "ss2d.py",
    "selective_scan.py",
    "vss_layers.py",
    "validation.py",
    "image_processing_medmamba.py",
    "image_processing_common.py",
}


def save_medmamba(folder):
    torch.manual_seed(0)
    config = MedMambaConfig(
        depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], id2label={0: "benign", 1: "malignant", 2: "normal"}
    )
    model = MedMambaForImageClassification(config).eval()
    model.save_pretrained(folder)
    MedMambaImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    torch.save(x, folder / "input.pt")
    torch.save(expected, folder / "expected.pt")
    return {
        "folder": str(folder),
        "auto_classes": ["AutoModel", "AutoModelForImageClassification"],
        "head_class": "AutoModelForImageClassification",
        "task": "image-classification",
        "input": str(folder / "input.pt"),
        "expected": str(folder / "expected.pt"),
        "image": str(shared_path("data", "busi_cls", "test", "benign", "benign_0003.png")),
    }


@pytest.fixture(scope="module")
def fresh_process_reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    cases = [save_medmamba(root / "medmamba")]
    spec = root / "cases.json"
    spec.write_text(json.dumps(cases))
    env = dict(os.environ, HF_HOME=str(root / "hf_home"), HF_HUB_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(spec)], env=env, capture_output=True, text=True, cwd=root, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {Path(r["folder"]).name: r for r in json.loads(proc.stdout.strip().splitlines()[-1])}


def test_saved_folder_is_complete(fresh_process_reports, tmp_path_factory):
    folder = Path(fresh_process_reports["medmamba"]["folder"])
    assert {p.name for p in folder.glob("*.py")} >= REMOTE_FILES
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_medmamba.MedMambaImageProcessor"}


def test_medmamba_loads_as_remote_code(fresh_process_reports):
    report = fresh_process_reports["medmamba"]
    assert not report["hf_medmamba_imported"]
    for auto_name, module in report["classes"].items():
        assert module.startswith("transformers_modules."), (auto_name, module)
    assert report["max_abs_diff"] <= 1e-5  # the pure-PyTorch scan in the child, the compiled kernel here
    labels = [r["label"] for r in report["pipeline"]]
    assert sorted(labels) == ["benign", "malignant", "normal"]
    assert abs(sum(r["score"] for r in report["pipeline"]) - 1) < 1e-5

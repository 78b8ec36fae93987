"""Hub tooling: the remote-code safety scan, the dry run (file list, scan, fresh-process load), the single-commit upload
(with the Hub API replaced, no network), and Trainer-saved folders as remote code."""

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_medmamba import (
    MedMambaConfig,
    MedMambaForImageClassification,
    MedMambaImageProcessor,
    VMambaConfig,
    VMambaForImageClassification,
    VMambaImageProcessor,
    VMUNetConfig,
    VMUNetForSegmentation,
    VMUNetImageProcessor,
)
from hf_medmamba.convert import run_cli
from hf_medmamba.hub import NOT_REMOTE_CODE, RemoteCodeError, push_folder, remote_code_files, scan_remote_code
from hf_medmamba.model_card import card_for_folder

from .conftest import REPO
from .test_convert import load_script
from .test_remote_code import REMOTE_FILES


TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
TOKEN = "hf_sentinelTOKENvalue0123456789"


def tiny(kind):
    if kind == "medmamba":
        config = MedMambaConfig(**TINY, id2label={0: "benign", 1: "malignant", 2: "normal"})
        return MedMambaForImageClassification(config), MedMambaImageProcessor.for_model(config, image_size=64)
    if kind == "vmamba":
        config = VMambaConfig(**TINY, num_labels=4)
        return VMambaForImageClassification(config), VMambaImageProcessor.for_model(config)
    config = VMUNetConfig(
        **TINY, depths_decoder=[1, 1, 1, 1], id2label={0: "background", 1: "lesion"}, sigmoid_head=True
    )
    return VMUNetForSegmentation(config), VMUNetImageProcessor.for_model(config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    out = {}
    for kind in ("medmamba", "vmamba", "vmunet"):
        model, processor = tiny(kind)
        model.save_pretrained(root / kind)
        processor.save_pretrained(root / kind)
        out[kind] = root / kind
    return out


def copy_of(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


# ---------------------------------------------------------------------------------------------------------------------
# The remote-code scan
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["medmamba", "vmamba", "vmunet"])
def test_freshly_saved_folders_pass_the_scan(folders, kind):
    report = scan_remote_code(folders[kind])
    assert report.ok, report.format()
    assert set(report.files) == REMOTE_FILES[kind]  # exactly the model / configuration / processing / scan files
    assert set(report.files) <= remote_code_files() and not set(report.files) & set(NOT_REMOTE_CODE)
    notes = " ".join(report.notes)
    assert "hf_medmamba.cpu_scan" in notes and "cpu_scan.py" in notes and "not among the shipped files" in notes
    assert "mamba_ssm" in notes
    assert "passed" in report.format()


BAD_CODE = [
    ("import requests\n", "imports requests (network access)"),
    ("from huggingface_hub import hf_hub_download\n", "Hub downloads"),
    ("def fetch(url):\n    import urllib.request\n\n    return urllib.request.urlopen(url)\n", "network access"),
    ("def run(text):\n    return eval(text)\n", "calls eval() (dynamic code execution)"),
    ("def run(text):\n    exec(text)\n", "calls exec()"),
    ("def run(text):\n    return compile(text, 'x', 'exec')\n", "calls compile()"),
    ("def run(name):\n    return __import__(name)\n", "calls __import__()"),
    ("import pickle\n", "imports pickle (pickle loading"),
    ("def load(path):\n    import torch\n\n    return torch.load(path)\n", "torch.load() without weights_only=True"),
    ("def load(p):\n    import torch\n\n    return torch.load(p, weights_only=False)\n", "without weights_only=True"),
    (
        "def load(p):\n    import numpy as np\n\n    return np.load(p, allow_pickle=True)\n",
        "np.load() with allow_pickle",
    ),
    ("import subprocess\n", "imports subprocess (process execution"),
    ("def run():\n    import os\n\n    os.system('ls')\n", "calls os.system() (process execution)"),
    ("print('loading weights')\n", "import-time side effect: module-level Expr"),
    ("SECRET = open('/etc/hostname').read()\n", "module-level assignment runs code at import"),
    ("for _ in range(3):\n    pass\n", "import-time side effect: module-level For"),
    ("from hf_medmamba import cpu_scan\n", "without a guard"),
    ("from .missing_module import helper\n", "imports .missing_module, which is not in the folder"),
]


@pytest.mark.parametrize(("code", "expected"), BAD_CODE, ids=[e for _, e in BAD_CODE])
def test_unsafe_code_fails_the_scan(folders, tmp_path, code, expected):
    folder = copy_of(folders["medmamba"], tmp_path)
    with open(folder / "validation.py", "a") as f:
        f.write("\n\n" + code)
    report = scan_remote_code(folder)
    assert not report.ok
    assert any(file == "validation.py" and expected in message for file, _, message in report.problems), report.format()
    assert "validation.py:" in report.format() and "FAILED" in report.format()


def test_guarded_and_lazy_imports_and_constants_pass(folders, tmp_path):
    folder = copy_of(folders["medmamba"], tmp_path)
    code = (
        "try:\n    import mamba_ssm\nexcept ImportError:\n    mamba_ssm = None\n\n"
        "LIMITS = {'a': (1, 2), 'b': -3.5 * 2}\nNAMES = tuple(['x', 'y'])\n\n\n"
        "def helper():\n    from hf_medmamba import metrics\n\n    return metrics\n"
    )
    with open(folder / "validation.py", "a") as f:
        f.write("\n\n" + code)
    report = scan_remote_code(folder)
    assert report.ok, report.format()
    assert any("hf_medmamba.metrics" in note and "metrics.py" in note for note in report.notes)


def test_package_modules_that_are_not_remote_code_are_refused(folders, tmp_path):
    folder = copy_of(folders["vmunet"], tmp_path)
    for name in ("convert.py", "cpu_scan.py", "hub.py"):
        shutil.copy(REPO / "hf_medmamba" / name, folder / name)
    (folder / "extra_module.py").write_text('"""Nothing."""\n')
    report = scan_remote_code(folder)
    problems = {file: message for file, _, message in report.problems}
    assert "checkpoint converters" in problems["convert.py"] and "not remote code" in problems["convert.py"]
    assert "compiled CPU-kernel loader" in problems["cpu_scan.py"]
    assert "Hub tooling" in problems["hub.py"]
    assert "not one of hf_medmamba's remote-code files" in problems["extra_module.py"]
    assert scan_remote_code(folder, strict_files=False).problems != []  # convert/cpu_scan/hub stay refused


def test_auto_map_must_point_to_shipped_files(folders, tmp_path):
    folder = copy_of(folders["medmamba"], tmp_path)
    (folder / "image_processing_medmamba.py").unlink()
    report = scan_remote_code(folder)
    assert any(
        file == "preprocessor_config.json" and "image_processing_medmamba.py is not in the folder" in message
        for file, _, message in report.problems
    ), report.format()


# ---------------------------------------------------------------------------------------------------------------------
# Trainer-saved folders, dry run
# ---------------------------------------------------------------------------------------------------------------------


def test_trainer_saved_checkpoint_passes_the_dry_run(tmp_path):
    """A folder written by transformers.Trainer carries the remote-code files and complete auto_maps, and the dry run
    (scan, file list with SHA-256, fresh-process load with trust_remote_code=True) accepts it."""
    model, processor = tiny("medmamba")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    folder = tmp_path / "trained"
    Trainer(model=model, args=args, processing_class=processor).save_model(str(folder))
    assert REMOTE_FILES["medmamba"] <= {p.name for p in folder.glob("*.py")}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_medmamba.MedMambaConfig",
        "AutoModel": "modeling_medmamba.MedMambaModel",
        "AutoModelForImageClassification": "modeling_medmamba.MedMambaForImageClassification",
    }
    processor_map = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoImageProcessor": "image_processing_medmamba.MedMambaImageProcessor"}
    assert (folder / "training_args.bin").is_file()

    with pytest.raises(RemoteCodeError, match=r"README\.md"):
        push_folder(folder, "me/medmamba-busi", dry_run=True, verify=False, log=lambda _: None)
    card_for_folder(folder, repo_id="me/medmamba-busi").save(folder / "README.md")
    lines = []
    result = push_folder(folder, "me/medmamba-busi", dry_run=True, log=lines.append)
    assert result.dry_run and result.commit_url is None
    assert result.verification["remote_max_abs_diff"] <= 1e-5
    assert result.verification["model_class"].startswith("transformers_modules.")
    assert result.verification["processor_class"].startswith("transformers_modules.")
    uploaded = {f.path_in_repo: f for f in result.files}
    expected = {p.name for p in folder.iterdir() if p.name != "training_args.bin"}
    assert set(uploaded) == expected
    output = "\n".join(lines)
    for name, item in uploaded.items():
        assert item.sha256 == hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert item.size == (folder / name).stat().st_size
        assert name in output and item.sha256 in output
    assert "skipped training_args.bin: pickle-format file" in output
    assert "would upload" in output and "remote-code scan" in output and "fresh-process check" in output
    assert "(trained)" in (folder / "README.md").read_text()


# ---------------------------------------------------------------------------------------------------------------------
# Real upload path, with the Hub API replaced (no network)
# ---------------------------------------------------------------------------------------------------------------------


class FakeHfApi:
    """Records the calls push_folder makes; never touches the network."""

    instances = []

    def __init__(self, *args, **kwargs):
        self.calls = []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        contents = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.calls.append(("create_commit", repo_id, {**kwargs, "operations": operations, "contents": contents}))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/0123",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="0123",
        )

    def upload_file(self, *args, **kwargs):  # a second commit would be a bug
        raise AssertionError("push_folder must upload everything in a single create_commit")


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeHfApi


def test_upload_is_one_commit_with_every_file_and_the_card(folders, tmp_path, fake_hub, capsys):
    folder = copy_of(folders["vmunet"], tmp_path, "vmunet-isic")
    card = card_for_folder(folder, repo_id="me/vmunet-isic")
    card.save(folder / "README.md")
    argv = [folder, "--repo-id", "me/vmunet-isic", "--private", "--revision", "dev", "--commit-message", "Add VM-UNet"]
    status = run_cli(load_script("push_to_hub").main, [str(a) for a in [*argv, "--no-verify"]])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert TOKEN not in out + err
    (api,) = fake_hub.instances
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[0][1] == "me/vmunet-isic" and api.calls[0][2]["private"] is True
    assert api.calls[1][2]["branch"] == "dev"
    commit = api.calls[2][2]
    assert commit["revision"] == "dev" and commit["commit_message"] == "Add VM-UNet"
    names = [op.path_in_repo for op in commit["operations"]]
    assert sorted(names) == sorted(p.name for p in folder.iterdir()) and len(names) == len(set(names))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(names)
    assert REMOTE_FILES["vmunet"] <= set(names)
    assert commit["contents"]["README.md"] == (folder / "README.md").read_bytes()
    assert commit["contents"]["README.md"].decode().startswith("---\n") and "Not a medical device" in card.text
    assert "committed: https://huggingface.co/me/vmunet-isic/commit/0123" in out


def test_failed_scan_uploads_nothing(folders, tmp_path, fake_hub, capsys):
    folder = copy_of(folders["medmamba"], tmp_path)
    card_for_folder(folder).save(folder / "README.md")
    with open(folder / "ss2d.py", "a") as f:
        f.write("\nimport socket\n")
    status = run_cli(load_script("push_to_hub").main, [str(folder), "--repo-id", "me/x", "--no-verify"])
    _, err = capsys.readouterr()
    assert status == 1
    assert "ss2d.py" in err and "socket" in err and len(err.strip().splitlines()) == 1
    assert fake_hub.instances == []


def test_write_card_and_dry_run_from_the_script(folders, tmp_path, fake_hub, capsys):
    folder = copy_of(folders["vmamba"], tmp_path, "vmamba-tiny")
    argv = [str(folder), "--repo-id", "me/vmamba-tiny", "--dry-run", "--no-verify", "--write-card"]
    status = run_cli(load_script("push_to_hub").main, argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert (folder / "README.md").is_file() and "wrote" in out and "would upload" in out
    assert fake_hub.instances == []
    assert huggingface_hub.ModelCard.load(folder / "README.md").data.pipeline_tag == "image-classification"


def test_checkpoint_weights_stay_out_of_the_upload(folders, tmp_path):
    folder = copy_of(folders["medmamba"], tmp_path)
    card_for_folder(folder).save(folder / "README.md")
    torch.save({"x": torch.zeros(1)}, folder / "optimizer.pt")
    (folder / "checkpoint-10").mkdir()
    (folder / ".cache").mkdir()
    result = push_folder(folder, "me/x", dry_run=True, verify=False, log=lambda _: None)
    names = {f.path_in_repo for f in result.files}
    assert "optimizer.pt" not in names and not any(n.startswith(("checkpoint", ".")) for n in names)
    assert {name for name, _ in result.skipped} == {"optimizer.pt", "checkpoint-10/", ".cache"}

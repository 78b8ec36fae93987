"""Hub publishing (`hf_medmamba.tools.hub`): the dry run (file list, scan, fresh-process load), the single-commit
upload (with the Hub API replaced, no network), and Trainer-saved folders as remote code."""

import hashlib
import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_medmamba.tools.convert import run_cli
from hf_medmamba.tools.hub import push_folder
from hf_medmamba.tools.model_card import card_for_folder
from hf_medmamba.tools.remote_code_scan import RemoteCodeError

from ..conftest import REMOTE_FILES, copy_of, load_script, tiny_model_and_processor


TOKEN = "hf_sentinelTOKENvalue0123456789"


# ---------------------------------------------------------------------------------------------------------------------
# Trainer-saved tiny_folders, dry run
# ---------------------------------------------------------------------------------------------------------------------


def test_trainer_saved_checkpoint_passes_the_dry_run(tmp_path):
    """A folder written by transformers.Trainer carries the remote-code files and complete auto_maps, and the dry run
    (scan, file list with SHA-256, fresh-process load with trust_remote_code=True) accepts it."""
    model, processor = tiny_model_and_processor("medmamba")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    folder = tmp_path / "trained"
    Trainer(model=model, args=args, processing_class=processor).save_model(str(folder))
    assert REMOTE_FILES["medmamba"] <= {p.name for p in folder.glob("*.py")}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_medmamba.MedMambaConfig",
        "AutoModel": "modeling_medmamba.MedMambaModel",
        "AutoModelForImageClassification": "modeling_medmamba.MedMambaForImageClassification",
        "AutoBackbone": "modeling_medmamba.MedMambaBackbone",
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


def test_upload_is_one_commit_with_every_file_and_the_card(tiny_folders, tmp_path, fake_hub, capsys):
    folder = copy_of(tiny_folders["vmunet"], tmp_path, "vmunet-isic")
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


def test_failed_scan_uploads_nothing(tiny_folders, tmp_path, fake_hub, capsys):
    folder = copy_of(tiny_folders["medmamba"], tmp_path)
    card_for_folder(folder).save(folder / "README.md")
    with open(folder / "ss2d.py", "a") as f:
        f.write("\nimport socket\n")
    status = run_cli(load_script("push_to_hub").main, [str(folder), "--repo-id", "me/x", "--no-verify"])
    _, err = capsys.readouterr()
    assert status == 1
    assert "ss2d.py" in err and "socket" in err and len(err.strip().splitlines()) == 1
    assert fake_hub.instances == []


def test_write_card_and_dry_run_from_the_script(tiny_folders, tmp_path, fake_hub, capsys):
    folder = copy_of(tiny_folders["vmamba"], tmp_path, "vmamba-tiny")
    argv = [str(folder), "--repo-id", "me/vmamba-tiny", "--dry-run", "--no-verify", "--write-card"]
    status = run_cli(load_script("push_to_hub").main, argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert (folder / "README.md").is_file() and "wrote" in out and "would upload" in out
    assert fake_hub.instances == []
    assert huggingface_hub.ModelCard.load(folder / "README.md").data.pipeline_tag == "image-classification"


def test_checkpoint_weights_stay_out_of_the_upload(tiny_folders, tmp_path):
    folder = copy_of(tiny_folders["medmamba"], tmp_path)
    card_for_folder(folder).save(folder / "README.md")
    torch.save({"x": torch.zeros(1)}, folder / "optimizer.pt")
    (folder / "checkpoint-10").mkdir()
    (folder / ".cache").mkdir()
    result = push_folder(folder, "me/x", dry_run=True, verify=False, log=lambda _: None)
    names = {f.path_in_repo for f in result.files}
    assert "optimizer.pt" not in names and not any(n.startswith(("checkpoint", ".")) for n in names)
    assert {name for name, _ in result.skipped} == {"optimizer.pt", "checkpoint-10/", ".cache"}

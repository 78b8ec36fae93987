"""Publishing a converted or trained folder on the Hugging Face Hub: the upload plan (top-level files, no pickles, the
required files present) and `push_folder`, which uploads the folder as one commit after the remote-code scan
(`hf_medmamba.tools.remote_code_scan`) and a fresh-process load check.
"""

from dataclasses import dataclass
from pathlib import Path

from .checkpoints import sha256_file
from .remote_code_scan import RemoteCodeError, ScanReport, scan_remote_code
from .verification import VerificationError, verify_folder


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}


@dataclass
class UploadFile:
    path: Path
    path_in_repo: str
    size: int
    sha256: str


def upload_plan(folder):
    """The files to upload (top-level regular files; no hidden files, no pickle files such as Trainer's
    ``training_args.bin``) and the skipped entries with the reason. Raises when a required file is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RemoteCodeError(f"{folder} is not a directory.")
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            skipped.append((path.name, "hidden"))
        elif path.is_dir():
            skipped.append((path.name + "/", "sub-folder (only the folder's top level is uploaded)"))
        elif path.suffix in PICKLE_SUFFIXES:
            skipped.append((path.name, "pickle-format file (not uploaded; weights go as safetensors)"))
        elif path.is_symlink() or not path.is_file():
            skipped.append((path.name, "not a regular file"))
        else:
            files.append(UploadFile(path, path.name, path.stat().st_size, sha256_file(path)))
    names = {f.path_in_repo for f in files}
    missing = [n for n in ("config.json", "README.md") if n not in names]
    if not ({"model.safetensors", "model.safetensors.index.json"} & names):
        missing.append("model.safetensors")
    if missing:
        hint = (
            " A converted folder has all of them; for a trained folder write the card with "
            "hf_medmamba.tools.model_card.card_for_folder(folder).save(folder / 'README.md') or pass --write-card."
            if "README.md" in missing
            else ""
        )
        raise RemoteCodeError(f"{folder} lacks {missing}.{hint}")
    return files, skipped


def _readable_size(size):
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


@dataclass
class PushResult:
    repo_id: str
    files: list
    skipped: list
    scan: ScanReport
    verification: dict
    dry_run: bool
    commit_url: str | None = None


def push_folder(
    folder,
    repo_id,
    private=False,
    revision=None,
    commit_message=None,
    dry_run=False,
    verify=True,
    api=None,
    log=print,
):
    """Upload a converted or trained folder to the Hub as a single commit.

    Before anything is sent: the file list (`upload_plan`), the remote-code scan (`scan_remote_code`; a failure
    stops here) and, unless ``verify`` is False, a load with ``trust_remote_code=True`` in a fresh process whose
    outputs must equal the folder loaded here (`hf_medmamba.tools.verification.verify_folder`). With ``dry_run``
    nothing is uploaded. The token comes from huggingface_hub's login or ``HF_TOKEN`` and is never printed or stored.
    """
    folder = Path(folder)
    files, skipped = upload_plan(folder)
    scan = scan_remote_code(folder)
    log(scan.format())
    if not scan.ok:
        raise RemoteCodeError(
            "the remote-code scan failed: " + "; ".join(f"{f}:{line}: {m}" for f, line, m in scan.problems)
        )
    verification = {}
    if verify:
        try:
            verification = verify_folder(folder)
        except VerificationError as err:
            raise RemoteCodeError(str(err)) from None
        diff, tolerance = verification["remote_max_abs_diff"], verification["remote_tolerance"]
        log(
            "fresh-process check: loads with trust_remote_code=True, weights identical bit for bit, outputs max abs "
            f"diff {diff:.2e} (tolerance {tolerance:.2e})"
        )
    target = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    log(f"{'would upload' if dry_run else 'uploading'} {len(files)} file(s) to {target} in one commit:")
    for item in files:
        log(f"  {item.path_in_repo:40s} {_readable_size(item.size):>10s}  sha256 {item.sha256}")
    for name, reason in skipped:
        log(f"  skipped {name}: {reason}")
    result = PushResult(repo_id, files, skipped, scan, verification, dry_run)
    if dry_run:
        return result
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.path)) for f in files]
    info = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload {folder.name} (hf_medmamba)",
        revision=revision,
        repo_type="model",
    )
    result.commit_url = getattr(info, "commit_url", None) or str(info)
    log(f"committed: {result.commit_url}")
    return result

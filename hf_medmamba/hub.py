"""Publishing a converted or trained folder on the Hugging Face Hub, and the safety scan of its remote-code files.

`scan_remote_code` reads every ``.py`` file of a saved folder with `ast` (nothing is imported or run) and reports
network access, dynamic code execution, pickle loading, process execution and import-time side effects. `push_folder`
uploads a folder as one commit after the scan and a fresh-process load check. Not part of the remote-code files.
"""

import ast
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .convert import sha256_file
from .verification import VerificationError, verify_folder


# Entry points of the remote code: `save_pretrained` copies these and, transitively, the siblings they import.
REMOTE_CODE_ENTRY_PATTERNS = ("configuration_*.py", "modeling_*.py", "image_processing_*.py")
# Package modules that must never be shipped as remote code (tooling, not model code).
NOT_REMOTE_CODE = {
    "__init__.py": "the package entry point (registers the Auto classes)",
    "cli.py": "the prediction command line",
    "convert.py": "the checkpoint converters",
    "export.py": "the ONNX / torch.export tooling",
    "hub.py": "the Hub tooling",
    "metrics.py": "the evaluation metrics",
    "model_card.py": "the model-card builder",
}

NETWORK_MODULES = {
    "aiohttp",
    "ftplib",
    "http",
    "httpx",
    "huggingface_hub",
    "paramiko",
    "requests",
    "smtplib",
    "socket",
    "telnetlib",
    "urllib",
    "urllib2",
    "urllib3",
    "websocket",
    "websockets",
    "xmlrpc",
}
PICKLE_MODULES = {"_pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "pickle", "shelve"}
PROCESS_MODULES = {"ctypes", "pty", "subprocess"}
DOWNLOAD_FUNCTIONS = {
    "cached_file",
    "cached_files",
    "download_url",
    "download_url_to_file",
    "hf_hub_download",
    "load_state_dict_from_url",
    "snapshot_download",
    "urlopen",
    "urlretrieve",
}
OS_PROCESS_CALLS = {"system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp", "startfile"}
DYNAMIC_CODE = {"compile", "eval", "exec", "__import__"}
# Calls allowed in module-level constant assignments: they build values and touch nothing outside the process.
CONSTANT_CALLS = {
    "dict",
    "frozenset",
    "get_logger",
    "getLogger",
    "list",
    "logging.get_logger",
    "logging.getLogger",
    "np.array",
    "numpy.array",
    "set",
    "tuple",
    "TypeVar",
    "typing.TypeVar",
}
OPTIONAL_DEPENDENCIES = {
    "mamba_ssm": "mamba-ssm's CUDA scan kernel (optional; used on GPUs when installed)",
    "hf_medmamba": "the installed hf_medmamba package",
}


@lru_cache(maxsize=1)
def remote_code_files():
    """The flat files a saved folder may contain: the package's configuration / modeling / image-processing modules
    and every sibling they import at module level (``from .x import``), transitively (e.g. ``ss2d.py``,
    ``selective_scan.py``). Lazy imports inside functions (the compiled-kernel loader) are not followed."""
    package = Path(__file__).parent
    todo = sorted({p.name for pattern in REMOTE_CODE_ENTRY_PATTERNS for p in package.glob(pattern)})
    found = set()
    while todo:
        name = todo.pop()
        if name in found or not (package / name).is_file():
            continue
        found.add(name)
        tree = ast.parse((package / name).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(node.module.split(".")[0] + ".py")
    return frozenset(found)


class RemoteCodeError(VerificationError):
    """A folder whose remote code fails the safety scan, or that is not ready to upload."""


@dataclass
class ScanReport:
    """Result of `scan_remote_code`: problems (the scan fails if there is any) and notes (informational)."""

    folder: Path
    files: list = field(default_factory=list)
    problems: list = field(default_factory=list)  # (file, line, message)
    notes: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def format(self):
        lines = [
            f"remote-code scan of {self.folder}: {len(self.files)} .py file(s), "
            f"{'passed' if self.ok else f'FAILED ({len(self.problems)} problem(s))'}"
        ]
        lines += [f"  problem: {file}:{line}: {message}" for file, line, message in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _dotted(node):
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_constant_expression(node):
    """Literals, names, attribute look-ups, containers, operators and calls of `CONSTANT_CALLS` on them."""
    if isinstance(node, ast.Call):
        return _dotted(node.func) in CONSTANT_CALLS and all(
            _is_constant_expression(a) for a in [*node.args, *(k.value for k in node.keywords)]
        )
    if isinstance(node, (ast.Lambda, ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
        return False
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        return False
    return all(_is_constant_expression(child) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))


def _module_level_problem(node):
    """Why a module-level statement is an import-time side effect, or None when it is a definition-like statement."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)):
        return None
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
        return None  # docstring
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        if node.value is None or _is_constant_expression(node.value):
            return None
        return f"module-level assignment runs code at import: {ast.unparse(node)[:80]!r}"
    if isinstance(node, ast.Try):  # guarded optional imports: every branch must itself be definition-like
        for child in [*node.body, *node.orelse, *node.finalbody, *(s for h in node.handlers for s in h.body)]:
            problem = _module_level_problem(child)
            if problem:
                return problem
        return None
    if isinstance(node, ast.If) and _is_constant_expression(node.test):
        for child in [*node.body, *node.orelse]:
            problem = _module_level_problem(child)
            if problem:
                return problem
        return None
    return f"import-time side effect: module-level {type(node).__name__} statement {ast.unparse(node)[:80]!r}"


def _imported_modules(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = "." * node.level + (node.module or "")
        return [base] + [f"{base}.{alias.name}" if node.module else f"{base}{alias.name}" for alias in node.names]
    return []


def _import_problem(module):
    top = module.lstrip(".").split(".")[0] if not module.startswith(".") else ""
    if top in NETWORK_MODULES:
        what = "Hub downloads" if top == "huggingface_hub" else "network access"
        return f"imports {module} ({what})"
    if top in PICKLE_MODULES:
        return f"imports {module} (pickle loading can run arbitrary code)"
    if top in PROCESS_MODULES:
        return f"imports {module} (process execution / native code loading)"
    return None


def _call_problem(call):
    name = _dotted(call.func) or ""
    last = name.rsplit(".", 1)[-1]
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    if isinstance(call.func, ast.Name) and call.func.id in DYNAMIC_CODE:
        return f"calls {call.func.id}() (dynamic code execution)"
    if name in ("builtins.eval", "builtins.exec", "builtins.compile", "importlib.import_module"):
        return f"calls {name}() (dynamic code execution / import)"
    if last in DOWNLOAD_FUNCTIONS or name.startswith("torch.hub."):
        return f"calls {name}() (network download)"
    if name.startswith("os.") and (last in OS_PROCESS_CALLS or last.startswith(("exec", "spawn"))):
        return f"calls {name}() (process execution)"
    if name == "torch.load" or name.endswith("serialization.load"):
        weights_only = keywords.get("weights_only")
        if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            return f"calls {name}() without weights_only=True (pickle loading can run arbitrary code)"
    if name in ("np.load", "numpy.load"):
        allow = keywords.get("allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            return f"calls {name}() with allow_pickle (pickle loading can run arbitrary code)"
    return None


def _scan_file(path, shipped, report):
    name = path.name
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
    except SyntaxError as err:
        report.problems.append((name, err.lineno or 0, f"does not parse: {err.msg}"))
        return
    for node in tree.body:
        problem = _module_level_problem(node)
        if problem:
            report.problems.append((name, node.lineno, problem))
    guarded = set()  # imports inside try blocks or functions: optional / lazy
    for node in ast.walk(tree):
        if isinstance(node, (ast.Try, ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    guarded.add(id(child))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = _imported_modules(node)
            for module in modules:
                problem = _import_problem(module)
                if problem:
                    report.problems.append((name, node.lineno, problem))
                    break
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name in DOWNLOAD_FUNCTIONS:
                        report.problems.append((name, node.lineno, f"imports {alias.name} (network download)"))
            _check_local_import(node, name, shipped, id(node) in guarded, report)
        elif isinstance(node, ast.Call):
            problem = _call_problem(node)
            if problem:
                report.problems.append((name, node.lineno, problem))


def _check_local_import(node, name, shipped, guarded, report):
    """Relative imports must resolve to shipped files; hf_medmamba / optional dependencies only inside guards."""
    if isinstance(node, ast.ImportFrom) and node.level:
        targets = [node.module] if node.module else [alias.name for alias in node.names]
        for target in targets:
            if f"{target.split('.')[0]}.py" not in shipped:
                report.problems.append((name, node.lineno, f"imports .{target}, which is not in the folder"))
        return
    for module in _imported_modules(node):
        top = module.split(".")[0]
        if top not in OPTIONAL_DEPENDENCIES:
            continue
        if not guarded:
            report.problems.append(
                (name, node.lineno, f"imports {module} at module level without a guard; remote code must not need it")
            )
            continue
        if top == "hf_medmamba":
            submodules = [f"{module}.{alias.name}" for alias in node.names] if isinstance(node, ast.ImportFrom) else []
            for full in submodules or [module]:
                leaf = full.split(".")[-1] + ".py"
                if leaf in shipped:
                    continue
                what = NOT_REMOTE_CODE.get(leaf, "a module of the installed package")
                report.notes.append(
                    f"{name}:{node.lineno} imports {full} lazily inside a guarded block: {leaf} ({what}) is not among "
                    "the shipped files, so remote code falls back to the pure-PyTorch scan unless hf_medmamba is "
                    "installed."
                )
        else:
            report.notes.append(f"{name}:{node.lineno} imports {module} lazily: {OPTIONAL_DEPENDENCIES[top]}.")
        return


def _check_auto_maps(folder, shipped, report):
    for json_name in ("config.json", "preprocessor_config.json"):
        path = folder / json_name
        if not path.is_file():
            continue
        auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
        for auto_name, reference in auto_map.items():
            references = reference if isinstance(reference, (list, tuple)) else [reference]
            for ref in references:
                if ref is None:
                    continue
                module = ref.split("--")[-1].rsplit(".", 1)[0]
                if f"{module}.py" not in shipped:
                    report.problems.append(
                        (json_name, 0, f"auto_map {auto_name} -> {ref}, but {module}.py is not in the folder")
                    )


def scan_remote_code(folder, strict_files=True):
    """Scan a saved folder's ``.py`` files (statically, with `ast`) and its ``auto_map`` entries.

    Problems: network access or Hub downloads, ``exec``/``eval``/``compile``, pickle loading (``pickle``,
    ``torch.load`` without ``weights_only=True``, ``numpy.load`` with ``allow_pickle``), subprocess / ``os.system``,
    module-level statements other than imports, definitions, constant assignments and docstrings, relative imports
    of files that are missing, unguarded imports of hf_medmamba or optional dependencies, package modules that are
    not remote code (`NOT_REMOTE_CODE`), and, with ``strict_files``, any ``.py`` file outside `remote_code_files`.
    Imports inside ``try`` blocks or functions are allowed and reported as notes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RemoteCodeError(f"{folder} is not a directory.")
    files = sorted(folder.glob("*.py"))
    shipped = {path.name for path in files}
    report = ScanReport(folder=folder, files=sorted(shipped))
    for path in files:
        if path.name in NOT_REMOTE_CODE:
            report.problems.append((path.name, 0, f"is {NOT_REMOTE_CODE[path.name]}, not remote code; remove it"))
            continue
        if strict_files and path.name not in remote_code_files():
            report.problems.append((path.name, 0, "is not one of hf_medmamba's remote-code files"))
        _scan_file(path, shipped, report)
    _check_auto_maps(folder, shipped, report)
    if not files:
        report.problems.append(("(folder)", 0, "has no .py files: it cannot load with trust_remote_code=True"))
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Upload
# ----------------------------------------------------------------------------------------------------------------------

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
            "hf_medmamba.model_card.card_for_folder(folder).save(folder / 'README.md') or pass --write-card."
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
    outputs must equal the folder loaded here (`hf_medmamba.convert.verify_folder`). With ``dry_run`` nothing is
    uploaded. The token comes from huggingface_hub's login or ``HF_TOKEN`` and is never printed or stored.
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

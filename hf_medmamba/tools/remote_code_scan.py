"""The static safety scan of a saved folder's remote code: every ``.py`` file is read with `ast` (nothing is imported
or run) and checked for network access, dynamic code execution, pickle loading, process execution, import-time side
effects and files that are not hf_medmamba's remote code; the ``auto_map`` entries must point to shipped files.
"""

import ast
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .verification import VerificationError


# The package folder: its flat modules are the remote code; the modules of its sub-packages never are.
PACKAGE_DIR = Path(__file__).resolve().parent.parent

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
    """The files a saved folder may contain: the flat modules of ``hf_medmamba/`` except ``__init__.py``.

    `save_pretrained` copies a model's, configuration's and processor's modules and the siblings they import; the
    tooling lives in sub-packages, which it never copies."""
    return frozenset(path.name for path in PACKAGE_DIR.glob("*.py") if path.name != "__init__.py")


@lru_cache(maxsize=1)
def not_remote_code():
    """Package modules that must never be shipped, by file name: ``__init__.py`` and every module of a sub-package
    (``convert.py`` -> ``hf_medmamba.tools.convert``), each with what it is."""
    found = {"__init__.py": "the package entry point (registers the Auto classes)"}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.parent != PACKAGE_DIR and path.name not in remote_code_files():
            module = ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
            found.setdefault(path.name, f"the package module {module}")
    return found


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
                what = not_remote_code().get(leaf, "a module of the installed package")
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
    not remote code (`not_remote_code`), and, with ``strict_files``, any ``.py`` file outside `remote_code_files`.
    Imports inside ``try`` blocks or functions are allowed and reported as notes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RemoteCodeError(f"{folder} is not a directory.")
    files = sorted(folder.glob("*.py"))
    shipped = {path.name for path in files}
    report = ScanReport(folder=folder, files=sorted(shipped))
    for path in files:
        if path.name in not_remote_code():
            report.problems.append((path.name, 0, f"is {not_remote_code()[path.name]}, not remote code; remove it"))
            continue
        if strict_files and path.name not in remote_code_files():
            report.problems.append((path.name, 0, "is not one of hf_medmamba's remote-code files"))
        _scan_file(path, shipped, report)
    _check_auto_maps(folder, shipped, report)
    if not files:
        report.problems.append(("(folder)", 0, "has no .py files: it cannot load with trust_remote_code=True"))
    return report

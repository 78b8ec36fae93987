"""The static safety scan of remote code (`hf_medmamba.tools.remote_code_scan`): freshly saved folders pass; network
access, dynamic code, pickle loading, process execution, import-time side effects, tooling modules and dangling
``auto_map`` entries fail; guarded and lazy imports are notes."""

import shutil

import pytest

from hf_medmamba.tools.remote_code_scan import not_remote_code, remote_code_files, scan_remote_code

from ..conftest import REMOTE_FILES, REPO, copy_of


@pytest.mark.parametrize("kind", ["medmamba", "vmamba", "vmunet"])
def test_freshly_saved_folders_pass_the_scan(tiny_folders, kind):
    report = scan_remote_code(tiny_folders[kind])
    assert report.ok, report.format()
    assert set(report.files) == REMOTE_FILES[kind]  # exactly the model / configuration / processing / scan files
    assert set(report.files) <= remote_code_files() and not set(report.files) & set(not_remote_code())
    notes = " ".join(report.notes)
    assert "hf_medmamba.kernels" in notes and "not among the shipped files" in notes
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
    ("from hf_medmamba.kernels import cpu_scan\n", "without a guard"),
    ("from .missing_module import helper\n", "imports .missing_module, which is not in the folder"),
]


@pytest.mark.parametrize(("code", "expected"), BAD_CODE, ids=[e for _, e in BAD_CODE])
def test_unsafe_code_fails_the_scan(tiny_folders, tmp_path, code, expected):
    folder = copy_of(tiny_folders["medmamba"], tmp_path)
    with open(folder / "validation.py", "a") as f:
        f.write("\n\n" + code)
    report = scan_remote_code(folder)
    assert not report.ok
    assert any(file == "validation.py" and expected in message for file, _, message in report.problems), report.format()
    assert "validation.py:" in report.format() and "FAILED" in report.format()


def test_guarded_and_lazy_imports_and_constants_pass(tiny_folders, tmp_path):
    folder = copy_of(tiny_folders["medmamba"], tmp_path)
    code = (
        "try:\n    import mamba_ssm\nexcept ImportError:\n    mamba_ssm = None\n\n"
        "LIMITS = {'a': (1, 2), 'b': -3.5 * 2}\nNAMES = tuple(['x', 'y'])\n\n\n"
        "def helper():\n    from hf_medmamba.tools import metrics\n\n    return metrics\n"
    )
    with open(folder / "validation.py", "a") as f:
        f.write("\n\n" + code)
    report = scan_remote_code(folder)
    assert report.ok, report.format()
    assert any("hf_medmamba.tools.metrics" in note and "metrics.py" in note for note in report.notes)


def test_package_modules_that_are_not_remote_code_are_refused(tiny_folders, tmp_path):
    folder = copy_of(tiny_folders["vmunet"], tmp_path)
    package = REPO / "hf_medmamba"
    kernel_loader = next(package.rglob("cpu_scan.py"))  # the compiled-kernel loader, wherever it lives
    for source in (
        package / "tools" / "convert.py",
        kernel_loader,
        package / "tools" / "hub.py",
        package / "__init__.py",
    ):
        shutil.copy(source, folder / source.name)
    (folder / "extra_module.py").write_text('"""Nothing."""\n')
    report = scan_remote_code(folder)
    problems = {file: message for file, _, message in report.problems}
    assert "hf_medmamba.tools.convert" in problems["convert.py"] and "not remote code" in problems["convert.py"]
    loader = " ".join(message for file, _, message in report.problems if file == "cpu_scan.py")
    assert "hf_medmamba.kernels.cpu_scan" in loader  # a sub-package module: never remote code
    assert "hf_medmamba.tools.hub" in problems["hub.py"]
    assert "package entry point" in problems["__init__.py"]
    assert "not one of hf_medmamba's remote-code files" in problems["extra_module.py"]
    lenient = {file for file, _, _ in scan_remote_code(folder, strict_files=False).problems}
    assert {"convert.py", "cpu_scan.py", "hub.py", "__init__.py"} <= lenient  # refused without strict_files too


def test_auto_map_must_point_to_shipped_files(tiny_folders, tmp_path):
    folder = copy_of(tiny_folders["medmamba"], tmp_path)
    (folder / "image_processing_medmamba.py").unlink()
    report = scan_remote_code(folder)
    assert any(
        file == "preprocessor_config.json" and "image_processing_medmamba.py is not in the folder" in message
        for file, _, message in report.problems
    ), report.format()

"""The README's Python examples run as written (from a scratch folder that sees the repo's examples/)."""

import importlib
import re

import pytest

from .conftest import REPO


BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


ARCHITECTURE = (REPO / "README.md").read_text().split("## Architecture", 1)[1].split("\n## ", 1)[0]
NAMES = sorted(set(re.findall(r"`(hf_medmamba(?:\.\w+)+)`", ARCHITECTURE)))


def test_architecture_section_names_the_backend_rule_and_the_directions():
    for name in (
        "hf_medmamba.selective_scan.resolve_scan_backend",
        "hf_medmamba.scan_directions.scan_orders",
        "hf_medmamba.scan_directions.MERGE_ORDER",
    ):
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_module_and_function_the_architecture_section_lists_exists(name):
    """Each `hf_medmamba.x[.y]` in the section imports: a module, or an attribute of one."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        module, _, attribute = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attribute), name

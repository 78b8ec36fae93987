"""The package's structure: no import cycles inside hf_medmamba, configurations that import no layers and no scan,
one definition of the backend names and of the four scan directions, and modules of a readable size."""

import ast
import subprocess
import sys

import pytest

from .conftest import REPO


PACKAGE = REPO / "hf_medmamba"
MAX_LINES = 450
LONG_FILES_ALLOWED = {"kernels/selective_scan_cpu.cpp"}  # the C++ kernel is exempt (see the architecture issue)


def module_name(path):
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(path):
    """The hf_medmamba modules ``path`` imports at any level of its code (relative or absolute)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "hf_medmamba":
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "hf_medmamba")
    return found


def import_graph():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in internal_imports(path) if t in modules and t != name} for name, path in modules.items()}


def find_cycle(graph):
    """A list of modules that import each other in a ring, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_inside_the_package():
    graph = import_graph()
    assert len(graph) > 20  # the walk found the package's modules
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("config_module", ["configuration_medmamba", "configuration_vmamba", "configuration_vmunet"])
def test_reading_a_configuration_imports_no_layers_and_no_scan(config_module):
    code = (
        "import sys\n"
        f"import hf_medmamba.{config_module}\n"
        "print(sorted(m for m in sys.modules if m.startswith('hf_medmamba')))\n"
    )
    # Import the module file directly (not the package __init__, which registers every model class).
    loader = (
        "import importlib.util, sys, types\n"
        f"pkg = types.ModuleType('hf_medmamba'); pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['hf_medmamba'] = pkg\n"
    )
    out = subprocess.run([sys.executable, "-c", loader + code], capture_output=True, text=True, check=True).stdout
    loaded = set(ast.literal_eval(out.strip().splitlines()[-1]))
    assert loaded <= {
        "hf_medmamba",
        f"hf_medmamba.{config_module}",
        "hf_medmamba.configuration_ssm",
        "hf_medmamba.scan_backends",
    }, loaded


def definitions(name):
    """Files of hf_medmamba that assign or define ``name`` at module level."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                targets = [node.name]
            if name in targets:
                found.append(path.relative_to(PACKAGE).as_posix())
    return found


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("SCAN_BACKENDS", "scan_backends.py"),
        ("scan_orders", "scan_directions.py"),
        ("MERGE_ORDER", "scan_directions.py"),
        ("resolve_scan_backend", "selective_scan.py"),
    ],
)
def test_one_definition(name, home):
    assert definitions(name) == [home]


def test_the_kernel_abi_version_is_written_once():
    hits = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.*")
        if "SCAN_ABI_VERSION 5" in p.read_text(errors="ignore")
    ]
    assert hits == ["kernels/selective_scan_cpu.cpp"]


def test_modules_are_short():
    too_long = {}
    for path in PACKAGE.rglob("*"):
        if path.suffix in (".py", ".cpp") and path.relative_to(PACKAGE).as_posix() not in LONG_FILES_ALLOWED:
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                too_long[path.relative_to(PACKAGE).as_posix()] = lines
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def test_every_module_says_what_it_is_for():
    missing = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))
    ]
    assert not missing, f"modules without a docstring: {missing}"

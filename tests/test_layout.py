"""The package layout's rule: lower layers never import higher ones, and every package imports on its own.

Layers, lowest first: the shared leaf modules (assets, fileio, keys, runtime, sweeps); data; models; probes; training;
reporting; callbacks; cli. Each package may import its own layer and those listed as allowed below: never
training, reporting or cli from models, data or probes, and never cli or training from reporting.
Every import statement counts, those inside functions too.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "ctrain"
LEAVES = {"assets", "fileio", "keys", "runtime", "sweeps"}
ALLOWED = {
    "leaf": LEAVES,
    "data": LEAVES | {"data"},
    "models": LEAVES | {"data", "models"},
    "probes": LEAVES | {"data", "models", "probes"},
    "training": LEAVES | {"data", "models", "probes", "training"},
    "reporting": LEAVES | {"data", "models", "probes", "reporting"},
    "callbacks": LEAVES | {"data", "models", "probes", "reporting", "callbacks"},
    "cli": LEAVES | {"data", "models", "probes", "training", "reporting", "callbacks", "cli"},
}
PACKAGES = sorted(set(ALLOWED) - {"leaf"})


def _layer(path: Path) -> str:
    relative = path.relative_to(SOURCE)
    return relative.parts[0] if len(relative.parts) > 1 else "leaf"


def _imported_parts(path: Path) -> set[str]:
    """The ctrain sub-packages or leaf modules that a file imports, by any import statement."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ctrain":
            names = node.module.split(".")[1:] or [alias.name for alias in node.names]
            parts.update(names[:1] if node.module != "ctrain" else names)
        elif isinstance(node, ast.Import):
            parts.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("ctrain."))
    return parts


def test_every_module_belongs_to_a_known_layer():
    top = {path.stem for path in SOURCE.glob("*.py")} - {"__init__"}
    assert top == LEAVES, "a new top-level module is a leaf only if it imports no package; else put it in one"
    assert {path.name for path in SOURCE.iterdir() if path.is_dir() and (path / "__init__.py").exists()} == set(PACKAGES)


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda path: str(path.relative_to(SOURCE)))
def test_no_upward_import(path):
    layer = _layer(path)
    forbidden = _imported_parts(path) - ALLOWED[layer]
    assert not forbidden, f"{path.relative_to(SOURCE)} ({layer}) imports {sorted(forbidden)}, a higher layer"


# Run by one fresh interpreter: before each package, every ctrain module is dropped from sys.modules, so each package
# is imported first, as by a fresh interpreter (an import circle inside ctrain fails the same way); third-party
# modules stay loaded, which is what saves the torch import per package (about 8 s each on 2 cores).
FRESH_IMPORTS = """
import importlib, json, sys, traceback
results = {}
for package, modules in json.loads(sys.argv[1]).items():
    for name in [name for name in sys.modules if name == "ctrain" or name.startswith("ctrain.")]:
        del sys.modules[name]
    try:
        for name in modules:
            importlib.import_module(name)
        results[package] = ""
    except Exception:
        results[package] = traceback.format_exc()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, str]:
    """For each package, the traceback of importing it and all its modules first ("" when they import)."""
    modules = {
        package: [f"ctrain.{package}"]
        + [
            "ctrain." + ".".join(path.relative_to(SOURCE).with_suffix("").parts)
            for path in sorted((SOURCE / package).rglob("*.py"))
            if path.stem not in ("__init__", "__main__")
        ]
        for package in PACKAGES
    }
    result = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, json.dumps(modules)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_on_its_own(package, fresh_imports):
    """A fresh interpreter imports the package and all its modules without an import circle."""
    assert fresh_imports[package] == "", fresh_imports[package][-2000:]



def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that a file imports by any import statement, inside functions too.

    `from a.b import c` imports the module `a.b.c` where there is one, else `a.b`. Importing a module runs its
    parent packages' __init__ first: those count too, except the file's own parents (already running)."""
    name = _module_name(path, root)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    explicit = found & modules
    parents = {".".join(m.split(".")[:i]) for m in explicit for i in range(1, m.count(".") + 1)}
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
    return (explicit | parents - own) & modules - {name}


def import_cycles(root: Path) -> list[list[str]]:
    """Every group of modules under `root` that import one another in a loop (strongly connected components of the
    import graph, by Tarjan's algorithm), each sorted."""
    files = sorted(root.rglob("*.py"))
    modules = {_module_name(path, root) for path in files}
    graph = {_module_name(path, root): sorted(_imported_modules(path, root, modules)) for path in files}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in graph[node]:
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            group = [stack.pop()]
            while group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_import_circle_among_ctrain_modules():
    """No two ctrain modules import each other, directly or round a loop: an import inside a function only hides a
    circle (the modules still cannot be understood, tested or moved one without the other)."""
    assert import_cycles(SOURCE) == []


def test_the_circle_check_sees_a_circle_hidden_in_a_function(tmp_path):
    package = tmp_path / "ctrain" / "demo"
    package.mkdir(parents=True)
    (tmp_path / "ctrain" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from ctrain.demo.c import h\n")  # a package re-exporting its module: no circle
    (package / "a.py").write_text("from ctrain.demo.b import g\n\ndef f():\n    return g()\n")
    (package / "b.py").write_text("def g():\n    from ctrain.demo import a\n    return a\n")
    (package / "c.py").write_text("import ctrain.demo.a\n\ndef h():\n    return 1\n")
    assert import_cycles(tmp_path / "ctrain") == [["ctrain.demo.a", "ctrain.demo.b"]]

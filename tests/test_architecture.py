"""The dependency direction of DESIGN §3, checked by importing modules in fresh interpreters."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import ROOT

STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 1:
            found.add("." * node.level + (node.module or ""))  # climbs out of its package
    return found


# Modules that read a clock, make ids or randomness, or do I/O: never in the pure core.
IMPURE = {
    "time", "datetime", "random", "secrets", "uuid", "os", "sys", "io", "pathlib", "shutil",
    "tempfile", "socket", "ssl", "select", "selectors", "asyncio", "threading", "multiprocessing",
    "subprocess", "signal", "logging", "sqlite3", "urllib", "http", "glob", "fcntl", "getpass",
}  # fmt: skip

# Which layers each layer of dagnats may import (DESIGN.md §14). `tui` is the console.
LAYERS = {
    "core": set(),
    "errors": set(),
    "processes": set(),
    "ports": {"core", "errors"},
    "nats": {"core", "errors", "ports", "processes"},
    "engine": {"core", "errors", "ports", "nats"},
    "worker": {"core", "errors", "ports", "nats", "processes"},
    "agent": {"core", "errors", "ports", "nats", "worker", "processes"},
    "api": {"core", "errors", "ports", "nats"},
    "testing": {"core", "errors", "ports", "engine", "worker", "api"},
    "app": {"core", "errors", "ports", "nats", "engine", "worker", "agent", "api", "processes", "app"},
    "__init__": {"worker", "api", "app"},  # the public names; Client and embedded() load lazily
    "__main__": {"app"},
}


def _layer_imports(path: Path, root: Path = ROOT) -> set[str]:
    """The dagnats modules a file imports, relative imports resolved (a layer may import itself)."""
    package = list(path.relative_to(root).with_suffix("").parts)[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if module == "dagnats")
    return {m for m in found if m.split(".")[0] == "dagnats" and m != "dagnats"}


def _layer(path: Path) -> str:
    return path.relative_to(ROOT / "dagnats").with_suffix("").parts[0]


def test_core_imports_only_pure_stdlib_and_msgspec():
    for path in sorted((ROOT / "dagnats" / "core").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in STDLIB or top == "msgspec", f"{path.name} imports {name}"
            assert top not in IMPURE, f"{path.name} imports {name}: the core reads no clock and does no I/O"
            assert not name.startswith(".."), f"{path.name} imports {name} from outside the core"


def test_each_layer_imports_only_the_layers_below_it():
    seen = set()
    for path in sorted((ROOT / "dagnats").rglob("*.py")):
        layer = _layer(path)
        seen.add(layer)
        assert layer in LAYERS, f"{path}: a module outside the known layers ({', '.join(LAYERS)})"
        for name in _layer_imports(path):
            other = name.split(".")[1]
            assert other == layer or other in LAYERS[layer], (
                f"{path.relative_to(ROOT)} ({layer}) imports {name} ({other})"
            )
    assert seen >= {"core", "nats", "engine", "worker", "agent", "api", "app"}


def test_the_layer_check_sees_relative_and_absolute_imports(tmp_path):
    """The rule above must bite: a core module importing the store, either way, is found."""
    (tmp_path / "dagnats" / "core").mkdir(parents=True)
    bad = tmp_path / "dagnats" / "core" / "bad.py"
    bad.write_text("from ..nats.store import Store\nfrom dagnats.engine import loop\nfrom . import state\n")
    found = _layer_imports(bad, root=tmp_path)
    assert found == {"dagnats.nats.store", "dagnats.engine", "dagnats.core"}

"""The dependency direction of DESIGN §3, checked by importing modules in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
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


def test_core_imports_only_stdlib_and_msgspec():
    for path in sorted((ROOT / "dagnats" / "core").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top in STDLIB or top == "msgspec", f"{path.name} imports {name}"
            assert not name.startswith(".."), f"{path.name} imports {name} from outside the core"


def test_dagnats_never_imports_tui_or_llm_sdks_at_import_time():
    code = (
        "import sys, dagnats, dagnats.cli, dagnats.client, dagnats.engine, dagnats.serve; "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('tui', 'textual', 'anthropic', 'openai'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
    for path in sorted((ROOT / "dagnats").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in top_level:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] == "tui" for n in names), path
        if path.name != "cli.py":  # the `tui` and `demo` commands import the console lazily
            assert not any(n.split(".")[0] == "tui" for n in _imports(path)), path


def test_console_talks_to_nats_only_through_the_client():
    """tui/ uses dagnats' client and core types, never the engine, store internals or nats."""
    allowed = {
        "dagnats.client",
        "dagnats.errors",
        "dagnats.views",
        "dagnats.names",
        "dagnats.serve",
        "dagnats.connection",
    }
    for path in sorted((ROOT / "tui").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top != "nats", f"{path.name} imports {name}"
            if top == "dagnats" and not name.startswith("dagnats.core"):
                assert name in allowed, f"{path.name} imports {name}"
            assert name not in ("dagnats.engine", "dagnats.worker", "dagnats.timers"), path.name

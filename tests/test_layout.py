"""The package's layout as a property: the command line sits above the library, the library never imports it, and
no two library files import each other (a family registering itself with the registry is the one exception)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "archlab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every module an ``import`` in the file names, at module level or inside a function (not those under
    ``if TYPE_CHECKING:``: annotations only, never run)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # drop the type-checking blocks
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return found


def _archlab_edges() -> dict[str, set[str]]:
    def known(name: str) -> str:
        while name not in MODULES:
            name = name.rpartition(".")[0]
        return name

    return {m: {known(t) for t in _imports(p) if t.split(".")[0] == "archlab"} - {m} for m, p in MODULES.items()}


def test_importing_the_library_loads_neither_the_cli_nor_rich_nor_matplotlib() -> None:
    code = ("import sys, archlab, archlab.analysis, archlab.deploy, archlab.train, archlab.train.loop; "
            "print(sorted(m for m in sys.modules if m == 'archlab.cli' or m.startswith('archlab.cli.') "
            "or m.split('.')[0] in ('rich', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "archlab.cli" and not m.startswith("archlab.cli.")
                                        and m != "archlab.__main__"))
def test_no_library_module_imports_the_cli_or_argparse(name: str) -> None:
    imported = _imports(MODULES[name])
    assert "argparse" not in imported
    assert not any(m == "archlab.cli" or m.startswith("archlab.cli.") for m in imported)


def test_no_import_cycles_but_family_registration() -> None:
    edges = _archlab_edges()
    # A family module imports the registry to register itself, and the registry imports the families to load them.
    for family in (m for m in MODULES if m.startswith("archlab.models.")):
        edges[family].discard("archlab.registry")
    cycles, path, done = [], [], set()

    def visit(node: str) -> None:
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        path.append(node)
        for nxt in sorted(edges[node]):
            visit(nxt)
        path.pop()
        done.add(node)

    for module in sorted(edges):
        visit(module)
    assert cycles == []


def test_the_model_side_does_not_reach_into_training_or_deployment() -> None:
    below = [m for m in MODULES if m.startswith("archlab.models") or m in (
        "archlab.registry", "archlab.cards", "archlab.layers", "archlab.weights", "archlab.pretrained",
        "archlab.preprocessing", "archlab.checkpointing", "archlab.scaling")]
    edges = _archlab_edges()
    for name in below:
        above = {t for t in edges[name]
                 if t.startswith(("archlab.train", "archlab.deploy", "archlab.cli", "archlab.studies"))}
        assert not above, f"{name} imports {sorted(above)}"


def test_help_lists_every_command() -> None:
    from archlab.cli.main import COMMANDS

    out = subprocess.run([sys.executable, "-m", "archlab", "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert f"    {command} " in out.stdout

"""The package's shape: no import cycle, each layer importing only the layers below it, and a CLI
that starts without the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import editstore

PACKAGE = Path(editstore.__file__).parent

# The layers, bottom to top: a module may import its own layer and those below, never one above.
LAYERS = [
    ["editstore.errors"],
    ["editstore.core"],  # objects, records, refs, revisions: no torch
    ["editstore.model"],  # checkpoints, deltas, running a model
    ["editstore.methods"],  # the edit methods, which never see a store
    ["editstore.store"],  # the repository
    ["editstore.compose", "editstore.moments", "editstore.evaluations"],  # composition and checkout, Σ, metrics
    ["editstore.conflicts", "editstore.porcelain"],
    ["editstore.editors", "editstore.behavior", "editstore.trace", "editstore.export", "editstore.fsck"],
    ["editstore.editing", "editstore.merge", "editstore.torture"],
    ["editstore.remote"],  # clone, fetch, pull (which merges) and push
    ["editstore.world"],
    ["editstore"],  # the package's lazy front door
]
HEAVY = ("torch", "transformers", "faiss", "matplotlib", "jsonschema", "safetensors")  # numpy: sqlite-utils loads it


def module_name(path: Path) -> str:
    parts = ["editstore", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it runs: at the top and inside functions, but not in an
    ``if TYPE_CHECKING:`` block (those never execute)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                for alias in child.names:
                    target = f"{source}.{alias.name}"
                    found.add(target if target in modules else source)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: runtime_imports(path, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_package_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def layer(module: str) -> int:
    """The index in LAYERS of the most specific prefix naming ``module``."""
    found = [(len(prefix), i) for i, group in enumerate(LAYERS) for prefix in group
             if module == prefix or module.startswith(prefix + ".")]
    assert found, f"{module} is in no layer: add it to LAYERS"
    return max(found)[1]


def test_each_layer_imports_only_the_layers_below(graph: dict[str, set[str]]) -> None:
    upward = [f"{m} imports {t}" for m, targets in graph.items() for t in targets if layer(t) > layer(m)]
    assert upward == []


def test_an_upward_import_is_found() -> None:
    assert layer("editstore.core.refs") < layer("editstore.store") < layer("editstore.compose.checkout")


def imported_by(code: str) -> set[str]:
    """The top-level names of the modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(out.split())


@pytest.mark.parametrize("code", [
    "import editstore",
    "import editstore_cli.main",
    "from editstore.store import Store",
])
def test_importing_the_cli_and_the_store_loads_no_heavy_library(code: str) -> None:
    assert imported_by(code) & set(HEAVY) == set()


def test_the_everyday_commands_load_no_heavy_library(tmp_path: Path, gpt2_dir: Path) -> None:
    """``log``, ``show``, ``branch``, ``tag`` and ``config`` run on SQLite alone: after each, no heavy
    library is in ``sys.modules``."""
    from editstore import Store

    Store.init(gpt2_dir, tmp_path / "s").close()
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom editstore_cli.main import cli\n"
        f"for args in {[['log'], ['show', 'HEAD'], ['branch'], ['tag'], ['config'], ['log', '--json']]!r}:\n"
        f"    result = CliRunner().invoke(cli, ['--store', {str(tmp_path / 's')!r}, *args])\n"
        "    assert result.exit_code == 0, result.output\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert set(out.split()) & set(HEAVY) == set()


def test_help_loads_not_even_sqlite_utils() -> None:
    """``editstore --help`` imports only the CLI's modules, click and rich: no store code at all."""
    assert "sqlite_utils" not in imported_by("import editstore_cli.main")

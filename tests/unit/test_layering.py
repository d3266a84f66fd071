"""The one-way rule: decomp <- search <- cluster, only cluster imports ray, and no modules import each other."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"decomp": {"search", "cluster", "ray"}, "search": {"cluster", "ray"}, "cluster": set()}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_no_back_edges():
    violations = []
    for package, forbidden in FORBIDDEN.items():
        files = list((ROOT / package).rglob("*.py"))
        assert files, f"package {package} has no files"
        for path in files:
            for name in _imports(path) & forbidden:
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "layering rule broken:\n" + "\n".join(violations)


def test_checker_sees_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("import ray.util\nfrom cluster.cli import app\nfrom . import local\n")
    assert _imports(sample) == {"ray", "cluster"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _edges() -> set[tuple[str, str]]:
    """(importer, imported) between our modules, function-level imports included: `from a.b import c` reaches
    `a.b` and, where it is a module, `a.b.c`."""
    files = [p for package in FORBIDDEN for p in sorted((ROOT / package).rglob("*.py"))]
    modules = {_module(p) for p in files}
    edges = set()
    for path in files:
        module = _module(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            edges.update((module, n) for n in names if n in modules and n != module)
    return edges


def _circles(edges: set[tuple[str, str]], level: str) -> list[list[str]]:
    """Modules (or subpackages: `decomp.latency`, `search.searchers`, ...) that import each other."""
    graph = nx.DiGraph()
    for a, b in edges:
        if level == "subpackage":
            a, b = ".".join(a.split(".")[:2]), ".".join(b.split(".")[:2])
        if a != b and a not in FORBIDDEN and b not in FORBIDDEN:  # a package's __init__ lists its modules
            graph.add_edge(a, b)
    return [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]


def test_modules_and_subpackages_import_no_circle():
    edges = _edges()
    for level in ("module", "subpackage"):
        circles = _circles(edges, level)
        assert not circles, f"{level}s that import each other (lazy imports count): {circles}"


def test_circle_finder_sees_circles(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "FORBIDDEN", {"pkg": set()})
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import thing\n")
    (tmp_path / "pkg" / "b.py").write_text("def thing():\n    from pkg import a\n")  # a lazy import counts
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "c.py").write_text("import pkg.a\n")
    edges = _edges()
    assert ("pkg.b", "pkg.a") in edges and ("pkg.sub.c", "pkg.a") in edges
    assert _circles(edges, "module") == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize(
    "package",
    ["decomp", "decomp.pruning", "decomp.partition", "decomp.latency", "search", "search.searchers", "cluster"],
)
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    assert module.__all__, f"{package} lists no public names"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not have: {missing}"


def test_importing_cluster_starts_nothing_heavy():
    code = "import sys, cluster; print(sorted({'ray', 'torch', 'optuna'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"

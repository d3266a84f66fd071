"""The one-way rule: decomp <- search <- cluster, and only cluster imports ray."""

import ast
from pathlib import Path

import networkx as nx

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


def _decomp_edges() -> set[tuple[str, str]]:
    """(importer, imported) between decomp modules, function-level imports included."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in _files("decomp")}
    edges = set()
    for path in _files("decomp"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            edges.update((module, n) for n in names if n in modules and n != module)
    return edges


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_decomp_modules_and_subpackages_import_no_circle():
    edges = _decomp_edges()
    for level in ("module", "subpackage"):
        graph = nx.DiGraph()
        for a, b in edges:
            if level == "subpackage":
                a, b = ".".join(a.split(".")[:2]), ".".join(b.split(".")[:2])
            if a != b and a != "decomp" and b != "decomp":
                graph.add_edge(a, b)
        circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
        assert not circles, f"{level}s of decomp import each other (lazy imports count): {circles}"

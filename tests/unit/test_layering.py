"""The one-way rule: decomp <- search <- cluster, and only cluster imports ray."""

import ast
from pathlib import Path

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

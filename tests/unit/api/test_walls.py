"""The API's wall (DESIGN.md, the rooms): no module under ``api/`` imports mlflow, ray or
sqlalchemy, at the top or inside a function. It reaches them through ``db`` and the
entry points of ``workers`` (the tracking read interface, the probes, the dispatcher)."""

from __future__ import annotations

import ast
from pathlib import Path

import api

FORBIDDEN = ("mlflow", "ray", "sqlalchemy")


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def crossings(root: Path) -> list[str]:
    """``path:line imports module`` for each forbidden import under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for line, module in imported(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in FORBIDDEN:
                out.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return out


def test_no_module_of_the_api_imports_mlflow_ray_or_sqlalchemy() -> None:
    root = Path(api.__file__).parent
    assert list(root.rglob("*.py")), root
    assert crossings(root) == []


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import json\n"
        "def f():\n"
        "    import ray\n"
        "    from sqlalchemy.exc import OperationalError\n"
        "    from mlflow import MlflowClient\n"
        "    import rayon\n"
    )
    assert crossings(pkg) == [
        "pkg/m.py:3 imports ray",
        "pkg/m.py:4 imports sqlalchemy.exc",
        "pkg/m.py:5 imports mlflow",
    ]

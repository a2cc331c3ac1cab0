"""Every third-party module the package imports is declared in pyproject.toml (issue 13 item 5).

``pip install -e .`` then ``dinov3 extract`` failed because ``torchvision`` was imported but not declared. The
package's imports are read from its source (every ``import``, at module level or inside a function); each
third-party one must be a runtime dependency, or belong to an optional extra and then only be imported inside a
function (so the package works without it and says which extra to install).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "dinov3_integration"
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "av": "av"}


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~\[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {_requirement_name(s) for s in project["dependencies"]}
    extras = project.get("optional-dependencies", {})
    optional = {_requirement_name(s) for name, specs in extras.items() if name != "test" for s in specs}
    return runtime, optional


def _imports() -> dict[str, dict[str, bool]]:
    """``{top-level module: {file: imported at module level}}`` for the package's third-party imports."""
    found: dict[str, dict[str, bool]] = {}
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in sys.stdlib_module_names or root == "dinov3_integration":
                    continue
                rel = str(path.relative_to(ROOT))
                found.setdefault(root, {})[rel] = found.get(root, {}).get(rel, False) or id(node) in top_level
    return found


def _dist(module: str) -> str:
    return DISTRIBUTION.get(module, module).lower().replace("_", "-")


def test_every_import_is_declared() -> None:
    runtime, optional = _declared()
    imports = _imports()
    assert {"torch", "torchvision", "numpy", "safetensors", "PIL"} <= set(imports)  # the scan sees them
    missing = {m: sorted(files) for m, files in imports.items() if _dist(m) not in runtime | optional}
    assert not missing, f"imported but not declared in pyproject.toml [project] dependencies: {missing}"


def test_optional_modules_are_imported_lazily() -> None:
    runtime, optional = _declared()
    eager = {
        m: sorted(f for f, top in files.items() if top)
        for m, files in _imports().items()
        if _dist(m) in optional - runtime and any(files.values())
    }
    assert not eager, f"optional dependencies imported at module level (the package would need them): {eager}"


def test_declared_runtime_dependencies_are_used() -> None:
    runtime, _ = _declared()
    used = {_dist(m) for m in _imports()}
    assert runtime <= used, f"declared but never imported: {sorted(runtime - used)}"

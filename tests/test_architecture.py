"""The house rules of ARCHITECTURE.md, checked: no import cycles, the rooms' dependency direction, module sizes.

Every ``import``/``from ... import`` in every module of the package counts, at module level or inside a function
(lazy imports hide cycles but do not remove them). Only ``importlib.import_module`` strings in the package's
lazy ``__getattr__`` re-exports are invisible here, by design: they are the deprecated old import paths.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = "dinov3_integration"
ROOT = Path(__file__).resolve().parents[1] / "src" / PKG

# Rooms from the bottom up: a module may import its own room and any room below it, never one above.
ROOMS: list[tuple[str, ...]] = [
    ("_logging", "utils"),
    ("layers",),
    ("models",),
    ("data",),
    ("hub",),
    ("factory",),
    ("vggt_compat",),
    ("config",),
    ("integrated",),
    (
        "features",
        "feature_codec",
        "feature_shards",
        "feature_shard_index",
        "feature_shard_reader",
        "pca",
        "transforms",
        "export",
    ),
    ("extraction",),
    ("cli", "__main__"),
]
RANK = {room: i for i, rooms in enumerate(ROOMS) for room in rooms}
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PKG, *parts])] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node)
            found.add(target)
            for alias in node.names:  # `from . import models` imports a submodule
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
    return {m for m in found if m == PKG or m.startswith(PKG + ".")}


def _closest_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _edges(module: str, path: Path) -> set[str]:
    # An edge to one's own parent package is implicit in every import of a submodule: not counted.
    targets = {_closest_module(t) for t in _imports(module, path)}
    return {t for t in targets if t and t != module and not module.startswith(t + ".")}


GRAPH = {m: _edges(m, p) for m, p in MODULES.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_room_is_known():
    unknown = sorted({_room(m) for m in MODULES if _room(m) is not None} - set(RANK))
    assert not unknown, f"modules outside the rooms of ARCHITECTURE.md: {unknown}; add them to ROOMS and the doc"


def test_no_import_cycles():
    # A package's own __init__ importing its submodules (and they, implicitly, it) is not a cycle; edges that
    # a module writes are.
    graph = GRAPH
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:10])


def test_rooms_depend_only_downwards():
    bad = []
    for m, targets in GRAPH.items():
        src = _room(m)
        if src is None:
            continue
        for t in targets:
            dst = _room(t)
            if dst is not None and RANK[dst] > RANK[src]:
                bad.append(f"{m} imports {t} ({src} may not import {dst})")
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    n = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{module} has {n} lines (at most {MAX_MODULE_LINES}): split it by concern"


_LAZY_PROBE = r"""
import json, sys
import dinov3_integration as top, dinov3_integration.data as data
out = {"torch_on_import": "torch" in sys.modules, "missing_from_dir": [], "errors": []}
for m in (top, data):
    out["missing_from_dir"] += sorted(set(m.__all__) - set(dir(m)))
    try:
        m.no_such_name
    except AttributeError as e:
        out["errors"].append(str(e))
out["discover"] = data.discover_inputs.__module__
out["cached"] = "discover_inputs" in vars(data)
out["torch_after_inputs"] = "torch" in sys.modules
import dinov3_integration.hub as hub
hub.get_cache_dir
out["torch_after_hub"] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_lazy_exports_keep_package_imports_light():
    # `import dinov3_integration` / `.data` / `.hub` import no torch; names resolve on first use (and are cached); dir()
    # lists every export; an unknown name is an AttributeError naming module and attribute (utils.lazy).
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    proc = subprocess.run([sys.executable, "-c", _LAZY_PROBE], capture_output=True, text=True, env=env, check=True)
    out = json.loads(proc.stdout)
    assert out == {
        "torch_on_import": False,
        "missing_from_dir": [],
        "errors": [
            "module 'dinov3_integration' has no attribute 'no_such_name'",
            "module 'dinov3_integration.data' has no attribute 'no_such_name'",
        ],
        "discover": "dinov3_integration.data.inputs",
        "cached": True,
        "torch_after_inputs": False,
        "torch_after_hub": False,  # the hub package and its cache names: no torch either
    }

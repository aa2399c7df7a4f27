"""The house rules, checked from the code itself: what each plane may import (the README's
architecture section), no module over 400 lines, no operation returning to a renderer."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "fleet"

# plane -> planes it must never import (directly or lazily, inside functions)
FORBIDDEN = {
    "inventory": {"ssh", "agent", "safety", "audit", "ops", "cli", "serve", "app", "lab"},
    "lab": {"ssh", "agent", "safety", "audit", "ops", "cli", "serve", "app"},
    "ssh": {"agent", "audit", "ops", "cli", "serve", "app"},
    "agent": {"audit", "ops", "cli", "serve", "app"},
    "audit": {"ssh", "agent", "ops", "cli", "serve", "app"},
    "safety": {"audit", "ops", "cli", "serve"},
    "ops": {"cli", "serve"},
    "serve": {"cli"},
}
FOUNDATION = {"errors", "names", "files", "results", "settings", "workers"}


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleet"):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("fleet")]
    return out


def plane_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_each_plane_imports_only_what_it_may(path):
    rel = path.relative_to(PKG).parts
    mine = rel[0] if len(rel) > 1 else path.stem
    bad = FORBIDDEN.get(mine, set())
    if mine in FOUNDATION:
        bad = {"inventory", "ssh", "agent", "safety", "audit", "ops", "cli", "serve", "app", "lab"}
    wrong = [f"line {n}: {m}" for n, m in imports(path) if plane_of(m) in bad]
    assert not wrong, f"{path.relative_to(PKG)} imports a plane it must not: {wrong}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_is_over_400_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 400, f"{path.relative_to(PKG)} has {n} lines: split it along a real seam"

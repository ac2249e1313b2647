"""The package's shape (README, "Package layout"): no import cycle, short files, light config loading."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500
LONGER = {"cmm_lightning/pipeline.py": 560}  # the stages in reading order (Run + the stage functions)


def _modules() -> dict[str, Path]:
    """Dotted name -> file, ``callbacks/`` installed as ``cmm_lightning.callbacks``."""
    out = {}
    for p in sorted((ROOT / "cmm_lightning").rglob("*.py")) + sorted((ROOT / "callbacks").rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("").parts
        parts = ("cmm_lightning",) + rel if rel[0] == "callbacks" else rel
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside functions (a lazy import
    still closes a circle). ``from . import sub`` is an edge to ``sub`` only; importing ``a.b.c``
    also runs ``a.b``'s ``__init__``."""
    g = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                tgt = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                subs = [f"{tgt}.{a.name}" for a in node.names if f"{tgt}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [tgt, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # the target and the packages above it
                    up = ".".join(parts[:i])
                    if up in mods and up != m and not m.startswith(up + "."):
                        g[m].add(up)
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    mods = _modules()
    assert {"cmm_lightning.market.engine", "cmm_lightning.market.metrics", "cmm_lightning.callbacks.probe"} <= set(mods)
    g = import_graph(mods)
    assert "cmm_lightning.market.engine.state" in g["cmm_lightning.market.engine.loop"]  # edges are seen
    assert cycles(g) == []


def test_files_are_short():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > LONGER.get(str(p.relative_to(ROOT)), MAX_LINES)}
    assert long == {}


def test_config_load_imports_no_engine():
    """Loading and checking a config (what a misspelt name needs) compiles nothing and loads no torch."""
    code = ("import sys; from cmm_lightning.config import load_config; load_config([], []); "
            "print(sorted(m for m in ('torch', 'numba', 'torchmetrics', 'cmm_lightning.market.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"

"""The package's layers hold by construction: the import-linter contracts of pyproject.toml ([tool.importlinter])
are kept, and no module of roma_runtime imports itself back through others (function-local imports included)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
HOST = ROOT / "host"


def test_lint_imports_keeps_every_contract():
    """lint-imports (what `make test` runs) on this tree's package; its report is the failure message."""
    env = {**os.environ, "PYTHONPATH": str(HOST)}  # this worktree's roma_runtime, not an installed one
    r = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def _cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_among_the_package_modules():
    import roma_runtime

    assert Path(roma_runtime.__file__).parent == HOST / "roma_runtime"
    graph = grimp.build_graph("roma_runtime", cache_dir=None)
    # the HLS sources linked into the package (hls -> hw/hls) are data: their testbench scripts are no modules
    assert "roma_runtime.artifact.build" in graph.modules and not [m for m in graph.modules if ".hls" in m]
    assert _cycles(graph) == []

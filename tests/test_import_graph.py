"""The packages import one way only (common <- tiles <- runtime <- train <- export <- tools), with no
import circle, counting imports inside functions too; runtime's core never reaches into runtime/replay;
nothing imports tests."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANK = {"common": 0, "tiles": 1, "runtime": 2, "train": 3, "export": 4, "tools": 5, "tests": 6}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in REPO.rglob("*.py"):
        rel = p.relative_to(REPO)
        if rel.parts[0] not in RANK:
            continue
        name = ".".join(rel.with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for m, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                assert not (isinstance(node, ast.ImportFrom) and node.level), f"{m}: relative import"
                continue
            deps |= {o for o in map(owner, names) if o and o != m}
        graph[m] = deps
    return graph


def test_imports_go_one_way():
    upward = [(m, d) for m, deps in _graph().items() for d in deps
              if RANK[d.split(".")[0]] > RANK[m.split(".")[0]]
              or (d.startswith("runtime.replay") and not m.startswith(("runtime.replay", "runtime.__main__"))
                  and m.split(".")[0] == "runtime")]
    assert not upward, upward


def test_no_import_circle():
    graph, index, low, stack, on, circles = _graph(), {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_modules_and_functions_stay_readable():
    """Modules of the packages <= 400 lines, functions <= 80."""
    long = []
    for p in REPO.rglob("*.py"):
        rel = p.relative_to(REPO)
        if rel.parts[0] not in ("common", "tiles", "runtime", "train", "export"):
            continue
        text = p.read_text()
        if len(text.splitlines()) > 400:
            long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{rel}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long

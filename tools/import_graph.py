"""The import graph of the vaevq package: layers, upward imports, cycles, function-level imports.

    python tools/import_graph.py [SRC_DIR]      # default: src/vaevq next to this file

Layers, bottom up (docs/design.md): an import may go down or stay in its layer, never up.
tests/test_layers.py runs the same analysis and fails on an upward import, a cycle between
modules, or an import of vaevq inside a function outside the command line.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# bottom up; a module's layer is the first entry that is a prefix of its dotted name
LAYERS: list[tuple[str, ...]] = [
    ("vaevq.config", "vaevq.fileio", "vaevq.weights", "vaevq.rundir", "vaevq.hub"),
    ("vaevq.distributed",),
    ("vaevq.losses", "vaevq.quantizers", "vaevq.models", "vaevq.metrics", "vaevq.features",
     "vaevq.perceptual"),
    ("vaevq.data",),
    ("vaevq.training",),
    ("vaevq.generation",),
    ("vaevq.compare", "vaevq.cli", "vaevq.__main__", "vaevq"),
]
# function-level imports of vaevq allowed here only: the command line imports what a verb needs
# when the verb runs, so `vaevq --help` starts without torch
LAZY_ALLOWED = ("vaevq.cli",)


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if module == p or (p != "vaevq" and module.startswith(p + ".")):
                return rank
    return len(LAYERS) - 1  # the package root


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, src: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported vaevq module, inside a function?, line) of one file."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path, src)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # `from vaevq.x import y` imports the module vaevq.x.y when that is a module
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for name in names:
                if name == "vaevq" or name.startswith("vaevq."):
                    while name not in known and "." in name:
                        name = name.rsplit(".", 1)[0]
                    found.append((name, in_function, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


def graph(src: Path) -> dict[str, list[tuple[str, bool, int]]]:
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    known = set(files)
    return {m: imports_of(p, src, known) for m, p in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            strong(v)
    return out


def parent_packages(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def analyse(src: Path) -> dict[str, list]:
    g = graph(src)
    upward, lazy = [], []
    for m, imports in g.items():
        for target, in_function, line in imports:
            if target in parent_packages(m) or target == m:
                continue
            if layer_of(target) > layer_of(m):
                upward.append(f"{m}:{line} imports {target}")
            if in_function and not m.startswith(LAZY_ALLOWED):
                lazy.append(f"{m}:{line} imports {target} inside a function")
    # module cycles; a package's __init__ re-exporting its own modules is not an edge of a cycle
    edges = {m: {t for t, _, _ in imps if t != m and t not in parent_packages(m)
                 and m not in parent_packages(t)} for m, imps in g.items()}
    return {"upward": upward, "lazy": lazy, "cycles": cycles(edges)}


def line_counts(src: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in src.rglob("*.py"):
        rank = layer_of(module_name(p, src))
        key = " ".join(LAYERS[rank])
        counts[key] = counts.get(key, 0) + len(p.read_text().splitlines())
    return counts


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "vaevq"
    result = analyse(src)
    for kind in ("upward", "lazy"):
        print(f"{kind} imports: {len(result[kind])}")
        for line in result[kind]:
            print(f"  {line}")
    print(f"cycles: {len(result['cycles'])}")
    for comp in result["cycles"]:
        print(f"  {' <-> '.join(comp)}")
    print("lines per layer (bottom up):")
    counts = line_counts(src)
    for prefixes in LAYERS:
        key = " ".join(prefixes)
        print(f"  {counts.get(key, 0):6d}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

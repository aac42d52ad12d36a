"""The packages import each other in one direction only: no cycles, deferred imports included.

Every module under src/lookalike is parsed (ast, so imports inside functions count too; only
`if TYPE_CHECKING:` blocks, which never run, are skipped) and each import becomes an edge between
the top-level units it joins: the packages (data, embed, gallery, …) and the single modules
(api, runtime, errors, fileio, testing). A cycle among units fails the test, except through the
documented front doors in FRONT_DOORS: stateless methods on a lower layer's record that hand the
call to a higher layer, importing it when first used.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "lookalike"

# (module, function or Class.method) whose imports may point back up, and why
FRONT_DOORS = {
    ("lookalike.gallery.store", "Gallery.search"): "documented front door (docs/api.md): hands the call to search",
    ("lookalike.gallery.store", "Gallery.compare"): "documented front door (docs/api.md): hands the call to search",
    ("lookalike.gallery.store", "Gallery.duplicates"): "front door (issue 23): hands the call to search.dupes",
}
# Known back edges not yet removed, each with the reason it stays; keep this empty when you can.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str | None:
    """The top-level unit a lookalike module belongs to: 'search' for lookalike.search.storage, 'api' for lookalike.api;
    None for the root package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lookalike" else None


def imports(path: Path, module: str | None = None) -> list[tuple[str, str, int]]:
    """(imported module, enclosing function as 'Class.method' or '', line) of every import that can run."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other, scope)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, ".".join(scope), child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                names = [f"{target}.{alias.name}" for alias in child.names] if not child.module else [target]
                found.extend((name, ".".join(scope), child.lineno) for name in names)
            inner = (
                scope + [child.name]
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                else scope
            )
            visit(child, inner)

    visit(ast.parse(path.read_text()), [])
    return found


def unit_edges() -> dict[tuple[str, str], list[str]]:
    """(from unit, to unit) → where each such import is, front doors and known back edges left out."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        for target, scope, line in imports(path):
            a, b = unit(module), unit(target)
            if a is None or b is None or a == b:
                continue
            if any(
                module == m and (scope == s or scope.startswith(s + "."))
                for m, s in {**FRONT_DOORS, **KNOWN_BACK_EDGES}
            ):
                continue
            edges[(a, b)].append(f"{module}:{line} ({scope or 'module level'}) imports {target}")
    return edges


def find_cycle(edges) -> list[str] | None:
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_no_import_cycle_between_packages():
    edges = unit_edges()
    cycle = find_cycle(edges)
    where = [line for a, b in zip(cycle, cycle[1:]) for line in edges[(a, b)]] if cycle else []
    assert cycle is None, "import cycle " + " → ".join(cycle) + ":\n" + "\n".join(where)


def test_the_allow_lists_name_real_imports():
    """An entry that no longer matches an import is stale: remove it, so the lists stay small and true."""
    scopes = {(module_name(p), scope) for p in SRC.rglob("*.py") for _, scope, _ in imports(p)}
    for module, scope in {**FRONT_DOORS, **KNOWN_BACK_EDGES}:
        assert (module, scope) in scopes, f"{module} {scope} imports nothing any more: drop it from the allow-list"


def test_the_product_never_imports_its_test_fixtures():
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "testing.py":
            continue
        bad = [f"{path}:{line}" for target, _, line in imports(path) if target.startswith("lookalike.testing")]
        assert bad == [], "lookalike.testing is for tests and benchmarks only: " + ", ".join(bad)


def test_the_checker_sees_deferred_and_relative_imports_and_skips_type_checking(tmp_path):
    """The checker itself: an import inside a method counts, a TYPE_CHECKING one does not; a cycle is reported."""
    assert find_cycle({("a", "b"): [], ("b", "c"): [], ("c", "a"): []}) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"): [], ("b", "c"): []}) is None
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..study import y\n"
        "class C:\n    def f(self):\n        from ..search import x\n"
    )
    found = [(t, s) for t, s, _ in imports(module, "lookalike.gallery.m")]
    assert found == [("typing", ""), ("lookalike.search", "C.f")]


def test_ray_workers_that_run_no_model_import_no_torch():
    """A search actor, an index task and the shard writer import their own modules of lookalike.distributed, not torch
    (seconds and hundreds of MB per Ray worker); the package's names still load on first use."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import lookalike.distributed.search, lookalike.distributed.index, lookalike.distributed.writer\n"
        "from lookalike.distributed import fan_out, connected\n"
        "print('torch' in sys.modules)\n"
        "from lookalike.distributed import extract_ray\n"
        "print('torch' in sys.modules, callable(extract_ray))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]

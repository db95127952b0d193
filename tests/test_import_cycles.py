"""The edgeyolo import graph has no cycles.

The graph is built with ``ast`` from the source files: an edge A → B for every import of B in A,
at module level or inside a function. ``from X import y`` points at ``X.y`` when that is a module of
the package, else at ``X``. A lazy import inside a function is still an arrow: it only hides the
cycle from the interpreter, not from the reader. Imports under ``if TYPE_CHECKING:`` never run and
are left out (``tests/test_layering.py`` still holds them to the layers).
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.test_layering import PACKAGE_DIR, module_name


def _modules(root: Path = PACKAGE_DIR) -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        name, is_package = module_name(path, root)
        out[name] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST):
    """Every node of the tree except the bodies of ``if TYPE_CHECKING:`` (they never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(source: str, module: str, is_package: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) of every import in the source: ``import X`` is (X, ()), ``from X import a, b``
    is (X, (a, b)); relative imports resolved against the module's package."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in _nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            found.append((base, tuple(alias.name for alias in node.names)))
    return found


def import_graph(root: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """{module: the modules of the package it imports} over every .py file under ``root``."""
    modules = _modules(root)

    def resolve(name: str) -> str | None:
        while name not in modules and "." in name:
            name = name.rpartition(".")[0]
        return name if name in modules else None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        edges: set[str] = set()
        for base, names in _imports(path.read_text(encoding="utf-8"), name, is_package):
            if base.split(".")[0] != root.name:
                continue
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(submodules) < len(names) or not names:  # some name is not a submodule: X itself
                edges.add(resolve(base))
            edges.update(submodules)
        graph[name] = edges - {None, name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path of module names) per strongly connected component of size > 1."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan, iterative over each node's edges
        nonlocal counter
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, edges = work[-1]
            advanced = False
            for w in edges:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1:
                    components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A closed path through a strongly connected component, from its smallest name."""
    start = min(component)
    parents = {start: None}
    queue = [start]
    while queue:  # breadth first, inside the component, back to start
        node = queue.pop(0)
        for w in sorted(graph[node] & component):
            if w == start:
                path = [node]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if w not in parents:
                parents[w] = node
                queue.append(w)
    raise AssertionError("not a strongly connected component")  # pragma: no cover


def _describe(cycles: list[list[str]]) -> str:
    return "\n".join(" → ".join(c) for c in cycles)


def test_the_cli_import_graph_is_acyclic() -> None:
    cycles = [c for c in find_cycles(import_graph()) if any(m.startswith("edgeyolo.cli") for m in c)]
    assert not cycles, "import cycles through edgeyolo.cli:\n" + _describe(cycles)


def test_the_package_import_graph_is_acyclic() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + _describe(cycles)


def test_a_cycle_is_found(tmp_path) -> None:
    """The check itself: a package whose modules import each other (one of them lazily) fails it."""
    pkg = tmp_path / "edgeyolo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from edgeyolo.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from edgeyolo import a\n    return a\n")
    (pkg / "c.py").write_text("import edgeyolo.a\nimport os\nif TYPE_CHECKING:\n    from edgeyolo.sub import b\n")
    graph = import_graph(pkg)
    assert graph["edgeyolo.c"] == {"edgeyolo.a"} and graph["edgeyolo.a"] == {"edgeyolo.sub.b"}
    assert find_cycles(graph) == [["edgeyolo.a", "edgeyolo.sub.b", "edgeyolo.a"]]
    (pkg / "sub" / "b.py").write_text("def thing():\n    return None\n")
    assert find_cycles(import_graph(pkg)) == []


def test_from_package_import_submodule_points_at_the_submodule(tmp_path) -> None:
    pkg = tmp_path / "edgeyolo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("from edgeyolo import y\n")
    (pkg / "y.py").write_text("VALUE = 1\n")
    (pkg / "z.py").write_text("from edgeyolo import y, __version__\nfrom . import x\n")
    graph = import_graph(pkg)
    assert graph["edgeyolo.x"] == {"edgeyolo.y"} and graph["edgeyolo.z"] == {"edgeyolo", "edgeyolo.x", "edgeyolo.y"}

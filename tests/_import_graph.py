"""The static import graph of the project's packages, read from the source (AST), nothing imported.

Used by test_import_graph.py (no cycles, in-function imports justified) and test_dvc_deps.py (each DVC stage's
code deps are the modules its stage function imports, transitively). Every import statement counts, top-level and
inside functions, except those under `if TYPE_CHECKING:` (never executed). Importing `a.b.c` also runs the
`__init__` of `a` and `a.b`, so an import reaches those packages too (except the importer's own packages, which are
already being initialised when it runs).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    """One import statement of `module` that names a project module `target`."""

    module: str
    target: str
    line: int
    in_function: bool
    commented: bool  # a comment on the same line, on the line above, or above a block of in-function imports


def project_modules(package: str, root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` (a package's __init__.py is the package)."""
    out: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it sits inside a function; `if TYPE_CHECKING:` bodies skipped."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _commented(lines: list[str], line: int, start_of_block: dict[int, int]) -> bool:
    """A `#` comment on the import's line or on the line above the block of imports it belongs to."""
    if "#" in lines[line - 1]:
        return True
    first = start_of_block.get(line, line)
    return first > 1 and lines[first - 2].strip().startswith("#")


def _blocks(statements: list[tuple[ast.Import | ast.ImportFrom, bool]]) -> dict[int, int]:
    """Line -> first line of its block: consecutive in-function import statements that one comment may justify."""
    start_of_block: dict[int, int] = {}
    for node, in_function in statements:
        if in_function:
            start_of_block[node.lineno] = start_of_block.get(node.lineno - 1, node.lineno)
            for ln in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                start_of_block[ln] = start_of_block[node.lineno]
    return start_of_block


def function_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, statement, commented) of every import inside a function of `path`, project or not."""
    source = path.read_text()
    lines = source.splitlines()
    statements = _statements(ast.parse(source, filename=str(path)))
    blocks = _blocks(statements)
    return [
        (node.lineno, lines[node.lineno - 1].strip(), _commented(lines, node.lineno, blocks))
        for node, in_function in statements
        if in_function
    ]


def module_imports(
    module: str, path: Path, known: set[str], reexports: dict[str, dict[str, str]] | None = None
) -> list[Import]:
    """The imports of `module` (file `path`) that name a module of `known` (with the packages they initialise);
    `from package import name` of a name in `reexports[package]` imports the module that defines it."""
    source = path.read_text()
    lines = source.splitlines()
    statements = _statements(ast.parse(source, filename=str(path)))
    start_of_block = _blocks(statements)
    own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    is_package = path.name == "__init__.py"
    out: list[Import] = []
    for node, in_function in statements:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = _absolute(node, module, is_package)
            table = (reexports or {}).get(base, {})
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else table.get(a.name, base) for a in node.names]
        targets: set[str] = set()
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages its import initialises
                prefix = ".".join(parts[:i])
                if prefix in known and prefix not in own_packages and prefix != module:
                    targets.add(prefix)
        commented = _commented(lines, node.lineno, start_of_block)
        out.extend(Import(module, t, node.lineno, in_function, commented) for t in sorted(targets))
    return out


# Modules that import by name through a table {key: "dotted.module"} (importlib at run time): each value is an import
# of that module from the table's line. `amoe_core.stages.STAGES` is not followed: it is the registry of entry points.
DISPATCH_TABLES = {"amoe_core.models.teachers.loader": "LOADERS"}


def _dispatch_imports(module: str, path: Path, table: str, known: set[str]) -> list[Import]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == table for t in node.targets):
            assert isinstance(node.value, ast.Dict), f"{path}:{node.lineno}: {table} is no longer a dict literal"
            names = [v.value for v in node.value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            unknown = [n for n in names if n not in known]
            assert not unknown, f"{path}:{node.lineno}: {table} names modules that do not exist: {unknown}"
            return [Import(module, n, node.lineno, False, True) for n in names]
    raise AssertionError(f"{path}: no {table} = {{...}} any more; update DISPATCH_TABLES in {Path(__file__).name}")


# Packages whose `__init__` re-exports names lazily (PEP 562 `__getattr__` over a table {name: "dotted.module"}):
# importing the package runs none of them, and `from package import name` runs the module that defines `name`.
REEXPORT_TABLES = {"amoe_core.config": "PUBLIC"}


def _reexports(path: Path, table: str) -> dict[str, str]:
    for node in ast.parse(path.read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        targets = node.targets if isinstance(node, ast.Assign) else [target] if target else []
        if any(isinstance(t, ast.Name) and t.id == table for t in targets):
            assert isinstance(node.value, ast.Dict), f"{path}:{node.lineno}: {table} is no longer a dict literal"
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values)}  # type: ignore[union-attr]
    raise AssertionError(f"{path}: no {table} = {{...}} any more; update REEXPORT_TABLES in {Path(__file__).name}")


def import_graph(packages: tuple[str, ...] = ("amoe_core",), root: Path = REPO) -> dict[str, list[Import]]:
    """module -> its imports of modules of `packages` (import statements and the DISPATCH_TABLES)."""
    files: dict[str, Path] = {}
    for package in packages:
        files.update(project_modules(package, root))
    known = set(files)
    reexports = {pkg: _reexports(files[pkg], table) for pkg, table in REEXPORT_TABLES.items() if pkg in files}
    graph = {m: module_imports(m, p, known, reexports) for m, p in files.items()}
    for module, table in DISPATCH_TABLES.items():
        if module in graph:
            graph[module] += _dispatch_imports(module, files[module], table, known)
    return graph


def cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One cycle (as its edges, with lines) per strongly connected component of more than one module or a self-loop."""
    edges = {m: sorted({i.target for i in imps}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    found = []
    for comp in components:
        members = set(comp)
        if len(comp) == 1 and comp[0] not in edges.get(comp[0], []):
            continue
        found.append(_cycle_in(min(comp), members, graph))
    return found


def _cycle_in(start: str, members: set[str], graph: dict[str, list[Import]]) -> list[Import]:
    """A shortest cycle through `start` inside one strongly connected component (breadth-first)."""
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for imp in graph[v]:
                if imp.target not in members:
                    continue
                if imp.target == start:
                    path = [imp]
                    while path[0].module != start:
                        path.insert(0, previous[path[0].module])
                    return path
                if imp.target not in previous:
                    previous[imp.target] = imp
                    nxt.append(imp.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # cannot happen inside a strongly connected component


def closure(module: str, graph: dict[str, list[Import]]) -> set[str]:
    """`module` and every project module that importing it runs, transitively (top-level and in-function imports,
    and the packages' `__init__`)."""
    seen = {module}
    todo = [module]
    while todo:
        current = todo.pop()
        parts = current.split(".")
        packages = [".".join(parts[:i]) for i in range(1, len(parts))]  # initialised before `current` runs
        for target in [imp.target for imp in graph[current]] + [p for p in packages if p in graph]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def describe(cycle: list[Import], files: dict[str, Path]) -> str:
    hops = [f"{i.module} ({files[i.module].relative_to(REPO)}:{i.line}) imports {i.target}" for i in cycle]
    return " -> ".join(hops)

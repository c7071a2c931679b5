"""The import structure: every module imports on its own, no import cycle, in-function imports say why.

An import cycle hidden behind an in-function import works only in the order someone happened to import things; the
first check imports each module in a process where no other project module was imported before it, the second reads
the static graph (top-level and in-function imports) and names the cycle, the third makes every in-function import
carry the reason it is not at the top of its module (an optional dependency, or start-up time).
"""

from __future__ import annotations

import json
import subprocess
import sys

from _import_graph import REPO, cycles, describe, function_imports, import_graph, project_modules

PACKAGES = ("amoe_core", "flows")
# dashboards/app.py is a Streamlit script (importing it runs the page); the package and its helper modules import
# cleanly, from the repository root (the working directory of the check), with no sys.path edit
DASHBOARD_MODULES = ("dashboards", "dashboards.charts", "dashboards.curation_loaders", "dashboards.loaders",
                     "dashboards.sweep_loaders")  # fmt: skip

# One process imports the heavy third-party libraries once, then forks a child per module: each child starts with no
# project module imported, which is what "imports on its own" means here, at the cost of one torch import in all.
_FORK_IMPORTS = r"""
import importlib, json, os, sys, traceback
for heavy in ("numpy", "torch", "pandas", "PIL.Image", "timm", "transformers", "pydantic"):
    try:
        importlib.import_module(heavy)
    except ImportError:
        pass
assert not [m for m in sys.modules if m.split(".")[0] in ("amoe_core", "flows", "dashboards")]
failed = {}
for name in json.loads(sys.argv[2]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            code, msg = 0, b""
        except BaseException:
            code, msg = 1, traceback.format_exc(limit=-3).encode()
        os.write(w, msg)
        os._exit(code)
    os.close(w)
    msg = b"".join(iter(lambda: os.read(r, 65536), b""))
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed[name] = msg.decode(errors="replace") or f"exit status {status}"
print(json.dumps(failed))
"""


def _all_files() -> dict[str, object]:
    files = {}
    for package in PACKAGES:
        files.update(project_modules(package))
    return files


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    names = sorted(_all_files()) + list(DASHBOARD_MODULES)
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_IMPORTS, str(REPO), json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, "modules that do not import on their own:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in failed.items()
    )


def test_no_import_cycle() -> None:
    files = _all_files()
    found = cycles(import_graph(PACKAGES))
    assert not found, "import cycles (top-level and in-function imports):\n" + "\n".join(
        describe(c, files) for c in found
    )


def test_cycle_detection_reports_a_cycle(tmp_path) -> None:
    """The checker itself: a two-module cycle through an in-function import is found and named with its lines."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x  # start-up time\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(("pkg",), root=tmp_path)
    found = cycles(graph)
    assert [[(i.module, i.line, i.target) for i in c] for c in found] == [
        [("pkg.a", 1, "pkg.b"), ("pkg.b", 2, "pkg.a")]
    ]
    assert graph["pkg.c"] == []  # TYPE_CHECKING imports never run


def test_in_function_imports_say_why() -> None:
    """An import inside a function has a comment on its line or above it (or above its block of imports)."""
    silent = []
    for name, path in sorted(_all_files().items()):
        for line, statement, commented in function_imports(path):
            if not commented:
                silent.append(f"{path.relative_to(REPO)}:{line} ({name}): {statement}")
    assert not silent, (
        "in-function imports without a comment saying why (optional dependency, start-up time), or move them to "
        "the top of the module:\n" + "\n".join(silent)
    )


def test_config_imports_no_model() -> None:
    """Config stands below the models: params validation never builds or imports a model (the named student sizes
    are plain data in amoe_core.config.student, which the models read)."""
    graph = import_graph(PACKAGES)
    up = [
        f"{i.module} (line {i.line}) imports {i.target}"
        for m, imports in graph.items()
        if m == "amoe_core.config" or m.startswith("amoe_core.config.")
        for i in imports
        if i.target == "amoe_core.models" or i.target.startswith("amoe_core.models.")
    ]
    assert not up, "amoe_core.config must not import amoe_core.models:\n" + "\n".join(up)


def test_lazy_reexports_resolve_to_the_defining_module() -> None:
    """`from amoe_core.config import Params` is an import of amoe_core.config.params (what runs), and importing one
    section's module (which initialises the package) imports no other section."""
    graph = import_graph(PACKAGES)
    targets = {i.target for i in graph["amoe_core.overrides"]}
    assert "amoe_core.config.load" in targets and "amoe_core.config.params" in targets
    assert {i.target for i in graph["amoe_core.config"]} == set()
    code = (
        "import sys, amoe_core.config.distill\n"
        "print(sorted(m for m in sys.modules if m.startswith('amoe_core.config.')))\n"
        "from amoe_core.config import Params, load_params\n"
        "assert Params.__module__ == 'amoe_core.config.params' and load_params.__module__ == 'amoe_core.config.load'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['amoe_core.config.distill',", "'amoe_core.config.section']"]

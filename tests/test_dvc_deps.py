"""dvc.yaml cannot drift from the code: each stage's code deps are exactly the modules its stage function imports.

For every stage of dvc.yaml, its command is parsed by the real CLI parser to the stage it runs; the stage function's
module and every amoe_core module that importing it runs (transitively, top-level and in-function imports, packages'
`__init__` with code) must be covered by the stage's `amoe_core/...` deps, and nothing else may be listed. So editing
the shard loader does not rerun ingest, and a new import of a stage is a new dep. Params: every section the stage
function's own module reads as `params.<section>` is listed (whole, or some of its keys). Config sections: each stage
function owns one params section, whose schema is its own module (amoe_core/config/<section>.py); no stage's deps
include another stage's section module, so editing the distill schema reruns distill (and, through its outputs,
evaluate), never ingest.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from _import_graph import REPO, closure, import_graph, project_modules

from amoe_core.cli import build_parser
from amoe_core.config import Params
from amoe_core.stages import STAGES

DVC_YAML = REPO / "dvc.yaml"

# The params section each stage function owns: its schema module is amoe_core/config/<section>.py.
OWN_SECTION = {
    "demo-pool": "demo_pool",
    "ingest": "ingest",
    "teachers-demo": "demo_teachers",
    "teachers-cache": "distill",  # the cache is of a distillation run's targets (distill.teacher_cache)
    "embed": "embed",
    "cluster": "cluster",
    "sample": "sample",
    "distill": "distill",
    "evaluate": "evaluate",
    "sweep": "sweep",
    "ablate": "ablate",
    "report": "report",
}
# Another stage's section a stage may import, and why. sample reads the cluster stage's output with the readers of
# amoe_core/curation/hkmeans.py (load_levels, ...), the cluster stage's module; sample runs after cluster anyway.
READS_UPSTREAM_SECTION = {"sample": {"cluster"}}


def section_module(section: str) -> str:
    return f"amoe_core/config/{section}.py"


def _stages() -> dict[str, dict]:
    """dvc.yaml stage name -> definition (a foreach stage's `do`, its ${item} set to the first item)."""
    doc = yaml.safe_load(DVC_YAML.read_text())
    out = {}
    for name, stage in doc["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            if isinstance(items, str):  # ${selections}: a list from `vars`
                key = items.strip("${}")
                items = next(v[key] for v in doc.get("vars", []) if isinstance(v, dict) and key in v)
            stage = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${item}", str(items[0])))
        out[name] = stage
    return out


def _stage_of(cmd: str) -> str:
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    return args.handler.stage


def _has_code(path: Path) -> bool:
    """A package `__init__` that is more than a docstring (importing the package runs something)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _code(paths: list[Path]) -> set[str]:
    return {str(p.relative_to(REPO)) for p in paths if p.name != "__init__.py" or _has_code(p)}


def _listed(deps: list[str]) -> set[str]:
    files: list[Path] = []
    for dep in deps:
        if not dep.startswith("amoe_core"):
            continue
        path = REPO / dep
        assert path.exists(), f"dvc.yaml dep {dep} does not exist"
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return _code(files)


def code_deps(module: str) -> set[str]:
    """The files of amoe_core that running `module` imports (those with code)."""
    files = project_modules("amoe_core")
    return _code([files[m] for m in closure(module, import_graph(("amoe_core",)))])


def as_deps(needed: set[str]) -> list[str]:
    """`needed` written short: a folder whose every code file is needed stands for them (the shallowest such)."""
    out: set[str] = set()
    for f in sorted(needed):
        parts = Path(f).parts
        for depth in range(2, len(parts)):  # amoe_core/<dir>/..., never amoe_core itself
            folder = REPO.joinpath(*parts[:depth])
            if _code(sorted(folder.rglob("*.py"))) <= needed:
                out.add(str(Path(*parts[:depth])))
                break
        else:
            out.add(f)
    return sorted(out)


def test_every_stage_runs_a_known_stage_function() -> None:
    for name, stage in _stages().items():
        assert _stage_of(stage["cmd"]) in STAGES, f"dvc.yaml stage {name}: `{stage['cmd']}` runs no stage function"


def test_code_deps_are_the_stage_functions_import_closure() -> None:
    wrong = []
    for name, stage in _stages().items():
        module = STAGES[_stage_of(stage["cmd"])].split(":")[0]
        needed, listed = code_deps(module), _listed(stage.get("deps", []))
        if needed != listed:
            wrong.append(
                f"dvc.yaml stage {name} ({module}): missing {sorted(needed - listed)}, not imported "
                f"{sorted(listed - needed)}; its code deps should be (`python tests/test_dvc_deps.py` prints all):\n"
                + "\n".join(f"        - {f}" for f in as_deps(needed))
            )
    assert not wrong, "\n".join(wrong)


def test_params_list_every_section_the_stage_module_reads() -> None:
    sections = set(Params.model_fields)
    missing = []
    for name, stage in _stages().items():
        module = STAGES[_stage_of(stage["cmd"])].split(":")[0]
        source = project_modules("amoe_core")[module].read_text()
        read = set(re.findall(r"\bparams\.([a-z_]+)\b", source)) & sections
        listed = {str(p).split(".")[0] for p in stage.get("params", [])}
        if read - listed:
            missing.append(f"dvc.yaml stage {name}: params {sorted(read - listed)} read by {module} are not listed")
    assert not missing, "\n".join(missing)


def test_every_stage_function_owns_a_section_module() -> None:
    assert set(OWN_SECTION) == set(STAGES)
    for stage, section in OWN_SECTION.items():
        assert section in Params.model_fields, f"{stage}: params has no section {section}"
        assert (REPO / section_module(section)).is_file(), f"{stage}: no schema module {section_module(section)}"


def test_no_stage_depends_on_another_stages_section_module() -> None:
    """Changing a field of another stage's section (in its schema module) does not change this stage's code deps."""
    wrong = []
    for name, stage in _stages().items():
        fn = _stage_of(stage["cmd"])
        listed = _listed(stage.get("deps", []))
        if section_module(OWN_SECTION[fn]) not in listed:
            wrong.append(f"dvc.yaml stage {name}: its own section's module {section_module(OWN_SECTION[fn])} is no dep")
        allowed = {OWN_SECTION[fn], *READS_UPSTREAM_SECTION.get(fn, ())}
        others = {section_module(s) for s in OWN_SECTION.values() if s not in allowed}
        if listed & others:
            wrong.append(f"dvc.yaml stage {name} ({fn}) depends on other stages' sections: {sorted(listed & others)}")
    assert not wrong, "\n".join(wrong)


def _placeholder(path: Path) -> None:
    """An output or data dep of the copy: a file when the name has a suffix, else a folder with one file."""
    if path.exists():
        return
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder\n")
    else:
        path.mkdir(parents=True)
        (path / "placeholder").write_text("placeholder\n")


def _dvc(cwd: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"dvc {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout


def test_editing_the_distill_section_makes_only_distill_stale(tmp_path) -> None:
    """The real DVC on a copy of the repository whose every stage is up to date (outputs are placeholders, recorded
    by `dvc commit` in a fresh dvc.lock): after an edit of amoe_core/config/distill.py, `dvc status` lists the distill
    stages and the teacher cache (of their targets) only, and what follows them in the pipeline (what `dvc repro` then
    reruns) is evaluate only."""
    from dvc.repo import Repo  # heavy; only this test needs DVC's Python API

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file() and not f.startswith(("data/", "runs/", "results/")) and f != "dvc.lock":
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, tmp_path / f)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    repo = Repo(str(tmp_path))
    for stage in repo.index.stages:
        for entry in [*stage.outs, *stage.deps]:
            if not str(entry.def_path).startswith("amoe_core"):
                _placeholder(tmp_path / str(entry.def_path))
    _dvc(tmp_path, "commit", "--force", "--quiet")
    assert json.loads(_dvc(tmp_path, "status", "--json")) == {}  # the copy starts up to date
    with (tmp_path / section_module("distill")).open("a") as f:
        f.write("# an edit of the distill section's schema\n")
    stale = set(json.loads(_dvc(tmp_path, "status", "--json")))
    assert stale == {"distill@balanced", "distill@random", "teachers-cache"}  # the cache is of distill's targets
    graph = Repo(str(tmp_path)).index.graph  # edges run from a stage to the stages it depends on
    nodes = {s.name: s for s in graph.nodes}
    downstream = {a.name for name in stale for a in _ancestors(graph, nodes[name])}
    assert downstream == {"evaluate@balanced", "evaluate@random"}


def _ancestors(graph, node) -> set:
    import networkx as nx  # DVC's own dependency; only this test walks its graph

    return nx.ancestors(graph, node)


if __name__ == "__main__":  # the code deps of every stage, to paste into dvc.yaml after moving modules
    for name, stage in _stages().items():
        print(f"{name}:")
        print("\n".join(f"  - {f}" for f in as_deps(code_deps(STAGES[_stage_of(stage["cmd"])].split(":")[0]))))

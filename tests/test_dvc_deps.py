"""dvc.yaml cannot drift from the code: each stage's code deps are exactly the modules its stage function imports.

For every stage of dvc.yaml, its command is parsed by the real CLI parser to the stage it runs; the stage function's
module and every amoe_core module that importing it runs (transitively, top-level and in-function imports, packages'
`__init__` with code) must be covered by the stage's `amoe_core/...` deps, and nothing else may be listed. So editing
the shard loader does not rerun ingest, and a new import of a stage is a new dep. Params: every section the stage
function's own module reads as `params.<section>` is listed (whole, or some of its keys).
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import yaml
from _import_graph import REPO, closure, import_graph, project_modules

from amoe_core.cli import build_parser
from amoe_core.config import Params
from amoe_core.stages import STAGES

DVC_YAML = REPO / "dvc.yaml"


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


if __name__ == "__main__":  # the code deps of every stage, to paste into dvc.yaml after moving modules
    for name, stage in _stages().items():
        print(f"{name}:")
        print("\n".join(f"  - {f}" for f in as_deps(code_deps(STAGES[_stage_of(stage["cmd"])].split(":")[0]))))

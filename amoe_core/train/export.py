"""`amoe export RUN`: a trained student as a standalone model directory, in our format or the released SigLino one.

Our format (`model.safetensors` with weights and buffers: adaptors, PHI-S normalisers, MoE biases, no optimizer
state; `config.json`: the run's student spec plus where the weights came from) loads with
`amoe_core.models.trained.load_pretrained(dir)`; the SigLino format with `amoe_core.models.release.siglino.load(dir)` or the
release's own code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from amoe_core.checkpoints import MODEL_FILE, Checkpoint, newest_weights
from amoe_core.config.params import Params
from amoe_core.errors import AmoeError
from amoe_core.io import atomic_dir
from amoe_core.models.release import siglino
from amoe_core.models.student import Student
from amoe_core.models.trained import EXPORT_CONFIG, STUDENT_SPEC, build_from_spec
from amoe_core.outputs import claim_outputs

EXPORT_STAGE = "export"  # the marker an export directory carries (amoe_core/outputs.py)


def resolve_run(params: Params, run: str) -> Path:
    """A run id under distill.runs_dir, or a path to a run directory."""
    for candidate in (Path(params.distill.runs_dir) / run, Path(run)):
        if (candidate / STUDENT_SPEC).is_file():
            return candidate
    raise AmoeError(f"no distill run {run!r} under {params.distill.runs_dir} (and {run!r} is not a run directory)")


Writer = Callable[[Path, Checkpoint, dict[str, Any], Student], None]  # (tmp dir, weights, run spec, loaded student)


def _export(params: Params, run: str, out: str | Path | None, default: str, what: str, write: Writer) -> Path:
    """One export of the run's newest complete checkpoint into `out` (default runs/<run>/<default>). The weights are
    loaded into the spec's student first (they must fit before anything is written). Only an absent or empty
    directory, or an earlier export (its marker), is replaced, as a whole: never the run itself, nor a model
    directory that merely looks alike (a teacher's config.json + model.safetensors)."""
    run_dir = resolve_run(params, run)
    found = newest_weights(run_dir / "checkpoints")
    if found is None:
        raise AmoeError(f"run {run_dir} has no complete checkpoint to export; train it first")
    spec = json.loads((run_dir / STUDENT_SPEC).read_text())
    student, _ = build_from_spec(spec)
    student.load_state_dict(found.model)
    field = "--out" if out is not None else "export"
    out = Path(out) if out is not None else run_dir / default
    inputs = {"checkpoint": found.path, "run spec": run_dir / STUDENT_SPEC}
    with claim_outputs({field: out}, inputs, owner=EXPORT_STAGE), atomic_dir(out, EXPORT_STAGE, field) as tmp:
        write(tmp, found, spec, student)
    print(f"exported {run_dir.name} ({found.path.name}){what} -> {out}")
    return out


def export_run(params: Params, run: str, out: str | Path | None = None) -> Path:
    """Write runs/<run>/export (or `out`) from the run's newest complete checkpoint; replaces an older export."""

    def write(tmp: Path, found: Checkpoint, spec: dict[str, Any], student: Student) -> None:
        save_file(found.model, str(tmp / MODEL_FILE), metadata={"format": spec["format"]})
        source = {"run": found.path.parent.parent.name, "checkpoint": found.path.name, "step": found.state["step"]}
        (tmp / EXPORT_CONFIG).write_text(json.dumps({**spec, "source": source}, indent=1) + "\n")

    return _export(params, run, out, "export", "", write)


def export_siglino(params: Params, run: str, out: str | Path | None = None) -> Path:
    """`amoe export RUN --format siglino`: the run's newest checkpoint in the released SigLino format
    (checkpoint.pt + config.json, loadable by the release's `SigLino(SigLinoArgs(**config))`); default
    runs/<run>/export-siglino. The same output rules as `export_run`."""
    return _export(
        params,
        run,
        out,
        "export-siglino",
        " in the SigLino release format",
        lambda tmp, _weights, _spec, student: siglino.save(student, tmp),
    )

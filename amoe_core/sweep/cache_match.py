"""Whether `amoe sweep`'s trials read a teacher cache or run the teachers online, decided once before the trials.

The cache is `distill.teacher_cache` (after `sweep.overrides`). Trials read it when the search varies nothing the
cached outputs depend on (`teacher_cache.depends_on`: a search over loss settings or the teachers' loss weights does
not; one over packing does), its fingerprint matches the trials' fixed params (`teacher_cache.mismatch`, the same check
`amoe distill` makes) and it covers the epochs a trial walks. Otherwise trials run the teachers online. Either way
the sweep prints one line saying which and why.
"""

from __future__ import annotations

from pathlib import Path

from amoe_core.config.params import Params
from amoe_core.launch.distributed import current_info
from amoe_core.overrides import with_overrides
from amoe_core.sweep import space
from amoe_core.sweep.objective import trial_steps
from amoe_core.train import components, teacher_cache


def trial_cache(params: Params) -> tuple[Path | None, str]:
    """(the cache the trials read, None for online teachers; the line that says so)."""
    base = with_overrides(params, params.sweep.overrides)
    path = base.distill.teacher_cache
    online = "trials run the teachers online"
    if path is None:
        return None, f"teacher cache: none (distill.teacher_cache is unset): {online}"
    varied = [d.key for d in space.selected(params) if teacher_cache.depends_on(d.key)]
    if varied:
        return (
            None,
            f"teacher cache {path} not used: the search varies {', '.join(varied)}, which it depends on: {online}",
        )
    cached = teacher_cache.read_fingerprint(path)
    if cached is None:
        return None, f"teacher cache {path} not used: no complete cache there (`amoe teachers cache`): {online}"
    teachers = components.load_teachers(base, current_info().device)
    why = teacher_cache.mismatch(cached, teacher_cache.fingerprint(base, teachers))
    if why is not None:
        return None, f"teacher cache {path} not used: {why}: {online}"
    steps = trial_steps(base)
    need = teacher_cache.covered_epochs(with_overrides(base, [f"distill.steps={steps}"]))
    if need > int(cached.get("epochs", 0)):
        return None, (
            f"teacher cache {path} not used: it covers {cached.get('epochs')} epoch(s), a trial of {steps} steps walks "
            f"{need} (write it with distill.steps >= {steps}): {online}"
        )
    return Path(
        path
    ), f"teacher cache {path}: trials read the teachers' outputs from it (the search varies none of its inputs)"


def with_trial_cache(params: Params) -> Params:
    """`params` whose trials read the matching cache or run online (an override appended to sweep.overrides, so it
    holds over any distill.teacher_cache there); prints the line."""
    path, line = trial_cache(params)
    print(line)
    override = space.format_override("distill.teacher_cache", None if path is None else str(path))
    return params.model_copy(
        update={"sweep": params.sweep.model_copy(update={"overrides": [*params.sweep.overrides, override]})}
    )

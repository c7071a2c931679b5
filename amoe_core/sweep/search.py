"""`amoe sweep`: Optuna (TPE sampler, median pruning) over batching and loss settings, several workers at once.

Workers are processes sharing one RDB storage (SQLite by default, any SQLAlchemy URL such as PostgreSQL for many
machines); each runs its share of `sweep.n_trials`, so the total is exact. A worker that dies mid-trial stops
its heartbeat: after two missed beats the trial is marked failed and re-queued once (RetryFailedTrialCallback), so no
trial is silently lost. On a cluster, run `amoe submit sweep --array sweep.seed=0,1,2` against a PostgreSQL URL:
each array job is one more worker on the same study. The best trial is written as `-S` overrides (sweep.best_out).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import sqlite3
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import yaml

from amoe_core.config.params import Params, validate_params
from amoe_core.config.sweep import SweepConfig
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.io import atomic_write_text, check_file_output, read_user_yaml
from amoe_core.overrides import with_overrides
from amoe_core.progress import setup_logging
from amoe_core.sweep import cache_match, space
from amoe_core.sweep.objective import (
    INTERMEDIATE,
    load_objective,
    objective_name,
    trial_run_id,
    trial_runs_dir,
    trial_steps,
)

log = logging.getLogger("amoe.sweep")
BEST_HEADER = "# Best trial of Optuna study"  # how sweep.best_out starts (its ownership mark)


def open_storage(cfg: SweepConfig) -> optuna.storages.RDBStorage:
    """The study storage, with heartbeats so trials of a killed worker are failed and retried instead of hanging."""
    url = cfg.storage
    if "://" not in url:
        raise ConfigError(f"sweep.storage = {url!r}: expected an RDB URL such as sqlite:///runs/optuna.db")
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # optuna >= 4.9 renamed the retry callback and its storage argument; older releases keep the first names
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        stale, retry_cls = "heartbeat_stale_trial_callback", optuna.storages.RetryHeartbeatStaleTrialCallback
    else:
        stale, retry_cls = "failed_trial_callback", optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are stable in practice
        retry = retry_cls(max_retry=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=cfg.heartbeat_s, grace_period=2 * cfg.heartbeat_s, **{stale: retry}
            )
    except (ImportError, ValueError) as e:
        raise ConfigError(f"sweep.storage = {url!r}: cannot open ({str(e).splitlines()[0]})") from None
    except Exception as e:  # sqlalchemy.exc.OperationalError and friends: unreachable server, bad credentials
        raise AmoeError(f"sweep.storage = {url!r}: cannot connect ({str(e).splitlines()[0]})") from None


def check_storage(cfg: SweepConfig) -> None:
    """A damaged SQLite study file (a bad copy, a disk error mid-file) fails here, in one line, before any worker starts:
    otherwise every worker dies on its first query with sqlalchemy's traceback."""
    if not cfg.storage.startswith("sqlite:///"):
        return
    path = Path(cfg.storage.removeprefix("sqlite:///"))
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new study file
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            problems = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as e:
        problems = [str(e)]
    if problems != ["ok"]:
        raise ConfigError(
            f"sweep.storage = {cfg.storage!r}: the database is damaged ({problems[0]}); restore it from a copy, or "
            "point sweep.storage at a new file"
        )


def load_study(params: Params, worker: int = 0) -> optuna.Study:
    """Create the study or join it; each worker seeds its own TPE sampler so parallel workers do not propose twins.
    Optuna's own INFO lines ("Using an existing study", one per trial per worker) are silenced: `report_trial`
    prints one line per finished trial instead."""
    cfg = params.sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=cfg.study,
        storage=open_storage(cfg),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed + worker, n_startup_trials=max(cfg.pruner_startup_trials, 2)),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials),
        load_if_exists=True,
    )
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since optuna 3.2
            study.set_metric_names([objective_name(params)])
        study.set_user_attr("intermediate_values", INTERMEDIATE)
    return study


def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial (an Optuna callback): its outcome, the best so far and where its run is."""
    run = trial.user_attrs.get("run_dir", "")
    took = f"{trial.duration.total_seconds():.0f} s" if trial.duration else "-"
    if trial.state == optuna.trial.TrialState.COMPLETE:
        best = study.best_trial
        log.info(
            "trial %d: %s = %.4f (best %.4f, trial %d), %s, %s",
            trial.number, study.metric_names[0] if study.metric_names else "objective", trial.value,
            best.value, best.number, took, run,
        )  # fmt: skip
    else:
        log.info("trial %d: %s, %s, %s", trial.number, trial.state.name.lower(), took, run)


def make_objective(params: Params) -> Callable[[optuna.Trial], float]:
    """Trial -> its params (base + sweep.overrides + a point of the space + run id and steps) -> the objective."""
    fn = load_objective(params.sweep.objective)

    def objective(trial: optuna.Trial) -> float:
        point = space.suggest(trial, params)
        p = with_overrides(params, [*params.sweep.overrides, *point])
        steps = trial_steps(p)
        runs_dir, run_id = trial_runs_dir(params), trial_run_id(trial.number)
        trial.set_user_attr("run_dir", str(runs_dir / run_id))
        p = with_overrides(
            p,
            [
                f"distill.runs_dir={runs_dir}",
                f"distill.run={run_id}",
                f"distill.steps={steps}",
                f"distill.checkpoint_every={steps}",
            ],
        )
        with _trial_logging():
            return fn(trial, p)

    return objective


@contextlib.contextmanager
def _trial_logging() -> Iterator[None]:
    """A trial's stages log at WARNING unless `-v`, so a finished trial reads as its one `report_trial` line."""
    stages = logging.getLogger("amoe_core")
    before = stages.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        stages.setLevel(logging.WARNING)
    try:
        yield
    finally:
        stages.setLevel(before)


def work(params_tree: dict[str, Any], n_trials: int, worker: int) -> None:
    """One worker: run `n_trials` trials of the shared study (a process entry point, so it takes plain data)."""
    setup_logging()  # a spawned worker starts with no logging set up; AMOE_QUIET is inherited
    params = validate_params(params_tree)
    study = load_study(params, worker)
    # A user-fixable problem in one trial (e.g. an invalid combination) fails that trial, not the sweep.
    study.optimize(
        make_objective(params), n_trials=n_trials, catch=(AmoeError,), gc_after_trial=True, callbacks=[report_trial]
    )


def split(n: int, workers: int) -> list[int]:
    """n trials over the workers, as evenly as possible (the sum is exactly n)."""
    return [n // workers + (i < n % workers) for i in range(workers) if n // workers + (i < n % workers) > 0]


def run_workers(params: Params) -> None:
    cfg = params.sweep
    load_study(params)  # created once here, so parallel workers only ever join it
    shares = split(cfg.n_trials, cfg.workers)
    tree = params.model_dump(mode="json")
    if len(shares) == 1:
        work(tree, shares[0], 0)
        return
    ctx = mp.get_context("spawn")  # no forked torch / sqlalchemy state in the workers
    procs = [ctx.Process(target=work, args=(tree, n, i), name=f"sweep-worker-{i}") for i, n in enumerate(shares)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise AmoeError(f"sweep workers {failed} exited with an error (see their log above); finished trials are kept")


def best_overrides(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, list[str]]:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise AmoeError(f"study {study.study_name!r} has no completed trial yet; nothing to export")
    best = study.best_trial
    return best, list(best.user_attrs.get("overrides") or [space.format_override(k, v) for k, v in best.params.items()])


def export_best(study: optuna.Study, out: Path) -> list[str]:
    """Write the best trial as `-S` overrides: `load_params(path, overrides)` and `dvc exp run -S ...` apply them."""
    best, overrides = best_overrides(study)
    command = "dvc exp run " + " ".join(f"-S '{o}'" for o in overrides)
    doc = {"study": study.study_name, "trial": best.number, "value": best.value, "overrides": overrides}
    header = f"{BEST_HEADER} {study.study_name!r}. Apply with:\n#   {command}\n"
    atomic_write_text(out, header + yaml.safe_dump(doc, sort_keys=False))
    return overrides


def read_best(path: str | Path) -> list[str]:
    """The override list of an exported best-trial file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"sweep.best_out = {str(p)!r}: no exported best trial; run `amoe sweep` first")
    doc = read_user_yaml("sweep.best_out", p) or {}
    if not isinstance(doc.get("overrides"), list):
        raise ConfigError(f"{p}: expected an `overrides` list of section.key=value strings")
    return [str(o) for o in doc["overrides"]]


def run(params: Params, **_: Any) -> dict[str, Any]:
    """`amoe sweep`: run the trials, then export the best one; returns a small summary."""
    check_file_output("sweep.best_out", params.sweep.best_out, BEST_HEADER.encode())  # before any trial
    space.selected(params)  # unknown sweep.search names fail before any worker starts
    check_storage(params.sweep)
    check = getattr(load_objective(params.sweep.objective), "check_inputs", None)
    if check is not None:  # missing shards, selection or evaluation data: exit 2 before the study changes
        check(params)
    params = cache_match.with_trial_cache(params)  # trials read a matching teacher cache, else run the teachers
    run_workers(params)
    study = load_study(params)
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    summary = {s: states.count(s) for s in sorted(set(states))}
    overrides = export_best(study, params.sweep.best_out)
    print(f"best trial {study.best_trial.number}: {study.best_value:.4f} ({summary}); written {params.sweep.best_out}")
    print("apply with: dvc exp run " + " ".join(f"-S '{o}'" for o in overrides))
    return {"best_value": study.best_value, "best_trial": study.best_trial.number, "overrides": overrides, **summary}

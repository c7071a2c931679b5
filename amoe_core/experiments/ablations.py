"""`amoe ablate`: the paper's three ablations as DVC experiments on the demo pipeline, one per variant and seed.

Each experiment is `dvc exp run --queue -n NAME -S KEY=VALUE ... [TARGET]` on the current commit, so no file is
edited by hand between variants and `dvc exp show` lists them all with their params and metrics:
- `ref-sN`: the reference settings (ARKD, packed batching), the whole pipeline: students on both the balanced and the
  random selection, which is the data ablation;
- `loss-none-sN`, `loss-rkd-sN`: the relational term off / symmetric RKD, balanced selection only;
- `batching-fixed-sN`: a fixed number of images per step carrying packed mode's token budget on average;
- `data-1000-s0`, `data-2000-s0`: the whole pipeline with smaller selections (`sample.target`), one seed: the
  data-scaling view (kNN against the number of selected images, balanced vs random);
- `data-longtail-sN` (and `data-longtail-1000-s0`, `-2000-s0`): the whole pipeline on the long-tail pool
  (`demo_pool.long_tail`), per-class kNN read against the pool's class frequencies (amoe_core/experiments/longtail.py).
`ablate.overrides` apply to every experiment (e.g. the ablation's training length, longer than the demo's).
Only `distill.seed` changes between seeds: data, teachers and curation are shared (and cached by DVC).

Queued experiments run in DVC's temporary workspaces (`dvc queue start -j ablate.jobs`). Experiments already finished
on the current commit are skipped, so an interrupted ablation resumes; after a new commit everything runs again. `collect` then copies every run's small records out of its
experiment commit into `ablate.out` (which is versioned, so a fresh clone can regenerate the report).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from amoe_core.config.params import Params
from amoe_core.curation.report import REPORT_FILE
from amoe_core.data.demo_longtail import FREQUENCIES
from amoe_core.device import cpu_thread_budget
from amoe_core.dvc_cli import run_dvc
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.io import atomic_dir
from amoe_core.overrides import with_overrides
from amoe_core.tracking.runs import CURATION_DIR, PROVENANCE, TEACHERS_RUN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VariantSpec:
    overrides: dict[str, str]
    target: str | None = "evaluate@balanced"  # the stage to reproduce; None = the whole pipeline
    max_seeds: int | None = None  # None = ablate.seeds


LONG_TAIL = {"demo_pool.long_tail": "true", "evaluate.class_frequencies": f"data/demo/{FREQUENCIES}"}
VARIANTS: dict[str, VariantSpec] = {
    "ref": VariantSpec({}, target=None),
    "loss-none": VariantSpec({"loss.relational": "none"}),
    "loss-rkd": VariantSpec({"loss.relational": "rkd"}),
    "batching-fixed": VariantSpec({"packing.mode": "fixed"}),
    # the data-scaling view: smaller balanced and random selections of the same pool (the reference is the largest)
    "data-1000": VariantSpec({"sample.target": "1000"}, target=None, max_seeds=1),
    "data-2000": VariantSpec({"sample.target": "2000"}, target=None, max_seeds=1),
    # the data finding on a pool with the web's long tail (demo_pool.long_tail): balanced and random students, per-class
    # kNN against the pool's class frequencies (head vs tail classes), and its own data-scaling view
    "data-longtail": VariantSpec(LONG_TAIL, target=None),
    "data-longtail-1000": VariantSpec({**LONG_TAIL, "sample.target": "1000"}, target=None, max_seeds=1),
    "data-longtail-2000": VariantSpec({**LONG_TAIL, "sample.target": "2000"}, target=None, max_seeds=1),
}
RECORDS = ("params.yaml", "train.json", "eval.json", "resolution.csv")  # what `amoe report` reads from a run
CURVES = ("dvclive/metrics.json", "dvclive/plots/metrics/")  # the training curves (small TSVs, versioned by git)


def _collected(record: str) -> bool:
    """A run's file (path under runs/<run>/) that collecting keeps: the report's records and the curves."""
    return record in RECORDS or record == CURVES[0] or (record.startswith(CURVES[1]) and record.endswith(".tsv"))


@dataclass(frozen=True)
class Experiment:
    name: str
    overrides: dict[str, str]
    target: str | None

    @property
    def runs(self) -> set[str] | None:
        """The run directories this experiment writes: a `STAGE@RUN` target writes RUN only (the other runs in its
        commit are the baseline's records, carried along unchanged); the whole pipeline (None) writes every run."""
        return {self.target.split("@", 1)[1]} if self.target and "@" in self.target else None

    def queue_command(self) -> list[str]:
        cmd = ["dvc", "exp", "run", "--queue", "-n", self.name]
        for key, value in self.overrides.items():
            cmd += ["-S", f"{key}={value}"]
        return cmd + ([self.target] if self.target else [])


def plan(
    seeds: int, variants: list[str] | None = None, base: dict[str, str] | None = None, debs: Path | None = None
) -> list[Experiment]:
    """Every (variant, seed) experiment, seed-major so concurrent workers run different variants side by side.
    `base` (`ablate.overrides`) applies to every experiment, under the variant's own settings. `debs`: the .deb cache
    an experiment that rebuilds the demo pool reads, as an absolute path (a queued experiment runs in a temporary
    workspace without the git-ignored data/, where the relative default would download the packages again)."""
    names = variants or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise AmoeError(f"unknown ablation variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    experiments = []
    for s in range(seeds):
        for v in names:
            if VARIANTS[v].max_seeds is not None and s >= VARIANTS[v].max_seeds:
                continue
            overrides = {**(base or {}), **VARIANTS[v].overrides, "distill.seed": str(s)}
            if debs is not None and "demo_pool.long_tail" in VARIANTS[v].overrides:
                overrides["demo_pool.debs"] = str(Path(debs).resolve())
            experiments.append(Experiment(f"{v}-s{s}", overrides, VARIANTS[v].target))
    return experiments


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def experiment_refs(baseline: str | None = None) -> dict[str, str]:
    """Experiment name -> commit for the DVC experiments of this repository (refs/exps/<baseline>/<name>): those of
    `baseline` only, or else the newest experiment of each name."""
    out = _git("for-each-ref", "--format=%(refname) %(objectname) %(committerdate:unix)", "refs/exps/")
    newest: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        ref, sha, when = line.split()
        parts = ref.split("/")  # refs, exps, baseline[:2], baseline[2:], name
        if len(parts) != 5 or (baseline is not None and parts[2] + parts[3] != baseline):
            continue
        if parts[4] not in newest or int(when) > newest[parts[4]][0]:
            newest[parts[4]] = (int(when), sha)
    return {name: sha for name, (_, sha) in newest.items()}


def queue(experiments: list[Experiment]) -> list[Experiment]:
    """Queue the experiments that have no finished (or already queued) experiment of the same name."""
    if _git("status", "--porcelain", "--untracked-files=no", "--", "params.yaml", "dvc.yaml", "dvc.lock").strip():
        raise AmoeError(
            "params.yaml, dvc.yaml or dvc.lock has uncommitted changes: commit them first, experiments "
            "are based on the last commit"
        )
    # finished on this commit: a new baseline (changed code or params) runs every experiment again
    done = set(experiment_refs(baseline=_git("rev-parse", "HEAD").strip())) | _queued_names()
    todo = [e for e in experiments if e.name not in done]
    for e in todo:
        log.info("queue %s", " ".join(e.queue_command()))
        run_dvc(*e.queue_command()[1:])
    return todo


def _queue_status() -> list[tuple[str, str]]:
    """(name, status) of the experiments DVC's queue knows about."""
    rows = []
    for line in run_dvc("queue", "status").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[-1] in {"Queued", "Running", "Success", "Failed"}:
            rows.append((fields[1], fields[-1]))
    return rows


def _queued_names() -> set[str]:
    return {name for name, status in _queue_status() if status in {"Queued", "Running"}}


def worker_env(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the queue workers: stage commands import amoe_core from the experiment's own workspace,
    not from this (editable) checkout, and the `jobs` concurrent experiments split the cores between them (each
    stage would otherwise take every core, and oversubscribed OpenMP threads spin against each other; see
    amoe_core/device.py). A user's own OMP_NUM_THREADS is kept."""
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [".", env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_thread_budget(0) // max(1, jobs))))
    return env


def run_queue(jobs: int, poll_s: float = 30.0) -> None:
    """Start `jobs` queue workers and wait until nothing is queued or running; fail naming the failed experiments."""
    env = worker_env(jobs)
    # the workers are daemons that inherit stdout/stderr: capturing them would block until the queue is empty
    log_file = Path(".dvc/tmp/amoe-ablate-queue.log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as f:
        if subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], stdout=f, stderr=f, env=env).returncode != 0:
            raise AmoeError(f"`dvc queue start` failed: see {log_file}")
    while True:
        status = _queue_status()
        active = [n for n, s in status if s in {"Queued", "Running"}]
        if not active:
            break
        log.info("%d experiment(s) queued or running: %s", len(active), ", ".join(active))
        time.sleep(poll_s)
    failed = [n for n, s in status if s == "Failed"]
    if failed:
        raise AmoeError(
            f"experiment(s) failed: {', '.join(failed)}; see `dvc queue logs NAME`, then `dvc queue "
            "remove --failed` and run `amoe ablate` again"
        )


def collect(experiments: list[Experiment], out: Path, selection: Path = Path("data/curation/selection")) -> list[Path]:
    """Copy runs/<run>/{params.yaml, train.json, eval.json, resolution.csv} and the run's dvclive curves of each
    experiment (its newest one, whatever the baseline; only the runs it writes) into out/<experiment>-<run>/, the
    teachers' evaluation into out/_teachers/, each experiment's commit and baseline commit (the code it measured)
    into out/experiments.json, and the curation report of each experiment that ran the whole pipeline (`selection`,
    sample.out, a DVC output read from the cache at its commit) into out/_curation/<experiment>.json. Replaces
    `out` atomically."""
    refs = experiment_refs()
    missing = [e.name for e in experiments if e.name not in refs]
    if missing:
        raise AmoeError(f"no finished experiment named {', '.join(missing)}: run `amoe ablate` first")
    written: list[Path] = []
    with atomic_dir(out, "ablate.out", legacy=(TEACHERS_RUN,)) as tmp:
        provenance = {e.name: {"commit": refs[e.name], "baseline": _git("rev-parse", f"{refs[e.name]}^").strip()}
                      for e in experiments}  # fmt: skip
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=1, sort_keys=True) + "\n")
        for e in experiments:
            name = e.name
            files = _git("ls-tree", "-r", "--name-only", refs[name], "runs/").splitlines()
            for f in files:
                parts = Path(f).parts
                if len(parts) < 3 or not _collected("/".join(parts[2:])):
                    continue
                run = parts[1]
                if run != TEACHERS_RUN and e.runs is not None and run not in e.runs:
                    continue
                dest = tmp / (TEACHERS_RUN if run == TEACHERS_RUN else f"{name}-{run}") / Path(*parts[2:])
                if run == TEACHERS_RUN and dest.exists():
                    continue  # every experiment shares the same teachers' evaluation
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(
                    subprocess.run(["git", "show", f"{refs[name]}:{f}"], check=True, capture_output=True).stdout
                )
                if run != TEACHERS_RUN and parts[2] == "params.yaml":
                    written.append(out / dest.parent.name)
            if e.target is None:  # its own curation (a one-stage experiment's is the baseline's)
                report = _curation_report(refs[name], selection / REPORT_FILE)
                if report is not None:
                    (tmp / CURATION_DIR).mkdir(exist_ok=True)
                    (tmp / CURATION_DIR / f"{name}.json").write_bytes(report)
    return sorted(written)


def _curation_report(commit: str, path: Path) -> bytes | None:
    """A DVC-tracked file as it was at `commit`, from the local DVC cache (None, with a warning, where it is gone)."""
    # dvc's Python API takes seconds to import: only when collecting
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        return dvc.api.read(str(path), rev=commit, mode="rb")
    except (DvcException, OSError) as e:
        log.warning("no curation report for experiment commit %s (%s): the report leaves its curation out", commit, e)
        return None


def run(params: Params, collect_only: bool = False) -> list[Path]:
    cfg = params.ablate
    try:  # a bad entry stops here, before anything is queued
        with_overrides(params, cfg.overrides)
    except ConfigError as e:
        raise ConfigError(f"ablate.overrides {cfg.overrides}: {e}") from None
    base = dict(o.split("=", 1) for o in cfg.overrides)
    experiments = plan(cfg.seeds, cfg.variants or None, base, Path(base.get("demo_pool.debs", params.demo_pool.debs)))
    if shutil.which("dvc") is None:
        raise AmoeError("`dvc` is not on PATH: activate the project's virtualenv (make install)")
    if not collect_only:
        queued = queue(experiments)
        log.info("queued %d experiment(s), %d already done", len(queued), len(experiments) - len(queued))
        run_queue(cfg.jobs)
    runs = collect(experiments, cfg.out, params.sample.out)
    log.info(
        "collected %d runs into %s; `amoe report -S report.runs_dir=%s` writes the report", len(runs), cfg.out, cfg.out
    )
    return runs

"""A run's training curves: the one reader of `runs/<run>/dvclive/plots/metrics/**.tsv`, the files dvclive writes
(amoe_core/train/live.py) and git keeps. The dashboard, the report's summary (train.json), the sweep's pruning and
the tests read a run's steps through `read_steps`.

dvclive appends and never rewrites (`Live(resume=True)`): a resumed attempt logs again the steps after its
checkpoint, after the killed attempt's rows for them. dvclive offers no truncation, and rewriting its files by hand
is what this replaces, so the reader resolves it: in each file, a row at step s supersedes every earlier row at a
step >= s (a new attempt restarted there). Each step is then read once, with the values of the newest attempt, and
steps a killed attempt logged past where the resumed one has got are dropped too (a "last row per step" rule would
keep those). `dvc plots` draws the raw files, so a resumed run's chart there shows the re-logged stretch twice.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LIVE_DIR = "dvclive"  # runs/<run>/dvclive: dvclive's directory (plots/metrics/*.tsv and the summary metrics.json)
EXPERT_LOAD = "expert_load"  # logged as expert_load/<layer>/<expert> scalars; read back as a list per layer


def metrics_dir(run: Path) -> Path:
    return Path(run) / LIVE_DIR / "plots" / "metrics"


def summary_file(run: Path) -> Path:
    """dvclive's summary (the latest value of each metric), rewritten at every logged step: when it changes, the
    curves did."""
    return Path(run) / LIVE_DIR / "metrics.json"


def has_curves(run: Path) -> bool:
    return metrics_dir(run).is_dir() and any(metrics_dir(run).rglob("*.tsv"))


def read_metric(tsv: Path) -> dict[int, float]:
    """step -> value of one dvclive TSV (columns step, [timestamp,] <name>), each step once (module docstring).
    Rows that do not parse (a truncated last line of a killed run, a damaged file) are skipped with one warning."""
    out: dict[int, float] = {}
    bad, last = 0, -math.inf
    with open(tsv, encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        if "step" not in header:
            log.warning("%s: no step column; skipped", tsv)
            return {}
        i, j = header.index("step"), len(header) - 1  # dvclive writes the metric's value last
        for line in f:
            if not line.endswith("\n"):
                continue  # being written (a run in progress) or cut by a kill: not a row yet
            cells = line.rstrip("\r\n").split("\t")
            try:
                if len(cells) != len(header):
                    raise ValueError(line)
                step, value = int(cells[i]), float(cells[j])
            except ValueError:
                bad += 1
                continue
            if step <= last:  # a resumed attempt restarted at `step`: its rows replace these
                out = {s: v for s, v in out.items() if s < step}
            out[step] = value
            last = step  # the largest step kept: rows are kept in increasing step order (no max() per row)
    if bad:
        log.warning("%s: %d damaged row(s) skipped", tsv, bad)
    return out


def read_steps(run: Path) -> list[dict[str, Any]]:
    """One record per logged step, in step order: {"step": s, "loss/total": ..., "lr": ..., "expert_load":
    [[per expert] per MoE layer]}: every metric dvclive holds for the run, named by its path under plots/metrics."""
    root = metrics_dir(run)
    if not root.is_dir():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for tsv in sorted(root.rglob("*.tsv")):
        name = tsv.relative_to(root).with_suffix("").as_posix()
        for step, value in read_metric(tsv).items():
            by_step.setdefault(step, {"step": step})[name] = value
    return [_expert_load(by_step[s]) for s in sorted(by_step)]


def _expert_load(record: dict[str, Any]) -> dict[str, Any]:
    """expert_load/<layer>/<expert> scalars folded back into one list per layer (the form the trainer produces)."""
    keys = [k for k in record if k.startswith(EXPERT_LOAD + "/")]
    if not keys:
        return record
    cells = {tuple(int(x) for x in k.split("/")[1:]): record.pop(k) for k in keys}
    layers = 1 + max(layer for layer, _ in cells)
    experts = 1 + max(e for _, e in cells)
    record[EXPERT_LOAD] = [[cells.get((layer, e), math.nan) for e in range(experts)] for layer in range(layers)]
    return record


def last_written(run: Path) -> float | None:
    """When the run last logged a step (seconds since the epoch), None without curves."""
    try:
        return os.stat(summary_file(run)).st_mtime
    except OSError:
        return None

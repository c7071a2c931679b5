"""Step records through dvclive (`runs/<run>/dvclive`), so `dvc plots` and the dashboard can read the curves."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _trim_tsv(plots: Path, last_step: int) -> None:
    """Drop rows after `last_step` from dvclive's per-metric TSV files (rows logged after the resumed checkpoint)."""
    for tsv in plots.rglob("*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        i = rows[0].index("step")
        keep = [rows[0]] + [r for r in rows[1:] if len(r) > i and r[i].isdigit() and int(r[i]) <= last_step]
        with open(tsv, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows(keep)


class LiveLog:
    """Scalars of each record as dvclive metrics at the record's step (lists like expert_load stay in jsonl)."""

    def __init__(self, directory: Path, resume: bool, step: int) -> None:
        from dvclive import Live  # imported when a run starts: dvclive takes ~2 s to import (start-up time)

        if resume:
            _trim_tsv(Path(directory) / "plots", step)
        self.live = Live(dir=str(directory), resume=resume, save_dvc_exp=False, dvcyaml=None)

    def log(self, record: dict[str, Any]) -> None:
        self.live.step = int(record["step"])
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.live.log_metric(k, float(v), plot=True)
        self.live.make_summary()

    def close(self) -> None:
        self.live.end()

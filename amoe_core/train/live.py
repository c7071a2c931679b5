"""A run's step records through dvclive (`runs/<run>/dvclive`): the run's one metrics record, drawn by `dvc plots`
and read back by amoe_core/tracking/curves.py (which resolves the steps a resumed attempt logs again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amoe_core.errors import AmoeError
from amoe_core.tracking.curves import EXPERT_LOAD


class LiveLog:
    """Each record's scalars as dvclive metrics at the record's step, the expert load (a list per MoE layer) as one
    scalar per layer and expert (`expert_load/<layer>/<expert>`). With `resume`, dvclive appends to the run's files;
    without, it starts them afresh."""

    def __init__(self, directory: Path, resume: bool) -> None:
        from dvclive import Live  # imported when a run starts: dvclive takes ~2 s to import (start-up time)
        from scmrepo.exceptions import SCMError  # dvclive's git layer: imported with dvclive

        try:
            self.live = Live(dir=str(directory), resume=resume, save_dvc_exp=False, dvcyaml=None)
        except SCMError as e:  # dvclive reads the git revision before checking that one exists (dvclive 3.x)
            raise AmoeError(
                f"dvclive cannot start the run's record in {directory}: the git repository around it has no commit "
                f"({e}); make one (`git commit --allow-empty -m init`) or run outside that repository"
            ) from None

    def log(self, record: dict[str, Any]) -> None:
        self.live.step = int(record["step"])
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.live.log_metric(k, float(v), plot=True)
        for layer, loads in enumerate(record.get(EXPERT_LOAD) or []):
            for e, x in enumerate(loads):
                self.live.log_metric(f"{EXPERT_LOAD}/{layer}/{e}", float(x), plot=True)
        self.live.make_summary()

    def close(self) -> None:
        self.live.end()

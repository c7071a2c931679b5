"""The `report` section: `amoe report`."""

from __future__ import annotations

from pathlib import Path

from amoe_core.config.section import Section


class ReportConfig(Section):
    """`amoe report`. The defaults regenerate the committed docs/RESULTS.md from the collected ablation runs; point
    `runs_dir` at `runs` (and `out` elsewhere) for a report on your own runs."""

    runs_dir: Path = Path("results/ablations")
    out: Path = Path("docs/RESULTS.md")

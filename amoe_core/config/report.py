"""The `report` section: `amoe report`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from amoe_core.config.section import Section


class ReportConfig(Section):
    """`amoe report`. The defaults regenerate the committed docs/RESULTS.md from the collected ablation runs; point
    `runs_dir` at `runs` (and `out` elsewhere) for a report on your own runs."""

    runs_dir: Path = Field(
        Path("results/ablations"), description="Folder of the run records the report reads (`runs` for your own runs)."
    )
    out: Path = Field(Path("docs/RESULTS.md"), description="The Markdown report written (its figures go beside it).")

"""Run a stage as N processes on this machine (`embed.processes`, `cluster.processes`): the stage relaunches itself
under torchrun, so the CLI, DVC and the Prefect flow get the distributed version from one parameter.

Inside torchrun or a submitit job the processes already exist (WORLD_SIZE / SUBMITIT_EXECUTOR is set), so nothing is
relaunched there.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from amoe_core.config.section import dump_params
from amoe_core.errors import AmoeError

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)


def run_local_ranks(command: list[str], params: Params, processes: int) -> bool:
    """`amoe <command>` as `processes` torchrun ranks with these params, waited for; False (nothing run) when one
    process is asked for or this process already belongs to a group."""
    if processes <= 1 or "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" in os.environ:
        return False
    with tempfile.TemporaryDirectory(prefix="amoe-ranks-") as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(dump_params(params))
        quiet = ["-q"] if logging.getLogger().getEffectiveLevel() > logging.INFO else []
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "amoe_core.cli", *command, "--params", str(path), *quiet]  # fmt: skip
        log.info("running `amoe %s` as %d processes (torchrun)", " ".join(command), processes)
        rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise AmoeError(f"`amoe {' '.join(command)}` on {processes} processes failed (exit code {rc}); the ranks' "
                        f"errors are above")  # fmt: skip
    return True

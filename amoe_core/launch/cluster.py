"""Is a SLURM cluster reachable from here? And a handle on the single-node dev cluster (scripts/slurm-dev-cluster).

submitit's `AutoExecutor` picks SLURM whenever `srun` is on PATH, even with no controller behind it, so `auto` probes
`sinfo` instead: a cluster that answers within a few seconds is a cluster we can submit to.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from amoe_core.errors import AmoeError

REPO_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
DEV_CLUSTER_SCRIPT = REPO_SCRIPTS / "slurm-dev-cluster"


def slurm_available(timeout_s: float = 5.0) -> bool:
    """True when `sinfo` exists and a controller answers within `timeout_s` seconds."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=timeout_s, text=True)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return out.returncode == 0


def slurm_binaries_present() -> bool:
    return all(shutil.which(b) for b in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "scontrol"))


def free_port_pair() -> int:
    """A port p such that p and p+1 are free on 127.0.0.1 (slurmctld and slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AmoeError("no two consecutive free TCP ports on 127.0.0.1 for the dev cluster")


@dataclass
class DevCluster:
    """The single-node SLURM cluster of scripts/slurm-dev-cluster, with all its state under `state_dir`."""

    state_dir: Path
    port: int = 6817

    def _run(self, command: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        env = {**os.environ, "AMOE_SLURM_PORT": str(self.port)}
        return subprocess.run(
            [str(DEV_CLUSTER_SCRIPT), command, str(self.state_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start(self) -> None:
        out = self._run("start")
        if out.returncode != 0:
            raise AmoeError(
                f"slurm dev cluster failed to start: {(out.stderr or out.stdout).strip().splitlines()[-1:]}"
            )

    def stop(self) -> None:
        self._run("stop", timeout_s=60)

    def is_up(self) -> bool:
        return self._run("status", timeout_s=30).returncode == 0

    def env(self) -> dict[str, str]:
        """Variables a client (sbatch, squeue, submitit) needs: SLURM_CONF and the sacct stand-in on PATH."""
        return {
            "SLURM_CONF": str(Path(self.state_dir) / "slurm.conf"),
            "PATH": f"{Path(self.state_dir) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }

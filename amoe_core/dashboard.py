"""`amoe dashboard`: serve dashboards/app.py (Streamlit) on 127.0.0.1, from any working directory.

The page has no login, so it binds the loopback interface only; another address needs `--allow-remote`. What the
page may read is fixed here, not in the browser: the runs directories, the curation directory and the Optuna storage
(defaults from params.yaml, made absolute against the working directory) travel to the app as environment variables,
and the app offers no field to type another path or URL into.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

from amoe_core.config.params import Params
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.tracking.runs import TEACHERS_RUN

APP = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r}: cannot resolve ({e.strerror})") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def absolute_storage(url: str) -> str:
    """A relative `sqlite:///path` made absolute against the working directory (other URLs unchanged)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url.removeprefix(prefix)).resolve())
    return url


def default_runs_dirs(params: Params) -> list[str]:
    """distill.runs_dir, report.runs_dir when it exists, then every other folder beside it that `amoe ablate`
    collected (one holding a `_teachers` run, e.g. results/ablations-longtail): a fresh clone offers them all."""
    report = Path(params.report.runs_dir)
    collected = sorted(str(t.parent) for t in report.parent.glob(f"*/{TEACHERS_RUN}") if t.is_dir())
    return list(dict.fromkeys([str(params.distill.runs_dir)] + [str(report)] * report.is_dir() + collected))


def roots(params: Params, runs: list[str] | None, curation: str | None, storage: str | None) -> dict[str, str]:
    """The environment that tells the app what it may show: AMOE_RUNS_DIR (os.pathsep-separated), AMOE_CURATION_DIR,
    AMOE_OPTUNA_STORAGE. Default runs directories: `default_runs_dirs`."""
    runs = runs or default_runs_dirs(params)
    dirs = list(dict.fromkeys(str(Path(d).resolve()) for d in runs))
    return {
        "AMOE_RUNS_DIR": os.pathsep.join(dirs),
        "AMOE_CURATION_DIR": str(Path(curation or params.sample.out.parent).resolve()),
        "AMOE_OPTUNA_STORAGE": absolute_storage(storage or params.sweep.storage),
    }


def command(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def launch(
    params: Params,
    host: str = "127.0.0.1",
    port: int = 8501,
    allow_remote: bool = False,
    runs: list[str] | None = None,
    curation: str | None = None,
    storage: str | None = None,
) -> None:
    """Become the Streamlit server (exec: signals such as Ctrl-C or SIGTERM reach it directly)."""
    if not APP.exists():
        raise AmoeError(f"{APP} missing: `amoe dashboard` runs from a checkout of the repository (pip install -e .)")
    if not allow_remote and not is_loopback(host):
        raise ConfigError(
            f"--host {host}: not a loopback address; the dashboard has no login, so it serves 127.0.0.1 only. "
            "Pass --allow-remote to serve it on the network anyway"
        )
    env = {**os.environ, **roots(params, runs, curation, storage)}
    # the page imports the `dashboards` package, which lives in the checkout next to amoe_core (not installed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP.parent.parent), os.environ.get("PYTHONPATH")]))
    print(f"dashboard: http://{host}:{port} (runs: {env['AMOE_RUNS_DIR']}); Ctrl-C stops it", flush=True)
    argv = command(host, port)
    os.execve(argv[0], argv, env)

"""Serve every flow as a Prefect deployment, so the UI can trigger or schedule any stage with parameters.

    prefect server start --host 127.0.0.1          # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py

Run from the repository root (stages read params.yaml and write data/ and runs/ relative to it). Optional
`--cron "0 3 * * *"` schedules the full pipeline.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `flows` and `amoe_core` from a checkout

from prefect.runner import Runner  # noqa: E402

from flows.pipeline import FLOWS, pipeline_flow  # noqa: E402


def deployments(cron: str | None = None) -> list:
    """One deployment per flow, named after it; the pipeline optionally on a cron schedule."""
    return [f.to_deployment(name=f.name, cron=cron if f is pipeline_flow else None, tags=["amoe"]) for f in FLOWS]


def stop_at_once(signum: int, frame: object = None) -> None:  # noqa: ARG001 (signal handler signature)
    """SIGTERM / SIGINT: stop serving now (as KeyboardInterrupt); a second signal ends the process without waiting.
    Prefect's own SIGTERM handler drains in-flight work first, and a shell that starts us in the background leaves
    SIGINT ignored: both made one signal not enough."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_DFL)
    print(f"serve: {signal.Signals(signum).name}, shutting down", file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cron", default=None, help="cron schedule for the full pipeline (default: none)")
    args = ap.parse_args(argv)
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop_at_once)
    runner = Runner(name="amoe")
    runner.handle_sigterm = stop_at_once  # Runner.start() installs `self.handle_sigterm` for SIGTERM: ours
    served = deployments(args.cron)
    for d in served:
        runner.add_deployment(d)
    print(f"serving {len(served)} deployments: {', '.join(d.name for d in served)}; Ctrl-C stops", flush=True)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass  # stop_at_once said why


if __name__ == "__main__":
    main()

"""Serve every flow as a Prefect deployment, so the UI can trigger or schedule any stage with parameters.

    prefect server start --host 127.0.0.1          # UI at http://127.0.0.1:4200
    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py

Run from the repository root (stages read params.yaml and write data/ and runs/ relative to it). Optional
`--cron "0 3 * * *"` schedules the full pipeline.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `flows` and `amoe_core` from a checkout

from prefect import serve  # noqa: E402

from flows.pipeline import FLOWS, pipeline_flow  # noqa: E402


def deployments(cron: str | None = None) -> list:
    """One deployment per flow, named after it; the pipeline optionally on a cron schedule."""
    return [f.to_deployment(name=f.name, cron=cron if f is pipeline_flow else None, tags=["amoe"]) for f in FLOWS]


def stop_on_first_signal() -> None:
    """SIGTERM and SIGINT stop serving at once (as KeyboardInterrupt, which `serve` handles by shutting down); a
    second signal ends the process without waiting. Installed explicitly: a shell starting us in the background
    leaves SIGINT ignored, and SIGTERM would otherwise wait for Prefect's own drain."""

    def handler(signum: int, frame) -> None:  # noqa: ANN001, ARG001 (signal handler signature)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        print(f"serve: {signal.Signals(signum).name}, shutting down", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, handler)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cron", default=None, help="cron schedule for the full pipeline (default: none)")
    args = ap.parse_args(argv)
    stop_on_first_signal()
    try:
        serve(*deployments(args.cron))
    except KeyboardInterrupt:
        pass  # the signal handler said why


if __name__ == "__main__":
    main()

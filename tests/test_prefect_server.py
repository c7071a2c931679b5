"""A real `prefect server start` on 127.0.0.1: run a flow against it and read back, through its REST API, the run's
state, the stage's own log lines and the markdown artifact; then serve every flow and stop the server with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The flow run: the real `report` stage on the committed ablation runs, written to a temporary file.
CLIENT = """
import sys
sys.path.insert(0, {root!r})
from flows.pipeline import stage_flow

print(stage_flow(stage="report", overrides={overrides!r}, use_dvc=False))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    req = urllib.request.Request(
        url,
        data=json.dumps(data).encode() if data is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_flow_run_completes_on_a_real_server(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if _get(f"{api}/health") is True:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prefect server not healthy after 90 s"
            time.sleep(0.5)

        out_md = tmp_path / "RESULTS.md"
        overrides = [f"report.runs_dir={ROOT / 'results' / 'ablations'}", f"report.out={out_md}"]
        out = subprocess.run(
            [sys.executable, "-c", CLIENT.format(root=str(ROOT), overrides=overrides)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out_md.exists() and "## Variants" in out_md.read_text()

        runs = _get(f"{api}/flow_runs/filter", {"limit": 10})
        assert len(runs) == 1
        run = runs[0]
        assert run["state"]["type"] == "COMPLETED"
        flow = _get(f"{api}/flows/{run['flow_id']}")
        assert flow["name"] == "amoe-stage"
        assert run["parameters"]["stage"] == "report" and run["parameters"]["overrides"] == overrides
        task_runs = _get(f"{api}/task_runs/filter", {"limit": 10})
        assert [t["name"] for t in task_runs] == ["report"] and task_runs[0]["state"]["type"] == "COMPLETED"

        # the stage's own log lines reach the flow run's log: here the report's "wrote <path>"
        logs = _get(f"{api}/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "limit": 200})
        amoe_lines = [entry["message"] for entry in logs if entry["name"].startswith("amoe_core")]
        assert f"wrote {out_md}" in amoe_lines, [entry["message"] for entry in logs]
        # and the run ends with a markdown artifact: where the output is and the command that reproduces it
        arts = _get(f"{api}/artifacts/filter", {"artifacts": {"key": {"any_": ["amoe-report"]}}})
        assert len(arts) == 1 and arts[0]["type"] == "markdown" and arts[0]["flow_run_id"] == run["id"]
        md = arts[0]["data"]
        assert f"`{out_md}`" in md
        assert f"amoe report -S report.runs_dir={ROOT / 'results' / 'ablations'} -S report.out={out_md}" in md

        # flows/serve.py: every flow as a deployment, `stage` offered as a list of choices; one SIGTERM stops it
        serve = subprocess.Popen(
            [sys.executable, str(ROOT / "flows" / "serve.py")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 120
            while len(deps := _get(f"{api}/deployments/filter", {"limit": 20})) < 7:
                assert serve.poll() is None, serve.stdout.read()
                assert time.monotonic() < deadline, f"{len(deps)} deployments after 120 s"
                time.sleep(0.5)
            stage_dep = next(d for d in deps if d["name"] == "amoe-stage")
            schema = stage_dep["parameter_openapi_schema"]
            assert "report" in schema["definitions"]["Stage"]["enum"]
            assert "evaluate: kNN, linear probe" in schema["properties"]["stage"]["description"]
            serve.send_signal(signal.SIGTERM)
            # one signal is enough (a generous bound: the old behaviour ignored it until Prefect's drain ended)
            assert serve.wait(timeout=30) is not None
            assert "SIGTERM, shutting down" in serve.stdout.read()
        finally:
            if serve.poll() is None:
                serve.kill()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

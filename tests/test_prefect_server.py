"""A real `prefect server start` on 127.0.0.1: run a flow against it, find the run COMPLETED through its REST API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The flow run: our generic stage flow on a stage registered here (the real stages need real data).
CLIENT = """
import sys
sys.path.insert(0, {root!r})
import amoe_core.stages as stages
from flows.pipeline import stage_flow

def probe(params, **kwargs):
    return {{"max_side": params.ingest.max_side}}

stages.STAGES["probe"] = "__main__:probe"
print(stage_flow(stage="probe", overrides=["ingest.max_side=77"], use_dvc=False))
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

        out = subprocess.run(
            [sys.executable, "-c", CLIENT.format(root=str(ROOT))],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert "'max_side': 77" in out.stdout

        runs = _get(f"{api}/flow_runs/filter", {"limit": 10})
        assert len(runs) == 1
        run = runs[0]
        assert run["state"]["type"] == "COMPLETED"
        flow = _get(f"{api}/flows/{run['flow_id']}")
        assert flow["name"] == "amoe-stage"
        assert run["parameters"]["stage"] == "probe" and run["parameters"]["overrides"] == ["ingest.max_side=77"]
        task_runs = _get(f"{api}/task_runs/filter", {"limit": 10})
        assert [t["name"] for t in task_runs] == ["probe"] and task_runs[0]["state"]["type"] == "COMPLETED"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

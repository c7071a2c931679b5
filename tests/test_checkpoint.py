"""Checkpoint files: exact round trip, and a kill at any moment never leaves a corrupt 'latest' checkpoint."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from amoe_core.checkpoints import (
    LATEST,
    complete_checkpoints,
    latest_checkpoint,
    load_model_tensors,
    load_optimizer_state,
    read_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _model_and_opt() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 8)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_round_trip_weights_optimizer_and_rng(tmp_path: Path) -> None:
    model, opt = _model_and_opt()
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    ckpt = save_checkpoint(tmp_path, 7, model, opt, {"rng": rng_state(), "data": {"epoch": 1, "batch": 2}})
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    assert ckpt.name == "step_0000007" and (tmp_path / LATEST).read_text().strip() == "step_0000007"
    tensors = load_model_tensors(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[k], v)
    state = read_state(ckpt)
    assert state["step"] == 7 and state["data"] == {"epoch": 1, "batch": 2}
    json.dumps(state)  # JSON only, no pickle

    fresh_model, fresh_opt = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)), None
    fresh_model.load_state_dict(tensors)
    fresh_opt = torch.optim.AdamW(fresh_model.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(load_optimizer_state(ckpt))
    # one more identical step from both: same weights after
    x = torch.randn(5, 8)
    for m, o in ((model, opt), (fresh_model, fresh_opt)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh_model.parameters()):
        assert torch.equal(a, b)

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect


def test_keep_prunes_oldest_and_stale_temp_dirs_are_ignored(tmp_path: Path) -> None:
    model, opt = _model_and_opt()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, model, opt, {}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_0000030", "step_0000040"]
    # a half-written checkpoint (a kill before the rename) is invisible to readers
    (tmp_path / ".tmp-step_0000050-123").mkdir()
    (tmp_path / ".tmp-step_0000050-123" / "model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(tmp_path).name == "step_0000040"
    # a complete checkpoint the pointer does not name yet (kill between rename and pointer update) wins
    save_checkpoint(tmp_path, 50, model, opt, {}, keep=5)
    (tmp_path / LATEST).write_text("step_0000040\n")
    assert latest_checkpoint(tmp_path).name == "step_0000050"
    assert not list(tmp_path.glob(".tmp-*"))


WRITER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from amoe_core.checkpoints import save_checkpoint
    model = nn.Linear(1024, 1024)  # 4 MB of weights: a save takes long enough to be interrupted
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 1024)).sum().backward(); opt.step()
    step = int(sys.argv[2])
    print("ready", flush=True)
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))  # the weights tell which step they belong to
        save_checkpoint(sys.argv[1], step, model, opt, {"marker": step}, keep=2)
    """
)


def test_kill_at_random_moments_never_corrupts(tmp_path: Path) -> None:
    rng = random.Random(0)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ckpts = tmp_path / "ckpts"
    last_step = 0
    for trial in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(ckpts), str(last_step)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = latest_checkpoint(ckpts)
        if ckpt is None:  # killed before the first save completed
            assert trial == 0 or last_step == 0
            continue
        step = read_state(ckpt)["step"]
        assert read_state(ckpt)["marker"] == step >= last_step
        tensors = load_model_tensors(ckpt)
        assert all(bool((t == float(step)).all()) for t in tensors.values()), "weights from another step"
        opt_state = load_optimizer_state(ckpt)
        assert len(opt_state["state"]) == 2
        last_step = step
    assert last_step > 0, "no checkpoint ever completed; the writer never got going"

"""A teacher directory never runs its own Python: transformers loads with trust_remote_code=False, and a directory
that needs custom code gets one line saying how to convert it (even when stdin answers "y")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")  # what a hostile checkpoint does on import
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil_vit"
"""


def _teacher_dir(root: Path, model_type: str) -> tuple[Path, Path]:
    d, marker = root / "teacher", root / "PWNED"
    d.mkdir()
    (d / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = {"model_type": model_type, "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}
    (d / "config.json").write_text(json.dumps(config))
    return d, marker


def _load(teacher: Path, home: Path) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from amoe_core.config import TeacherSpec\n"
        "from amoe_core.errors import AmoeError\n"
        "from amoe_core.models.teachers.loader import load_teacher\n"
        "try:\n"
        f"    load_teacher(TeacherSpec(name='t', kind='hf', path={str(teacher)!r}))\n"
        "except AmoeError as e:\n"
        "    print(e, file=sys.stderr); sys.exit(2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], input="y\ny\n", capture_output=True, text=True, env=env, timeout=300
    )


def test_custom_code_teacher_is_refused_and_never_run(tmp_path) -> None:
    teacher, marker = _teacher_dir(tmp_path, "evil_vit")
    res = _load(teacher, tmp_path / "hf")
    assert not marker.exists(), "the teacher directory's evil.py was executed"
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "custom code" in err[0] and "save_pretrained" in err[0], err

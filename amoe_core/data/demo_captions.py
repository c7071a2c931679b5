"""Captions the demo pool's Debian packages carry, for the demo SigLIP2 teacher's text tower (`amoe teachers demo`).

Tux Paint ships a description beside every stamp (`<stamp>.txt`: the English text on the first line, then one
`lang.utf8=...` line per translation). `captions/tuxpaint.jsonl` pairs each stamp copied into the pool with its
category path and that English description, e.g. `{"image": "pool/tuxpaint/animals/birds__crow.png",
"caption": "animals birds: A crow.", "keywords": "animals birds"}`. Openclipart carries no text but its category folders and file names (the
picture's title), and fashion-mnist its class names: those captions are read from the labelled splits themselves
(train/demo_teachers/captions.py).
"""

from __future__ import annotations

import json
from pathlib import Path

TUXPAINT_CAPTIONS = Path("captions") / "tuxpaint.jsonl"


def stamp_description(png: Path) -> str:
    """The English description of a Tux Paint stamp (first line of its .txt), '' when it has none."""
    txt = png.with_suffix(".txt")
    if not txt.is_file():
        return ""
    for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            return "" if "=" in line.split(" ")[0] else line.strip()  # a translation line first: no English text
    return ""


def write_tuxpaint_captions(stamps: list[tuple[Path, Path]], src_root: Path, out_root: Path) -> int:
    """One JSON line per pool stamp (source png, its copy under out_root); returns how many have a description."""
    lines = []
    for src, dst in stamps:
        words = " ".join(p.replace("_", " ") for p in src.relative_to(src_root).parts[:-1])
        text = stamp_description(src)
        if text:
            lines.append(
                json.dumps({"image": str(dst.relative_to(out_root)), "caption": f"{words}: {text}", "keywords": words})
            )
    path = out_root / TUXPAINT_CAPTIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)

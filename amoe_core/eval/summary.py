"""One run's eval.json as a few lines for the terminal (the end of `amoe evaluate`)."""

from __future__ import annotations

from typing import Any

from amoe_core.tracking.eval_record import KNN, SEGMENTATION, ZERO_SHOT, rows, value


def summary_lines(ev: dict[str, Any], res: str, k: str) -> list[str]:
    """One run's eval.json in a few lines for the terminal: kNN and linear probe per dataset and feature at the main
    resolution, zero-shot top-1 and segmentation mIoU / pixel accuracy at every resolution they ran at, then
    fidelity per teacher."""
    lines = []
    for d in sorted(ev.get(KNN) or {}):
        for feat in sorted(ev[KNN][d]):
            knn, lin = value(ev, "knn", d, feat, res, k), value(ev, "linear", d, feat, res)
            cells = [f"kNN {k} {100 * knn:.1f}%" if knn is not None else "", f"linear {100 * lin:.1f}%" if lin else ""]
            lines.append(f"{d} {feat} at {res}: " + ", ".join(c for c in cells if c))
    for r in rows(ev, ZERO_SHOT):
        lines.append(f"{r['dataset']} {r['feature']} at {r['resolution']}px: zero-shot {100 * r['value']:.1f}%")
    seg: dict[tuple[str, str, int], dict[str, float]] = {}
    for r in rows(ev, SEGMENTATION):
        seg.setdefault((r["dataset"], r["feature"], r["resolution"]), {})[r["metric"]] = r["value"]
    for (d, feat, px), m in sorted(seg.items()):
        cells = ", ".join(f"{name} {100 * v:.1f}%" for name, v in sorted(m.items()))
        lines.append(f"{d} {feat} at {px}px: segmentation {cells}")
    for t, m in sorted((ev.get("fidelity") or {}).items()):
        lines.append(f"fidelity to {t}: " + ", ".join(f"{name} {v:.3f}" for name, v in m.items()))
    return lines

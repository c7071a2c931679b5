"""One run's eval.json as a few lines for the terminal (the end of `amoe evaluate`)."""

from __future__ import annotations

from typing import Any

from amoe_core.tracking.variants import lookup


def summary_lines(ev: dict[str, Any], res: str, k: str) -> list[str]:
    """One run's eval.json in a few lines for the terminal: kNN and linear probe per dataset and feature at the main
    resolution, then fidelity per teacher."""
    lines = []
    for d in sorted(ev.get("knn") or {}):
        for feat in sorted(ev["knn"][d]):
            knn, lin = lookup(ev, "knn", d, feat, res, k), lookup(ev, "linear", d, feat, res)
            cells = [f"kNN {k} {100 * knn:.1f}%" if knn is not None else "", f"linear {100 * lin:.1f}%" if lin else ""]
            lines.append(f"{d} {feat} at {res}: " + ", ".join(c for c in cells if c))
    for t, m in sorted((ev.get("fidelity") or {}).items()):
        lines.append(f"fidelity to {t}: " + ", ".join(f"{name} {v:.3f}" for name, v in m.items()))
    return lines

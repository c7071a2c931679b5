"""One colour per variant, the same in every chart: the dashboard's Altair charts, the report's matplotlib figures and
`dvc plots` (the templates in .dvc/plots/ colour each run by its variant: `run_colours`, scripts/dvc-plot-colours).

A variant's colour is fixed by its place in the report's variant order (`variants.variant_order`: the reference
first, sweep trials last) over all the variants of a runs directory, never by what a chart happens to show: a
chart of two selected variants draws them in the colours they have everywhere else. "reference" is always
REFERENCE; teachers are greys (reference lines, drawn dashed), never a variant's colour.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable

from amoe_core.tracking.runs import TEACHERS_RUN, student_runs
from amoe_core.tracking.variants import group_variants, variant_order

REFERENCE = "#1f77b4"  # blue, on every chart of the dashboard and the report
# Far apart in CIELAB (no pair closer than a delta E of ~22, tests/test_palette.py): the 10 of tableau/matplotlib's
# tab10 without its grey (kept for teachers), then five that stay apart from them. tab20's light shades are not
# used: two of them read as one colour ("two the same teal").
VARIANT_COLOURS = (
    REFERENCE,
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#d62728",  # red
    "#9467bd",  # purple
    "#8c564b",  # brown
    "#e377c2",  # pink
    "#bcbd22",  # olive
    "#17becf",  # cyan
    "#393b79",  # indigo
    "#ffd92f",  # yellow
    "#00796b",  # dark teal
    "#7b4173",  # plum
    "#a6d854",  # light green
    "#fb9a99",  # salmon
)
TEACHER_COLOURS = ("#4d4d4d", "#a0a0a0")  # teachers are references, not contenders: greys
TEACHER_PREFIX = "teacher "  # the dashboard's label of a teacher's own numbers: "teacher dino"


def _extra(n: int) -> list[str]:
    """`n` more colours past the fixed list (a long sweep): hues spread around the wheel at two lightnesses, so each
    is a different colour, if not as far apart as the list's."""
    out = []
    for i in range(n):
        h, light = (i * 0.618034) % 1.0, 0.35 + 0.2 * (i % 2)  # golden-ratio steps never repeat a hue
        r, g, b = colorsys.hls_to_rgb(h, light, 0.75)
        out.append(f"#{round(255 * r):02x}{round(255 * g):02x}{round(255 * b):02x}")
    return out


def _greys(n: int) -> list[str]:
    """TEACHER_COLOURS for up to two teachers; for more, n greys evenly spaced from dark to light."""
    if n <= len(TEACHER_COLOURS):
        return list(TEACHER_COLOURS[:n])
    return [f"#{round(0x30 + 0x90 * i / (n - 1)):02x}" * 3 for i in range(n)]


def variant_colours(labels: Iterable[str]) -> dict[str, str]:
    """Label -> colour for every variant (and teacher, "teacher <name>") of a runs directory: the reference gets
    REFERENCE, the others the list in the report's order, teachers a grey each. Pass all of a directory's labels,
    not a selection, so a colour never depends on what else is shown."""
    labels = list(dict.fromkeys(labels))
    teachers = sorted(x for x in labels if x.startswith(TEACHER_PREFIX))
    students = variant_order(x for x in labels if x not in teachers)
    rest = [x for x in students if x != "reference"]
    pool = list(VARIANT_COLOURS[1:])
    pool += _extra(max(0, len(rest) - len(pool)))
    colours = {"reference": REFERENCE} if "reference" in students else {}  # first: the legends' order
    colours.update(zip(rest, pool))
    colours.update(zip(teachers, _greys(len(teachers))))
    return colours


def run_colours(runs_dir: str) -> dict[str, str]:
    """Run id -> the colour of its variant (`variant_colours` over the directory's variants), the teachers' own run
    (`_teachers`) the first teacher grey: what `dvc plots` draws each run's lines in."""
    variants = group_variants(student_runs(runs_dir))
    colours = variant_colours(v.label for v in variants)
    out = {r.id: colours[v.label] for v in variants for r in v.runs}
    return {**dict(sorted(out.items())), TEACHERS_RUN: TEACHER_COLOURS[0]}

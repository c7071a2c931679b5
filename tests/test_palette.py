"""One colour per variant: the palette itself, and the report's matplotlib figures drawn in it."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from PIL import Image

from amoe_core.experiments.report_plots import resolution_plot
from amoe_core.tracking.palette import REFERENCE, TEACHER_COLOURS, VARIANT_COLOURS, variant_colours
from amoe_core.tracking.runs import student_runs
from amoe_core.tracking.variants import HEADLINE_K, group_variants, headline

ABLATIONS = Path(__file__).resolve().parent.parent / "results" / "ablations"


def _lab(colour: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour: distances there approximate how different two colours look."""
    rgb = np.array(to_rgb(colour))
    rgb = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ rgb / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_the_fixed_colours_look_different():
    # delta E 76 above 20: clearly different side by side (2.3 is "just noticeable"); tab20's light/dark pairs, the
    # "two teals" a reader could not tell apart, are at ~15-25 with their partner on top of that
    colours = [*VARIANT_COLOURS, *TEACHER_COLOURS]
    closest = min(np.linalg.norm(_lab(a) - _lab(b)) for a, b in itertools.combinations(colours, 2))
    assert closest > 20, closest
    assert len(VARIANT_COLOURS) >= 11


def test_every_variant_gets_its_own_colour_and_the_reference_always_the_same():
    labels = [f"key={i}" for i in range(40)] + ["reference", "sweep s/t0001", "teacher dino", "teacher siglip"]
    colours = variant_colours(labels)
    assert set(colours) == set(labels) and len(set(colours.values())) == len(labels)  # no two the same
    assert colours["reference"] == REFERENCE and list(colours)[0] == "reference"
    assert [colours["teacher dino"], colours["teacher siglip"]] == list(TEACHER_COLOURS)
    # a colour depends on the directory's variants, never on their order of arrival or on what else a chart shows
    assert variant_colours(reversed(labels)) == colours
    assert variant_colours(["reference", "b=1", "a=1"]) == {"reference": REFERENCE, "a=1": "#ff7f0e", "b=1": "#2ca02c"}


def test_the_reports_figure_draws_each_variant_in_its_palette_colour(tmp_path):
    runs = student_runs(ABLATIONS)
    variants = group_variants(runs)
    datasets, feat, _ = headline(runs)
    path = resolution_plot(variants, datasets, HEADLINE_K, feat, tmp_path / "res.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = variant_colours(v.label for v in variants)
    assert len(colours) == 9  # the committed ablation's variants
    for label, colour in colours.items():
        rgb = np.array([round(255 * c) for c in to_rgb(colour)])
        # 6 markers per variant (3 resolutions x 2 datasets) whose inner pixels are the exact colour: ~20 each at
        # 110 dpi; 30 leaves room for overlaps and rules out stray antialiased pixels
        assert (pixels == rgb).all(axis=1).sum() >= 30, (label, colour)
    # matplotlib's own cycle would leave cyan unused with 9 lines (its 10th colour); the palette gives it target=2000
    assert colours["target=2000"] == "#17becf"

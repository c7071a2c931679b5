"""Altair chart builders for the dashboard (each takes a frame from `loaders` and returns a chart).

Colour always means the variant (one legend entry each, the same colour on every chart of the page); small multiples
split what a colour cannot (loss term, dataset, feature). Heights are set from the number of rows drawn, so a chart
never keeps the size of what it showed before a widget changed it.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

ROW_PX = 22  # height of one bar row
# `height` is the plot area alone (title, axes and legend come on top): Streamlit's default for a single chart, "fit",
# squeezes everything into `height`, which collapses a bar chart whose height was set from its rows.
PAD = alt.AutoSizeParams(type="pad", contains="padding")
PANEL = {"width": 260, "height": 180}  # one small-multiple panel
# tableau10's colours are far apart; tableau20 adds a light shade of each, for pages with more than ten variants
PALETTES = ((10, "tableau10"), (20, "tableau20"))


def variant_colour(domain: list[str], title: str = "variant") -> alt.Color:
    """Colour by variant with a fixed domain, so a variant has the same colour on every chart; the legend sits
    below the chart, where long variant names are not cut off."""
    scheme = next((s for n, s in PALETTES if len(domain) <= n), PALETTES[-1][1])
    legend = alt.Legend(orient="bottom", columns=3, labelLimit=0)
    return alt.Color(
        "variant:N", title=title, scale=alt.Scale(domain=domain, scheme=scheme), sort=domain, legend=legend
    )


def loss_curves(df: pd.DataFrame, domain: list[str]) -> alt.FacetChart:
    """One panel per loss term; a line per run, coloured by its variant (seeds of a variant share the colour)."""
    return (
        alt.Chart(df)
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y("value:Q", title="loss", scale=alt.Scale(type="symlog")),
            color=variant_colour(domain),
            detail="run:N",
            tooltip=["variant", "run", "term", "step", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(**PANEL)
        .facet(facet=alt.Facet("term:N", title="loss term"), columns=3)
        .resolve_scale(y="independent")
        .properties(title="Loss terms")
    )


def expert_load(df: pd.DataFrame) -> alt.FacetChart:
    """Layer x expert heatmap per run of the fraction of routed token slots, on one colour scale for all runs
    (uniform routing = 1 / experts)."""
    top = float(df.load.max()) if len(df) else 1.0
    layers = int(df.layer.nunique()) if len(df) else 1
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("expert:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("load:Q", scale=alt.Scale(scheme="viridis", domain=[0, top]), title="load"),
            tooltip=["run", "layer", "expert", alt.Tooltip("load:Q", format=".3f")],
        )
        .properties(width=200, height=ROW_PX * layers)
        .facet(facet=alt.Facet("run:N", title=None), columns=4)
        .properties(title="Expert load (last logged step)")
    )


def accuracy_vs_resolution(df: pd.DataFrame, k: int, domain: list[str]) -> alt.FacetChart:
    """Mean kNN accuracy over seeds (line + points, error bar = std) against resolution, coloured by variant; one
    panel per dataset (columns) and feature (rows). `df` holds one row per run: (variant, run, dataset, feature,
    resolution, accuracy in %)."""
    base = alt.Chart().encode(
        x=alt.X(
            "resolution:Q",
            title="input resolution (px)",
            scale=alt.Scale(zero=False),
            axis=alt.Axis(values=sorted(int(r) for r in df.resolution.unique())),  # ticks at evaluated resolutions
        ),
        color=variant_colour(domain),
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean(accuracy):Q", title=f"kNN accuracy % (k={k})", scale=alt.Scale(zero=False)),
        tooltip=["variant", "resolution", alt.Tooltip("mean(accuracy):Q", format=".1f", title="mean %")],
    )
    spread = base.mark_errorbar(extent="stdev").encode(y=alt.Y("accuracy:Q", title=f"kNN accuracy % (k={k})"))
    return (
        alt.layer(line, spread, data=df)
        .properties(**PANEL)
        .facet(column=alt.Column("dataset:N", title="dataset"), row=alt.Row("feature:N", title="feature"))
        .properties(title=f"kNN accuracy vs resolution (mean ± std over seeds, k={k})")
    )


def teacher_vs_student(df: pd.DataFrame, domain: list[str], title: str) -> alt.LayerChart:
    """Horizontal bars for one dataset and teacher: the teacher's own accuracy first, then each variant's student
    adaptor for that teacher (mean over seeds, error bar = std). `df`: (variant, run, accuracy in %)."""
    order = list(dict.fromkeys(df.variant))
    height = ROW_PX * len(order)
    colour = variant_colour(domain)
    colour.legend = None  # the rows are labelled: a legend would only repeat them
    base = alt.Chart(df).encode(
        y=alt.Y("variant:N", sort=order, title=None, axis=alt.Axis(labelLimit=360)),
        color=colour,
    )
    bars = base.mark_bar().encode(
        x=alt.X("mean(accuracy):Q", title="kNN accuracy %", scale=alt.Scale(domain=[0, 100])),
        tooltip=["variant", alt.Tooltip("mean(accuracy):Q", format=".1f", title="mean %"), "count()"],
    )
    spread = base.mark_errorbar(extent="stdev", color="black").encode(x=alt.X("accuracy:Q", title="kNN accuracy %"))
    return (bars + spread).properties(title=title, width=300, height=height, autosize=PAD)


def sweep_history(df: pd.DataFrame, objective: str) -> alt.LayerChart:
    """Objective per trial (points, by state) and the best value so far (step line); trials are whole numbers."""
    axis = alt.Axis(format="d", tickMinStep=1)
    base = alt.Chart(df).encode(x=alt.X("number:Q", title="trial", axis=axis))
    points = base.mark_circle(size=60).encode(
        y=alt.Y("value:Q", title=objective, scale=alt.Scale(zero=False)),
        color=alt.Color("state:N"),
        tooltip=[c for c in df.columns if c.startswith("params_")] + ["number", "value", "state"],
    )
    best = base.mark_line(interpolate="step-after", color="black").encode(y="best so far:Q")
    return (points + best).properties(title="Sweep history", height=260)


def importance(df: pd.DataFrame, title: str) -> alt.Chart:
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            x=alt.X("importance:Q"),
            y=alt.Y("parameter:N", sort="-x", axis=alt.Axis(labelLimit=0), title=None),  # full names, not cut
            tooltip=["parameter", alt.Tooltip("importance:Q", format=".3f")],
        )
        .properties(height=ROW_PX * max(len(df), 1), autosize=PAD)
    )


def labelled_values(df: pd.DataFrame, title: str) -> alt.Chart:
    """A {label: value} block of the curation report (e.g. source shares per selection) as grouped bars."""
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=None, title=None),
            xOffset=alt.XOffset("group:N"),
            y=alt.Y("value:Q", title=None),
            color=alt.Color("group:N", title=None),
            tooltip=["group", "label", "value"],
        )
    )

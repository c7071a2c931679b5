"""Altair chart builders for the dashboard (each takes a frame from `loaders` and returns a chart).

Colour always means the variant (one legend entry each, the same colour on every chart of the page); small multiples
split what a colour cannot (loss term, dataset, feature). Heights are set from the number of rows drawn, so a chart
never keeps the size of what it showed before a widget changed it.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from amoe_core.tracking.palette import TEACHER_COLOURS, TEACHER_PREFIX

ROW_PX = 22  # height of one bar row
# `height` is the plot area alone (title, axes and legend come on top): Streamlit's default for a single chart, "fit",
# squeezes everything into `height`, which collapses a bar chart whose height was set from its rows.
PAD = alt.AutoSizeParams(type="pad", contains="padding")
PANEL = {"width": 260, "height": 180}  # one small-multiple panel (loss terms)
WIDE_PANEL = {"width": 460, "height": 300}  # accuracy vs resolution: one per dataset, 11 lines must stay apart
DASHES = alt.Scale(domain=["student", "teacher"], range=[[1, 0], [5, 3]])  # teachers: dashed reference lines
MARGIN = 0.08  # a fitted axis extends this fraction of the data's span beyond it on each side
MIN_SPAN = 2.0  # points: an axis never spans less, so one value or a tie still has a readable axis


def fitted(values: pd.Series | list[float]) -> list[float]:
    """An axis domain around the data: its span plus MARGIN each side, out to whole points (not 0-100: a 1-3
    point effect must be visible)."""
    lo, hi = float(min(values)), float(max(values))
    pad = max(MARGIN * (hi - lo), (MIN_SPAN - (hi - lo)) / 2, 0.0)
    return [math.floor(lo - pad), math.ceil(hi + pad)]


def shown_in(df: pd.DataFrame, colours: dict[str, str]) -> list[str]:
    """The labels `df` draws, in the page's order (the colours' keys): the legend lists only these."""
    present = set(df.variant)
    return [v for v in colours if v in present]


def variant_colour(colours: dict[str, str], shown: list[str], title: str = "variant") -> alt.Color:
    """Colour by variant: the legend lists the variants drawn (`shown`), each in the colour it has on every chart
    (`colours`, from amoe_core.tracking.palette over all variants); below the chart, where names are not cut off."""
    legend = alt.Legend(orient="bottom", columns=3, labelLimit=0)
    scale = alt.Scale(domain=shown, range=[colours[v] for v in shown])
    return alt.Color("variant:N", title=title, scale=scale, sort=shown, legend=legend)


def loss_curves(df: pd.DataFrame, colours: dict[str, str]) -> alt.FacetChart:
    """One panel per loss term; a line per run, coloured by its variant (seeds of a variant share the colour)."""
    return (
        alt.Chart(df)
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y("value:Q", title="loss", scale=alt.Scale(type="symlog")),
            color=variant_colour(colours, shown_in(df, colours)),
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


def accuracy_vs_resolution(df: pd.DataFrame, k: int, colours: dict[str, str]) -> alt.VConcatChart:
    """Mean kNN accuracy over seeds (line + points, error bar = std) against resolution, coloured by variant, the
    teachers as dashed grey reference lines; one wide panel per dataset (its own fitted y axis: the datasets' levels
    differ by tens of points), one row per feature. `df` holds one row per run: (variant, run, dataset, feature,
    resolution, accuracy in %); a teacher's variant starts with "teacher "."""
    df = df.assign(kind=df.variant.str.startswith(TEACHER_PREFIX).map({True: "teacher", False: "student"}))
    shown = shown_in(df, colours)
    ticks = sorted(int(r) for r in df.resolution.unique())  # ticks at the evaluated resolutions
    rows = []
    for feature in sorted(df.feature.unique()):
        panels = []
        for dataset in sorted(df.dataset.unique()):
            part = df[(df.dataset == dataset) & (df.feature == feature)]
            if part.empty:
                continue
            cell = part.groupby(["variant", "resolution"]).accuracy.agg(["mean", "std"]).fillna(0.0)
            domain = fitted(pd.concat([cell["mean"] - cell["std"], cell["mean"] + cell["std"]]))
            y = alt.Y("mean(accuracy):Q", title=f"kNN accuracy % (k={k})", scale=alt.Scale(domain=domain, nice=False))
            base = alt.Chart(part).encode(
                x=alt.X(
                    "resolution:Q",
                    title="input resolution (px)",
                    scale=alt.Scale(zero=False),
                    axis=alt.Axis(values=ticks),
                ),
                color=variant_colour(colours, shown),
            )
            line = base.mark_line(point=True).encode(
                y=y,
                strokeDash=alt.StrokeDash("kind:N", scale=DASHES, legend=None),  # the caption says: teachers dashed
                tooltip=["variant", "resolution", alt.Tooltip("mean(accuracy):Q", format=".1f", title="mean %")],
            )
            spread = base.mark_errorbar(extent="stdev").encode(
                y=alt.Y("accuracy:Q", title=f"kNN accuracy % (k={k})", scale=alt.Scale(domain=domain, nice=False))
            )
            title = f"{dataset}" + (f" ({feature})" if df.feature.nunique() > 1 else "")
            panels.append(alt.layer(line, spread).properties(title=title, **WIDE_PANEL))
        rows.append(alt.hconcat(*panels))
    return alt.vconcat(*rows).properties(title=f"kNN accuracy vs resolution (mean ± std over seeds, k={k})")


def teacher_vs_student(df: pd.DataFrame, teacher: float, colours: dict[str, str], title: str) -> alt.LayerChart:
    """One dataset and teacher: each variant's student adaptor for that teacher (mean over seeds, error bar = std)
    as a dot per row, against the teacher's own accuracy as a dashed rule; the x axis is fitted to the data, so a
    1-3 point gap shows. `df`: (variant, run, accuracy in %), `teacher`: the teacher's accuracy in %."""
    order = shown_in(df, colours)
    stats = df.groupby("variant").accuracy.agg(["mean", "std"]).fillna(0.0)
    domain = fitted(pd.concat([stats["mean"] - stats["std"], stats["mean"] + stats["std"], pd.Series([teacher])]))
    x = alt.X("mean(accuracy):Q", title="kNN accuracy %", scale=alt.Scale(domain=domain, nice=False))
    colour = variant_colour(colours, order)
    colour.legend = None  # the rows are labelled: a legend would only repeat them
    base = alt.Chart(df).encode(
        y=alt.Y("variant:N", sort=order, title=None, axis=alt.Axis(labelLimit=0)),  # full labels, never cut
        color=colour,
    )
    dots = base.mark_point(filled=True, size=80).encode(
        x=x,
        tooltip=["variant", alt.Tooltip("mean(accuracy):Q", format=".1f", title="mean %"), "count()"],
    )
    spread = base.mark_errorbar(extent="stdev").encode(
        x=alt.X("accuracy:Q", title="kNN accuracy %", scale=alt.Scale(domain=domain, nice=False))
    )
    ref = pd.DataFrame({"accuracy": [teacher]})
    rule = (
        alt.Chart(ref)
        .mark_rule(strokeDash=[5, 3], color=TEACHER_COLOURS[0], strokeWidth=1.5)
        .encode(x=alt.X("accuracy:Q", scale=alt.Scale(domain=domain, nice=False)), tooltip=["accuracy"])
    )
    heading = alt.TitleParams(text=title, subtitle=f"dashed: the teacher alone, {teacher:.1f}", anchor="start")
    return (rule + spread + dots).properties(title=heading, width=320, height=ROW_PX * len(order), autosize=PAD)


STATES = alt.Scale(  # a trial's state: complete green, pruned orange, failed red
    domain=["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"],
    range=["#2ca02c", "#ff7f0e", "#d62728", "#7f7f7f", "#c7c7c7"],
)


def sweep_history(df: pd.DataFrame, objective: str) -> alt.VConcatChart:
    """Top: the objective of the COMPLETE trials (points) and the best value so far (step line), on an axis fitted to
    them. Below, on the same trial axis: every trial as a tick in its state's row, so pruned and failed trials show
    where they happened without their last intermediate value passing for an objective."""
    numbers = df.number.astype(int)
    x_scale = alt.Scale(domain=[int(numbers.min()) - 0.5, int(numbers.max()) + 0.5], nice=False, zero=False)
    axis = alt.Axis(format="d", tickMinStep=1, values=list(range(int(numbers.min()), int(numbers.max()) + 1)))
    x = alt.X("number:Q", title="trial", scale=x_scale, axis=axis)
    done = df[df.state == "COMPLETE"]
    params = [c for c in df.columns if c.startswith("params_")]
    parts = []
    if not done.empty:
        lo, hi = float(done.value.min()), float(done.value.max())
        pad = max(MARGIN * (hi - lo), 0.01 * max(abs(hi), 1e-3))  # a single value still gets a visible range
        y_scale = alt.Scale(domain=[lo - pad, hi + pad], nice=False, zero=False)
        y = alt.Y("value:Q", title=objective, scale=y_scale)
        base = alt.Chart(done).encode(x=x)
        points = base.mark_circle(size=70, color=STATES.range[0]).encode(
            y=y, tooltip=["number", alt.Tooltip("value:Q", format=".4f", title=objective), *params]
        )
        best = base.mark_line(interpolate="step-after", color="black").encode(y=alt.Y("best so far:Q", scale=y_scale))
        parts.append((points + best).properties(title="Sweep history: complete trials", width=640, height=260))
    strip = (
        alt.Chart(df)
        .mark_tick(thickness=3, size=16)
        .encode(
            x=x,
            y=alt.Y("state:N", title=None, sort=STATES.domain),
            color=alt.Color("state:N", scale=STATES, legend=None),
            tooltip=["number", "state", *params],
        )
        .properties(title="Every trial by state", width=640, height=ROW_PX * max(df.state.nunique(), 1))
    )
    parts.append(strip)
    return alt.vconcat(*parts).properties(title="Sweep history")


def importance(df: pd.DataFrame, title: str) -> alt.Chart:
    """Horizontal bars that fit the page's width (parameter names in full on the left)."""
    return (
        alt.Chart(df, title=title)
        .mark_bar()
        .encode(
            x=alt.X("importance:Q", axis=alt.Axis(format=".2f")),
            y=alt.Y("parameter:N", sort="-x", axis=alt.Axis(labelLimit=320), title=None),
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

"""Altair chart builders for the dashboard (each takes a frame from `loaders` and returns a chart)."""

from __future__ import annotations

import altair as alt
import pandas as pd


def loss_curves(df: pd.DataFrame) -> alt.Chart:
    """Every loss term against the step; colour = term, dash = run."""
    return (
        alt.Chart(df, title="Loss terms")
        .mark_line()
        .encode(
            x=alt.X("step:Q"),
            y=alt.Y("value:Q", title="loss", scale=alt.Scale(type="symlog")),
            color=alt.Color("term:N"),
            strokeDash=alt.StrokeDash("run:N"),
            tooltip=["run", "term", "step", "value"],
        )
        .interactive()
    )


def expert_load(df: pd.DataFrame) -> alt.Chart:
    """Layer x expert heatmap of the fraction of routed token slots (uniform = 1 / experts)."""
    return (
        alt.Chart(df, title=f"Expert load ({df.run.iloc[0]})")
        .mark_rect()
        .encode(
            x=alt.X("expert:O"),
            y=alt.Y("layer:O"),
            color=alt.Color("load:Q", scale=alt.Scale(scheme="viridis")),
            tooltip=["layer", "expert", alt.Tooltip("load:Q", format=".3f")],
        )
    )


def accuracy_vs_resolution(df: pd.DataFrame, k: int) -> alt.Chart:
    """kNN accuracy (at one k) against the evaluation resolution; one panel per dataset."""
    sub = df[df.k == k]
    return (
        alt.Chart(sub)
        .mark_line(point=True)
        .encode(
            x=alt.X("resolution:Q", title="resolution (px)"),
            y=alt.Y("accuracy:Q", title=f"kNN accuracy (k={k})", scale=alt.Scale(zero=False)),
            color=alt.Color("feature:N"),
            strokeDash=alt.StrokeDash("run:N"),
            tooltip=["run", "dataset", "feature", "resolution", alt.Tooltip("accuracy:Q", format=".4f")],
        )
        .properties(width=320, height=240)
        .facet(column=alt.Column("dataset:N"))
    )


def teacher_vs_student(df: pd.DataFrame) -> alt.Chart:
    """Grouped bars: each teacher's own accuracy next to the student's adaptor for that teacher."""
    long = df.melt(
        id_vars=["run", "dataset", "teacher"],
        value_vars=["accuracy_teacher", "accuracy_student"],
        var_name="model",
        value_name="accuracy",
    )
    long["model"] = long.model.str.removeprefix("accuracy_")
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("teacher:N"),
            xOffset=alt.XOffset("model:N"),
            y=alt.Y("accuracy:Q", title="kNN accuracy", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("model:N"),
            tooltip=["run", "dataset", "teacher", "model", alt.Tooltip("accuracy:Q", format=".4f")],
        )
        .properties(width=220, height=240)
        .facet(column=alt.Column("dataset:N"), row=alt.Row("run:N"))
    )


def sweep_history(df: pd.DataFrame) -> alt.LayerChart:
    """Objective per trial (points, by state) and the best value so far (step line)."""
    base = alt.Chart(df, title="Sweep history").encode(x=alt.X("number:Q", title="trial"))
    points = base.mark_circle(size=60).encode(
        y=alt.Y("value:Q", title="objective (kNN accuracy)", scale=alt.Scale(zero=False)),
        color=alt.Color("state:N"),
        tooltip=[c for c in df.columns if c.startswith("params_")] + ["number", "value", "state"],
    )
    best = base.mark_line(interpolate="step-after", color="black").encode(y="best so far:Q")
    return points + best


def importance(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df, title="Parameter importance (fANOVA)")
        .mark_bar()
        .encode(x=alt.X("importance:Q"), y=alt.Y("parameter:N", sort="-x"), tooltip=["parameter", "importance"])
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
            color=alt.Color("group:N"),
            tooltip=["group", "label", "value"],
        )
    )

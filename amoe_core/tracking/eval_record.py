"""eval.json: its schema, its tolerant reader and the headline metric, in one place.

Every result section nests as `[section][dataset][feature]["<res>px"]` and then holds:

- "knn"           {"k10": acc, "k20": acc, ...}      top-1 of the weighted kNN vote per k
- "linear"        acc                                top-1 of the linear probe on summaries (main resolution only)
- "zero_shot"     acc                                top-1 against a text tower's class prompts
- "segmentation"  {"miou": x, "pixel_acc": y}        the dense linear probe on patch tokens

plus "fidelity" ({teacher: {metric: value}}) and "pca_maps" (a file name); "knn_per_class"
([dataset][feature]["<res>px"]["k20"] = {class: acc}, main resolution, headline k) and, when evaluate.class_frequencies
is set, "class_frequency" ({class: images in the training pool}), which tell a pool's head classes from its tail. A *metric* names one leaf of this tree
for a (dataset, feature, resolution): "knn" (at the k given), "linear", "zero_shot", "segmentation" (mIoU) or
"segmentation.pixel_acc". The headline number of the report, dashboard, artifacts and sweep is kNN at k=20 (the
DINO protocol, T=0.07) of `student:ensemble`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KNN, LINEAR, ZERO_SHOT, SEGMENTATION, FIDELITY = "knn", "linear", "zero_shot", "segmentation", "fidelity"
KNN_PER_CLASS, CLASS_FREQUENCY = "knn_per_class", "class_frequency"
RESULT_SECTIONS = (KNN, LINEAR, ZERO_SHOT, SEGMENTATION)  # the [dataset][feature]["<res>px"] sections
HEADLINE_K = "k20"  # the DINO protocol's k (k=20, T=0.07) is the headline kNN number
HEADLINE_FEATURE = "student:ensemble"
# metric name -> (section, leaf key under "<res>px"; None = the value itself, "k" = the kNN's k)
METRICS: dict[str, tuple[str, str | None]] = {
    "knn": (KNN, "k"),
    "linear": (LINEAR, None),
    "zero_shot": (ZERO_SHOT, None),
    "segmentation": (SEGMENTATION, "miou"),
    "segmentation.pixel_acc": (SEGMENTATION, "pixel_acc"),
}

_warned: set[str] = set()


def read_eval(path: str | Path) -> dict[str, Any]:
    """eval.json as a dict; {} when absent. A damaged file (not JSON, not an object) is one warning naming it, once
    per file and process, and reads as {} so every other run is still shown."""
    ev, why = _parse(Path(path))
    if why is not None:
        _warn(Path(path), why)
    return ev


def damage(path: str | Path) -> str | None:
    """Why eval.json at `path` cannot be read (None when it is readable or absent): for a page that lists it."""
    return _parse(Path(path))[1]


def _parse(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        ev = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
    if not isinstance(ev, dict):
        return {}, f"holds a JSON {type(ev).__name__}, not an object"
    return ev, None


def _warn(path: Path, why: str) -> None:
    if str(path) not in _warned:
        _warned.add(str(path))
        log.warning("%s is damaged (%s): its run is shown without evaluation; rerun `amoe evaluate` for it", path, why)


def lookup(tree: dict[str, Any], *path: str) -> Any:
    """tree[p0][p1]...; None when any level is missing."""
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def res_key(resolution: int) -> str:
    return f"{resolution}px"


def res_px(key: str) -> int:
    return int(key.removesuffix("px"))


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown eval metric {metric!r}; one of {sorted(METRICS)}")


def value(ev: dict[str, Any], metric: str, dataset: str, feature: str, res: str, k: str = HEADLINE_K) -> float | None:
    """One number of eval.json (see METRICS), None when it was not evaluated or is not a number."""
    check_metric(metric)
    section, leaf = METRICS[metric]
    v = lookup(ev, section, dataset, feature, res)
    if leaf is not None:
        v = lookup(v, k if leaf == "k" else leaf) if isinstance(v, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def rows(ev: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """A result section as tidy rows {dataset, feature, resolution (int px), metric, value}; `metric` is "k20" etc.
    for kNN, "miou"/"pixel_acc" for segmentation and "top1" for linear and zero-shot. Malformed leaves are skipped."""
    out = []
    for dataset, by_feat in _items(ev.get(section)):
        for feature, by_res in _items(by_feat):
            for res, leaf in _items(by_res):
                if not (res.endswith("px") and res[:-2].isdigit()):
                    continue
                leaves = leaf.items() if isinstance(leaf, dict) else [("top1", leaf)]
                for name, v in leaves:
                    if isinstance(v, int | float) and not isinstance(v, bool):
                        out.append(
                            {
                                "dataset": dataset,
                                "feature": feature,
                                "resolution": res_px(res),
                                "metric": name,
                                "value": float(v),
                            }
                        )
    return out


def _items(tree: Any) -> list[tuple[str, Any]]:
    return sorted(tree.items()) if isinstance(tree, dict) else []


def datasets(ev: dict[str, Any], section: str = KNN) -> list[str]:
    return [d for d, _ in _items(ev.get(section))]


def features(ev: dict[str, Any], dataset: str, section: str = KNN) -> list[str]:
    return [f for f, _ in _items(lookup(ev, section, dataset))]


def resolutions(ev: dict[str, Any], dataset: str, feature: str, section: str = KNN) -> list[str]:
    """The "<res>px" keys evaluated for (dataset, feature), lowest first."""
    found = [r for r, _ in _items(lookup(ev, section, dataset, feature)) if r.endswith("px") and r[:-2].isdigit()]
    return sorted(found, key=res_px)


def headline_feature(feats: Iterable[str]) -> str | None:
    """The student feature headline numbers use: the ensemble when evaluated, else the first student feature."""
    feats = sorted(feats)
    if HEADLINE_FEATURE in feats:
        return HEADLINE_FEATURE
    student = [f for f in feats if f.startswith("student:")]
    return student[0] if student else (feats[0] if feats else None)

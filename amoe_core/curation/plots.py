"""Curation plots under `sample.plots`, as files DVC renders (`dvc plots show`: CSV) and the dashboard shows (PNG):

cluster_sizes.csv/.png   level-1 clusters ranked by pool size: points per cluster in the pool, the balanced and
                         the random selection (the balanced curve is flat where random follows the pool)
source_shares.csv        share of every source in the pool and in both selections
examples.png/.json       a grid of example images for a few level-1 clusters, read back from the shards
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from amoe_core.config.sample import SampleConfig  # noqa: E402
from amoe_core.curation.report import cluster_sizes, source_shares  # noqa: E402
from amoe_core.data.shards import image_of, read_shard, shard_path  # noqa: E402
from amoe_core.io import atomic_dir, atomic_write_json  # noqa: E402

THUMB = 64


def size_frame(paths: np.ndarray, selections: dict[str, np.ndarray]) -> pd.DataFrame:
    pool = cluster_sizes(paths, 0)
    order = np.argsort(-pool, kind="stable")
    order = order[pool[order] > 0]
    frame = pd.DataFrame({"rank": np.arange(1, len(order) + 1), "cluster": order, "pool": pool[order]})
    for name, idx in selections.items():
        frame[name] = cluster_sizes(paths, 0, idx)[order]
    return frame


def shares_frame(rows: pd.DataFrame, selections: dict[str, np.ndarray]) -> pd.DataFrame:
    shares = {"pool": source_shares(rows["source"])}
    shares.update({name: source_shares(rows["source"].iloc[idx]) for name, idx in selections.items()})
    return pd.DataFrame(shares).fillna(0.0).rename_axis("source").reset_index()


def plot_sizes(frame: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for col in frame.columns[3:].insert(0, "pool"):
        ax.plot(frame["rank"], frame[col].clip(lower=0.5), label=col, lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("level-1 cluster (ranked by pool size)")
    ax.set_ylabel("images per cluster")
    ax.legend()
    ax.set_title("Cluster sizes before and after sampling")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def example_keys(rows: pd.DataFrame, paths: np.ndarray, n_clusters: int, n_images: int, seed: int) -> dict[int, list]:
    """A few level-1 clusters spread over the size ranking, with up to `n_images` random member keys each."""
    pool = cluster_sizes(paths, 0)
    ranked = np.argsort(-pool, kind="stable")
    ranked = ranked[pool[ranked] > 0]
    picks = ranked[np.unique(np.linspace(0, len(ranked) - 1, min(n_clusters, len(ranked))).round().astype(int))]
    rng = np.random.default_rng(seed)
    keys = rows["key"].to_numpy()
    out = {}
    for c in picks:
        members = np.flatnonzero(paths[:, 0] == c)
        chosen = np.sort(rng.choice(members, min(n_images, len(members)), replace=False))
        out[int(c)] = [str(k) for k in keys[chosen]]
    return out


def read_thumbnails(shards: Path, rows: pd.DataFrame, wanted: set[str]) -> dict[str, Image.Image]:
    """Thumbnails of the `wanted` keys, opening only the shards that hold them."""
    sub = rows[rows["key"].isin(wanted)]
    thumbs: dict[str, Image.Image] = {}
    for shard in sub["shard"].unique():
        path = shard_path(shards, shard)
        for sample in read_shard(path):
            if sample.key in wanted:
                with Image.open(io.BytesIO(image_of(sample, path))) as im:
                    im = im.convert("RGB")
                    im.thumbnail((THUMB, THUMB))
                    thumbs[sample.key] = im.copy()
    return thumbs


def plot_examples(examples: dict[int, list], thumbs: dict[str, Image.Image], sizes: np.ndarray, path: Path) -> None:
    n_rows, n_cols = len(examples), max(len(v) for v in examples.values())
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * 0.9, n_rows * 0.95), dpi=100, squeeze=False)
    for r, (cluster, keys) in enumerate(examples.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(keys) and keys[c] in thumbs:
                ax.imshow(np.asarray(thumbs[keys[c]]))
        axes[r, 0].set_title(f"cluster {cluster} ({sizes[cluster]} images)", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(cfg: SampleConfig, rows: pd.DataFrame, paths: np.ndarray, selections: dict[str, np.ndarray]) -> Path:
    """All curation plots, swapped into `cfg.plots` as a whole."""
    with atomic_dir(cfg.plots, "sample.plots", legacy=("examples.json",)) as tmp:
        sizes = size_frame(paths, selections)
        sizes.to_csv(tmp / "cluster_sizes.csv", index=False)
        plot_sizes(sizes, tmp / "cluster_sizes.png")
        shares_frame(rows, selections).to_csv(tmp / "source_shares.csv", index=False)
        examples = example_keys(rows, paths, cfg.plot_clusters, cfg.plot_images, seed=0)
        thumbs = read_thumbnails(Path(cfg.shards), rows, {k for keys in examples.values() for k in keys})
        plot_examples(examples, thumbs, cluster_sizes(paths, 0), tmp / "examples.png")
        atomic_write_json(tmp / "examples.json", {str(c): keys for c, keys in examples.items()})
    return Path(cfg.plots)

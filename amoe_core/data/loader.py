"""Streaming loader of packed batches over WebDataset shards (token-balanced batching, arXiv 2512.20157).

How an epoch is made (every rank and worker computes the same plan from the manifest, no communication):
1. The selection (or every image) in stream order: shards in a seeded per-epoch permutation, cut into groups of about
   `shard_interleave` shards whose samples are randomly interleaved, each shard keeping its written order (ingest
   writes shards sorted by source and folder: without interleaving a shuffle buffer would see one class at a time).
2. Each image's patch grid for this epoch (`resolution.plan_grids`, a pure function of (seed, epoch, key)).
3. The packer plans sequences from token counts alone (`packing.stream_pack`; mode=fixed: one image per row).
4. `balance_batches` groups them into steps: full rounds of `seqs_per_step` rows on every (rank, worker), then one
   short last round with the epoch's remainder (the same number of rows on every rank), so every rank yields the same
   number of steps with the same token count per step (DDP never waits on a rank that ran dry) while every image is
   still seen exactly once per epoch; each (rank, worker) takes a contiguous block plus one step of the last round.
5. A worker streams only the shards its share needs, keeps the encoded bytes of its own images until their step
   is complete, then decodes, resizes, patchifies and yields the `PackedBatch`.
`start_step` skips that many steps of the rank's epoch without decoding them (exact resume).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from amoe_core.config.packing import PackingConfig
from amoe_core.data.packed import PackedBatch
from amoe_core.data.packing import (
    Plan,
    assemble,
    balance_batches,
    split_for,
    steps_before,
    stream_pack,
)
from amoe_core.data.resolution import patchify, plan_grids, resize_to_grid
from amoe_core.data.shards import Sample, image_of, read_manifest, read_shard, select, shard_path
from amoe_core.errors import AmoeError


def read_selection(shards_dir: Path, selection: Path | None) -> tuple[pd.DataFrame, list[str]]:
    """Manifest rows of the selected images (manifest order) and the sorted label names of the whole manifest."""
    df = read_manifest(shards_dir, "distill.shards", ("key", "shard", "width", "height"))
    labels = sorted(df["label"].dropna().astype(str).unique()) if "label" in df.columns else []
    df = select(df, selection, "distill.selection", shards_dir)
    if df.empty:
        raise AmoeError(f"no images to train on in {shards_dir} (selection {selection}); check the selection")
    return df, labels


def stream_order(df: pd.DataFrame, seed: int, epoch: int, interleave: int) -> pd.DataFrame:
    """Rows in this epoch's stream order: shards permuted per epoch and cut into groups of ~`interleave` shards; within
    a group the shards' samples are randomly interleaved, each shard's samples staying in their written order (so a
    reader streams every shard front to back)."""
    shards = list(dict.fromkeys(df["shard"].tolist()))
    rng = np.random.default_rng([seed, epoch, 1])
    perm = rng.permutation(len(shards))
    groups = np.array_split(np.arange(len(shards)), max(1, -(-len(shards) // max(1, interleave))))
    group_of = {shards[perm[j]]: g for g, members in enumerate(groups) for j in members.tolist()}
    shard_ids = df["shard"].map({sh: k for k, sh in enumerate(shards)}).to_numpy()
    u = rng.random(len(df))
    written = np.lexsort((np.arange(len(df)), shard_ids))  # rows grouped by shard, written order within
    t = np.empty(len(df))
    t[written] = u[np.lexsort((u, shard_ids))]  # a shard's k-th written sample gets its k-th smallest draw
    order = np.lexsort((t, df["shard"].map(group_of).to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def plan_epoch(
    cfg: PackingConfig, df: pd.DataFrame, seed: int, epoch: int, n_parts: int
) -> tuple[pd.DataFrame, np.ndarray, Plan]:
    """(rows in stream order, grids [n, 2], balanced plan of steps over row indices) for one epoch."""
    rows = stream_order(df, seed, epoch, cfg.shard_interleave)
    keys = rows["key"].astype(str).tolist()
    grids = plan_grids(cfg, keys, rows["height"].to_numpy(), rows["width"].to_numpy(), seed, epoch)
    if cfg.mode == "fixed":
        per_step = cfg.images_per_step or matched_images_per_step(cfg, grids)
        return rows, grids, balance_batches([[i] for i in range(len(rows))], per_step, n_parts)
    seqs = stream_pack(grids[:, 0] * grids[:, 1], cfg.c_max, cfg.max_images_per_seq, cfg.shuffle_buffer)
    return rows, grids, balance_batches(seqs, cfg.seqs_per_step, n_parts)


def matched_images_per_step(cfg: PackingConfig, grids: np.ndarray) -> int:
    """Images per step that carry, on average, the patch tokens of a packed step (seqs_per_step full sequences), so
    the fixed-batch baseline sees the same token budget per step."""
    mean_tokens = float((grids[:, 0] * grids[:, 1]).mean())
    return max(1, round(cfg.seqs_per_step * cfg.c_max / mean_tokens))


class PackedShardDataset(IterableDataset):
    """Yields the `PackedBatch` steps of one rank for one epoch (see the module docstring)."""

    def __init__(
        self,
        cfg: PackingConfig,
        shards_dir: Path,
        selection: Path | None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        start_step: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise AmoeError(f"rank {rank} is outside world size {world_size}")
        self.cfg, self.shards_dir, self.seed, self.epoch = cfg, Path(shards_dir), seed, epoch
        self.rank, self.world_size, self.workers = rank, world_size, max(1, cfg.workers)
        df, self.label_names = read_selection(self.shards_dir, selection)
        self.rows, self.grids, self.plan = plan_epoch(cfg, df, seed, epoch, world_size * self.workers)
        self.steps_per_epoch = len(self.plan) // world_size
        if not 0 <= start_step <= self.steps_per_epoch:
            raise AmoeError(f"start_step {start_step} is outside the epoch's {self.steps_per_epoch} steps")
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.workers:
            raise AmoeError(f"DataLoader has {info.num_workers} workers but the plan was made for {self.workers}")
        if self.workers > 1 and info is None:  # iterated without a DataLoader: act as every worker, round-robin
            yield from self._round_robin()
            return
        # A DataLoader round-robins from worker 0, but after `start_step` steps the rank's next step belongs to
        # share (start_step % workers): rotate the roles so the resumed stream continues in exactly the same order.
        role = (worker + self.start_step) % self.workers
        share = split_for(self.plan, self.rank, self.world_size, role, self.workers)
        yield from self.stream(share[steps_before(self.start_step, role, self.workers) :])

    def _round_robin(self) -> Iterator[PackedBatch]:
        shares = [split_for(self.plan, self.rank, self.world_size, w, self.workers) for w in range(self.workers)]
        for k in range(self.start_step, self.steps_per_epoch):
            yield from self.stream([shares[k % self.workers][k // self.workers]])

    def stream(self, steps: Plan) -> Iterator[PackedBatch]:
        """Decode and yield the given steps; each shard is read front to back, at most once, only as far as needed.

        Interleaved shards are read side by side (one open reader per shard): a needed image met before its turn waits
        in memory as encoded bytes; the packer's bounded delay keeps that to about a shuffle buffer of images.
        """
        needed = {i for step in steps for seq in step for i in seq}
        index = {str(self.rows["key"].iat[i]): i for i in needed}
        raw: dict[int, bytes] = {}
        readers: dict[Path, Iterator[Sample]] = {}
        for step in steps:
            for i in (j for seq in step for j in seq):
                path = shard_path(self.shards_dir, self.rows["shard"].iat[i])
                while i not in raw:
                    if path not in readers:
                        readers[path] = read_shard(path)
                    sample = next(readers[path], None)
                    if sample is None:
                        key = self.rows["key"].iat[i]
                        raise AmoeError(f"manifest key {key!r} is not in its shard {path}; re-run `amoe data ingest`")
                    j = index.get(sample.key)
                    if j is not None:
                        raw[j] = image_of(sample, path)
            yield self._build(step, raw)

    def _build(self, step: list[list[int]], raw: dict[int, bytes]) -> PackedBatch:
        P = self.cfg.patch_size
        label_id = {name: j for j, name in enumerate(self.label_names)}
        items = {}
        for i in (j for seq in step for j in seq):
            row = self.rows.iloc[i]
            with Image.open(io.BytesIO(raw.pop(i))) as img:
                if img.size != (int(row["width"]), int(row["height"])):
                    raise AmoeError(
                        f"image {row['key']!r} is {img.size[0]}x{img.size[1]} but the manifest says "
                        f"{row['width']}x{row['height']}; re-run `amoe data ingest`"
                    )
                rows_, cols_ = (int(v) for v in self.grids[i])
                image = resize_to_grid(img, rows_, cols_, P)
            patches, coords = patchify(image, P)
            label = row["label"] if "label" in row.index else None
            items[i] = {
                "patches": patches,
                "coords": coords,
                "grid": (rows_, cols_),
                "image": image,
                "key": str(row["key"]),
                "label": label_id[str(label)] if label is not None and not pd.isna(label) else -1,
            }
        # packed: every row holds c_max tokens (rows as planned: seqs_per_step, fewer in the epoch's last round);
        # fixed: one image per row, rows padded to the step's longest image
        return assemble(step, items, self.cfg.c_max if self.cfg.mode == "packed" else None, None)


def _identity(x: PackedBatch) -> PackedBatch:
    return x


def build_loader(
    packing_cfg: PackingConfig,
    shards_dir: Path,
    selection: Path | None,
    seed: int,
    rank: int,
    world_size: int,
    epoch: int = 0,
    start_step: int = 0,
) -> DataLoader:
    """An iterable of this rank's `PackedBatch` steps for one epoch; `len()` = steps left after `start_step`.

    Every rank yields the same number of steps (see `packing.balance_batches`); in packed mode the k-th step of every
    rank has the same number of rows of c_max tokens: seqs_per_step, fewer only in the epoch's short last round.
    """
    ds = PackedShardDataset(packing_cfg, shards_dir, selection, seed, rank, world_size, epoch, start_step)
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=packing_cfg.workers,
        collate_fn=_identity,
    )

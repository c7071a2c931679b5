"""Hierarchical k-means: flat vs hierarchy vs resampling, and 1 vs 2 processes, measured side by side in one run.

The embeddings are a float16 memmap on disk (as `amoe curate embed` writes them): a Gaussian mixture of `--points` x
`--dim`. Every side runs in fresh processes that read the memmap, and reports its clustering time and the peak
resident memory of each process above its baseline (taken before clustering, so the memmap's page cache counts
only as far as it is touched). Sides:
  flat        one k-means with the first level's k and the assignment of every point (step 0 of level 1)
  hierarchy   all levels, resampling above the first (as Vo et al.'s web config: no resampling at level 1)
  resampled   the same with `--level1-steps` k-means runs at level 1 (Vo et al.'s resampling there too)
  2 procs     the hierarchy on 2 torch.distributed (gloo) processes, each holding half of the points
  subset      the flat side with step 0 trained on k * `--points-per-centroid` random points (less memory) instead
              of all of them (the default, as the reference)
  seeding     greedy k-means++ (2 + ln k candidates per centre, the default, as the reference) vs plain k-means++,
              seeding alone on all points
Targets: hierarchy / flat <= 1.3 (levels above the first run on centroids); 2 processes: peak memory per process
about half of one process's. The default (200k x 128, k 1500/150/15) took 4 minutes on 2 shared cores (k 2000/200/20
took 14 on very busy ones); larger sizes by flag (e.g. --points 1000000 --levels 10000,1000,100); `--smoke` runs
tiny sizes in seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from amoe_core.curation.hkmeans import LevelSettings, cluster_level, hierarchical_kmeans
from amoe_core.curation.kmeans import Comm, gather, kmeans_pp
from amoe_core.launch.cluster import free_port_pair
from amoe_core.launch.distributed import barrier, cleanup_distributed, init_distributed


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_embeddings(path: Path, n: int, d: int, seed: int = 0, n_modes: int = 2000) -> None:
    """A Gaussian mixture with Zipf mode weights, written chunk by chunk into a float16 .npy memmap."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_modes, d), dtype=np.float32) * 3
    p = 1.0 / np.arange(1, n_modes + 1)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    for start in range(0, n, 1 << 16):
        m = min(1 << 16, n - start)
        modes = rng.choice(n_modes, m, p=p / p.sum())
        x[start : start + m] = centers[modes] + rng.standard_normal((m, d), dtype=np.float32)
    x.flush()


def measure(rank: int, world: int, port: int, side: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    init_distributed()
    comm = Comm.current()
    x = np.load(args.data, mmap_mode="r")
    n_levels = len(args.levels)
    base = _status_kib("VmRSS")
    barrier()
    t0 = time.perf_counter()
    if side in ("flat", "subset"):
        cap = args.points_per_centroid if side == "subset" else None
        cluster_level(x, LevelSettings(args.levels[0], args.iters, max_points_per_centroid=cap), comm)
    elif side in ("greedy", "plain"):
        lo, hi = comm.part(len(x))
        kmeans_pp(gather(x, np.arange(lo, hi), "l2"), args.levels[0], "l2", 0, comm, None if side == "greedy" else 1)
    else:
        steps = [args.level1_steps if side == "resampled" else 1] + [args.steps] * (n_levels - 1)
        sizes = [args.sample_size[0] if side == "resampled" else 1] + args.sample_size[1:]
        hierarchical_kmeans(x, args.levels, args.iters, steps, sizes, "closest", "l2", seed=0, comm=comm)
    barrier()
    queue.put((rank, time.perf_counter() - t0, (_status_kib("VmHWM") - base) * 1024))
    cleanup_distributed()


def run_side(side: str, world: int, args: argparse.Namespace) -> tuple[float, list[int]]:
    """(seconds, peak memory of each process) of one side in fresh processes."""
    ctx = mp.get_context("fork")  # the parent imported torch and faiss but ran nothing threaded: safe, and fast
    queue = ctx.Queue()
    port = free_port_pair()
    procs = [ctx.Process(target=measure, args=(r, world, port, side, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return max(r[1] for r in results), [r[2] for r in results]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--levels", type=ints, default=[1500, 150, 15])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4, help="k-means runs per level above the first (step 0 included)")
    ap.add_argument("--level1-steps", type=int, default=4, help="k-means runs at level 1 on the resampled side")
    ap.add_argument("--sample-size", type=ints, default=[10, 5, 3], help="points per cluster when resampling")
    ap.add_argument("--points-per-centroid", type=int, default=32, help="level-1 step 0 subset on the subset side")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the benchmark runs, in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.points, args.dim, args.levels, args.iters = 3000, 16, [40, 8, 2], 5
    with tempfile.TemporaryDirectory(prefix="hkmeans-bench-") as tmp:
        args.data = str(Path(tmp) / "embeddings.npy")
        write_embeddings(Path(args.data), args.points, args.dim)
        nbytes = args.points * args.dim * 2
        rows = [(name, world, *run_side(side, world, args)) for name, side, world in (
            ("flat k-means (level-1 k) + assignment", "flat", 1),
            (f"hierarchy {args.levels}", "hierarchy", 1),
            (f"hierarchy, {args.level1_steps - 1} resampling steps at level 1", "resampled", 1),
            (f"hierarchy {args.levels}", "hierarchy", 2),
            (f"flat, step 0 on k x {args.points_per_centroid} random points", "subset", 1),
            ("greedy k-means++ seeding (level-1 k, all points)", "greedy", 1),
            ("plain k-means++ seeding (level-1 k, all points)", "plain", 1),
        )]  # fmt: skip
    print(f"{args.points} x {args.dim} float16 memmap ({nbytes / 2**20:.0f} MiB), {args.iters} iterations, "
          f"{faiss.get_num_gpus()} GPUs, {faiss.omp_get_max_threads()} threads per process")  # fmt: skip
    print(f"{'side':<55} {'procs':>5} {'seconds':>8} {'peak MiB per process':>22}")
    for name, world, seconds, peaks in rows:
        print(f"{name:<55} {world:>5} {seconds:>8.1f} {' / '.join(f'{p / 2**20:.0f}' for p in peaks):>22}")
    flat, hier, resampled, two, subset, greedy, plain = rows
    print(f"resampled / hierarchy time (cost of level-1 resampling): {resampled[2] / hier[2]:.2f}")
    print(f"2 processes / 1 process: time {two[2] / hier[2]:.2f}, peak memory per process "
          f"{max(two[3]) / max(hier[3][0], 1):.2f}")  # fmt: skip
    print(f"greedy / plain k-means++ seeding time: {greedy[2] / plain[2]:.2f}")
    print(f"level-1 step 0 on all points / on the subset: time {flat[2] / subset[2]:.2f}, peak memory "
          f"{max(flat[3]) / max(subset[3][0], 1):.2f}")  # fmt: skip
    print(f"hierarchy/flat time ratio: {hier[2] / flat[2]:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()

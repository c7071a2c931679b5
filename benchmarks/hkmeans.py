"""Hierarchical k-means with resampling vs one flat faiss k-means with the first level's k, same run, same data.

Default setting of issue 5: 1M x 128 float32 synthetic points, levels [10000, 1000, 100], against a flat k-means with
k = 10000 and the same iterations and seeding (plus its assignment of every point: a clustering gives labels).
Targets: hierarchy time <= 1.3x flat (levels above the first run on centroids, so they are cheap) and peak memory
<= 2x the embedding array. Each side runs in its own fresh process, which generates the data and reports its
clustering time and its peak resident memory above the baseline taken before the data existed. Prints both ratios,
the time ratio on the last line. Use --points/--iters for a quick run on a small machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def synthetic(n: int, d: int, seed: int = 0, n_modes: int = 2000) -> np.ndarray:
    """A Gaussian mixture, generated chunk by chunk straight into float32 (no float64 temporaries)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_modes, d), dtype=np.float32) * 3
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        m = min(1 << 16, n - start)
        x[start : start + m] = centers[rng.integers(0, n_modes, m)] + rng.standard_normal((m, d), dtype=np.float32)
    return x


def measure(kind: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    from amoe_core.curation.hkmeans import assign, hierarchical_kmeans, kmeans

    base = _status_kib("VmRSS")
    x = synthetic(args.points, args.dim)
    t0 = time.perf_counter()
    if kind == "flat":
        centroids, _ = kmeans(x, args.levels[0], args.iters, args.metric, seed=0, init_method=args.init)
        assign(x, centroids, args.metric)
    else:
        hierarchical_kmeans(
            x, args.levels, args.iters, args.resample_steps, args.resample_points, "closest", args.metric, seed=0,
            init_method=args.init,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    queue.put((seconds, (_status_kib("VmHWM") - base) * 1024, x.nbytes))


def run_side(kind: str, args: argparse.Namespace) -> tuple[float, int, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(kind, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--levels", type=ints, default=[10000, 1000, 100])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--resample-steps", type=ints, default=[1, 3, 3])
    ap.add_argument("--resample-points", type=ints, default=[3, 3, 2])
    ap.add_argument("--metric", choices=["l2", "cosine"], default="l2")
    ap.add_argument("--init", choices=["kmeans++", "afkmc2", "random"], default="kmeans++")
    args = ap.parse_args()
    import faiss

    flat_s, flat_mem, nbytes = run_side("flat", args)
    hier_s, hier_mem, _ = run_side("hierarchical", args)
    print(f"{args.points} x {args.dim} float32 ({nbytes / 2**20:.0f} MiB), {args.iters} iterations, init {args.init}, "
          f"metric {args.metric}, {faiss.get_num_gpus()} GPUs, {faiss.omp_get_max_threads()} threads")  # fmt: skip
    print(f"flat k-means k={args.levels[0]} + assignment: {flat_s:.1f} s, peak {flat_mem / 2**20:.0f} MiB")
    print(f"hierarchical {args.levels} with resampling {args.resample_steps}x{args.resample_points}: {hier_s:.1f} s, "
          f"peak {hier_mem / 2**20:.0f} MiB")  # fmt: skip
    print(f"peak memory / embedding array: {hier_mem / nbytes:.2f} (target <= 2.0)")
    print(f"hierarchical/flat time ratio: {hier_s / flat_s:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()

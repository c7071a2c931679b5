"""GPU check: one command that proves and measures every GPU code path of the platform (issue 18).

    python benchmarks/gpu.py [--out gpu_report.json] [--student siglino-moe-0.3B] [--smoke]
    scripts/gpu-check prepare && scripts/gpu-check run      # on a bare offline GPU machine (wheels travel along)

Runs on one GPU, offline, in a few minutes; `--smoke` runs every row at tiny sizes on whatever device there is (CPU
included: `make test` runs it so the command keeps working between GPU runs). Each row is a check or a measurement;
a row that cannot run here says why instead of a number (e.g. "no CUDA", "faiss-gpu not importable"), and a row that
fails records its error without stopping the others. Output: a table on stdout and a JSON report (`--out`):
`{"env": {...}, "rows": [{"name", "status": "ok"|"fail"|"skip", "value", "unit", "note"}]}`. Exit 1 when a
correctness row fails. One file on purpose (~540 lines, one small function per row): it is the script that travels
to a lent GPU machine and runs there as one command.

Rows (correctness first, then size):
- attention: the packed forward+backward (FlexAttention block mask on CUDA, boolean-mask SDPA elsewhere) equals each
  image's attention computed alone, on sequences packing several images;
- moe: the grouped-GEMM expert dispatch equals the expert loop (outputs and gradients);
- bf16: a training step of the tiny student under bf16 autocast is finite and its loss within 5% of float32;
- faiss: k-means with faiss GPU indexes equals the CPU result on the same data (same seed);
- nccl: a 1-rank NCCL process group initialises and all-reduces;
- real size: the named student with randomly initialised teachers of the real SigLIP2 So400m/16 and DINOv3 ViT-L/16
  configurations (transformers configs, nothing downloaded) on packed batches at c_max 2304: teacher-forward (packed
  vs per-size), student forward+backward and whole-step real patch tokens/s (packed vs per-size teachers; a step
  from a teacher cache, i.e. the student's step, vs online teachers), peak memory, student-step MFU, packed vs padded
  tokens/s at the same token budget, the largest per-GPU batch that fits;
- compile: torch.compile of the student: compile time, recompiles over 20 steps of varying image mixes, speed-up.

MFU counts matmul FLOPs only: 6 x (active parameters touched per token) per real token for forward + backward, plus
attention 12 x layers x width x (tokens of the token's own image) per token (QK^T and AV, forward + backward); divided
by the device's dense bf16 peak (`--peak-tflops`, default 989 for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _smoke import SMOKE_HELP
from packing import padded_steps
from torch._dynamo.utils import counters
from transformers import DINOv3ViTConfig, DINOv3ViTModel, Siglip2VisionConfig, Siglip2VisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amoe_core.config import PackingConfig, Params, validate_params  # noqa: E402
from amoe_core.config.student import resolve_arch  # noqa: E402
from amoe_core.data.packed import PackedBatch  # noqa: E402
from amoe_core.data.packing import assemble, balance_batches, stream_pack  # noqa: E402
from amoe_core.data.resolution import patchify, plan_grids  # noqa: E402
from amoe_core.device import pick_device  # noqa: E402
from amoe_core.launch.distributed import DistInfo  # noqa: E402
from amoe_core.model_info import count_parameters  # noqa: E402
from amoe_core.models.moe import MoEFFN  # noqa: E402
from amoe_core.models.packed_attention import packed_attention  # noqa: E402
from amoe_core.train import components  # noqa: E402
from amoe_core.train.loop import DistillStep  # noqa: E402


@dataclass
class Row:
    name: str
    status: str  # ok | fail | skip
    value: float | None = None
    unit: str = ""
    note: str = ""


class Report:
    """Collects rows; a raising check becomes a `fail` row with its error, and the next check still runs."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, name: str, status: str, value: float | None = None, unit: str = "", note: str = "") -> None:
        self.rows.append(Row(name, status, value, unit, note))
        shown = "" if value is None else f"{value:.4g} {unit}".strip()
        print(f"  {name:<44} {status:<5} {shown:<22} {note}", flush=True)

    def run(self, section: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken row must not hide the others
            traceback.print_exc()
            self.add(section, "fail", note=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")

    def value(self, name: str) -> float | None:
        return next((r.value for r in self.rows if r.name == name and r.status == "ok"), None)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: one number per tensor, insensitive to entries that cancel to ~0."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------- correctness
def random_image_ids(n_seqs: int, length: int, max_images: int, gen: torch.Generator) -> torch.Tensor:
    """[S, L] image ids: each sequence packs 1..max_images images of random lengths, then padding (-1)."""
    ids = torch.full((n_seqs, length), -1, dtype=torch.long)
    next_id = 0
    for s in range(n_seqs):
        k = int(torch.randint(1, max_images + 1, (1,), generator=gen))
        cuts = sorted(torch.randperm(length - 1, generator=gen)[:k].add(1).tolist())  # k boundaries, last = fill
        start = 0
        for c in cuts:
            ids[s, start:c] = next_id
            next_id, start = next_id + 1, c
    return ids


def check_attention(rep: Report, device: torch.device, smoke: bool) -> None:
    """Packed attention vs each image alone (plain SDPA on its own tokens), forward and input gradients, float32."""
    gen = torch.Generator().manual_seed(0)
    s, h, n, d = (2, 2, 64, 16) if smoke else (8, 8, 2309, 128)
    image_id = random_image_ids(s, n, 4 if smoke else 16, gen).to(device)
    q, k, v = (torch.randn(s, h, n, d, generator=gen).to(device).requires_grad_() for _ in range(3))
    out = packed_attention(q, k, v, image_id)
    grad_out = torch.randn(out.shape, generator=gen).to(device)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), grad_out)
    ref, rq, rk, rv = (torch.zeros_like(t) for t in (out, q, k, v))
    for si in range(s):
        for img in image_id[si].unique().tolist():
            if img < 0:
                continue
            pos = (image_id[si] == img).nonzero().squeeze(1)
            qi, ki, vi = (t[si : si + 1, :, pos].detach().requires_grad_() for t in (q, k, v))
            oi = F.scaled_dot_product_attention(qi, ki, vi)
            a, b, c = torch.autograd.grad(oi, (qi, ki, vi), grad_out[si : si + 1, :, pos])
            ref[si, :, pos], rq[si, :, pos], rk[si, :, pos], rv[si, :, pos] = oi[0].detach(), a[0], b[0], c[0]
    real = image_id >= 0
    kernel = "FlexAttention" if device.type == "cuda" else "SDPA boolean mask"
    # float32 kernels differ in summation order and (flex) in tiling: 1e-4 of the largest entry is ~1000x float32
    # rounding on a softmax over <= 2309 keys; a masking bug (a token seeing another image) is O(1).
    errs = {
        "forward": rel_err(
            out[real.unsqueeze(1).expand_as(out[..., 0])], ref[real.unsqueeze(1).expand_as(ref[..., 0])]
        ),
        "dq": rel_err(gq.transpose(1, 2)[real], rq.transpose(1, 2)[real]),
        "dk": rel_err(gk.transpose(1, 2)[real], rk.transpose(1, 2)[real]),
        "dv": rel_err(gv.transpose(1, 2)[real], rv.transpose(1, 2)[real]),
    }
    worst = max(errs.values())
    note = f"{kernel}, {s}x{n} tokens, " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
    rep.add("attention packed == per image (fwd+bwd)", "ok" if worst < 1e-4 else "fail", worst, "rel err", note)


def check_nccl(rep: Report, device: torch.device) -> None:
    if device.type != "cuda":
        rep.add("nccl 1-rank all_reduce", "skip", note="no CUDA")
        return
    if not dist.is_nccl_available():
        rep.add("nccl 1-rank all_reduce", "fail", note="this torch build has no NCCL")
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(str(Path(tmp) / "store"), 1)
        dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=device)
        try:
            t = torch.full((4,), 3.0, device=device)
            dist.all_reduce(t)
            ok = bool((t == 3.0).all())
        finally:
            dist.destroy_process_group()
    rep.add("nccl 1-rank all_reduce", "ok" if ok else "fail", note=f"NCCL {torch.cuda.nccl.version()}")


def check_moe(rep: Report, device: torch.device, smoke: bool) -> None:
    """Grouped-GEMM expert dispatch vs the per-expert loop on the same weights and tokens (float32)."""
    if not hasattr(torch, "_grouped_mm"):
        rep.add("moe grouped GEMM == expert loop", "skip", note="this torch has no _grouped_mm")
        return
    torch.manual_seed(0)
    dim, hidden, experts, top_k, tokens = (32, 16, 6, 2, 256) if smoke else (768, 384, 28, 6, 16384)
    moe = MoEFFN(dim, hidden, experts, top_k, dispatch="loop").to(device)
    x = torch.randn(tokens, dim, device=device)
    results = []
    for mode in ("loop", "grouped"):
        moe.dispatch = mode
        xi = x.clone().requires_grad_()
        y = moe(xi)
        grads = torch.autograd.grad(y.square().sum(), [xi, *moe.parameters()], allow_unused=True)
        results.append((y, grads))
    (y0, g0), (y1, g1) = results
    errs = [rel_err(y1, y0)] + [rel_err(a, b) for a, b in zip(g1, g0) if a is not None and b is not None]
    # both are float32 GEMMs over the same sorted tokens; only the kernels' blocking differs (TF32 is off by default)
    rep.add("moe grouped GEMM == expert loop", "ok" if max(errs) < 1e-4 else "fail", max(errs), "rel err",
            f"{experts} experts x {hidden}, top-{top_k}, {tokens} tokens, outputs and all gradients")  # fmt: skip


def distill_params(teacher_dirs: dict[str, Path], cfg: PackingConfig, student: str) -> Params:
    """Params of a distillation on the given teacher directories and packing (the CLI's own validation)."""
    teachers = [{"name": n, "kind": n, "path": str(d)} for n, d in teacher_dirs.items()]
    for t in teachers:
        if t["kind"] == "dinov3":
            t["register_weight"] = 1.0
    return validate_params(
        {"teachers": teachers, "packing": cfg.model_dump(), "student": {"name": student}, "distill": {"steps": 100}}
    )


def check_bf16(rep: Report, device: torch.device, params: Params, teachers: dict, batch: PackedBatch) -> None:
    """One forward + loss + backward of the student under bf16 autocast vs float32 from the same weights."""
    student = components.build(params, teachers, device)
    components.fit_phis(student, components.targets_fn(teachers), [batch], 16)
    loss = components.loss(params, device, student)
    targets = components.teacher_outputs(teachers, batch)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        student.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            total = loss(student(batch), targets, batch)["total"]
        total.backward()
        finite = all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
        results[dtype] = (float(total), finite)
    (l32, f32), (l16, f16) = results[torch.float32], results[torch.bfloat16]
    err = abs(l16 - l32) / max(abs(l32), 1e-12)
    # bf16 keeps 8 bits of mantissa (~0.4% per rounding); a loss summed over many terms stays within a few percent
    ok = f32 and f16 and math.isfinite(l16) and err < 0.05
    rep.add("bf16 autocast step ~ float32", "ok" if ok else "fail", err, "rel loss diff",
            f"loss fp32 {l32:.4f} bf16 {l16:.4f}, grads finite: {f16}")  # fmt: skip


def check_faiss(rep: Report, smoke: bool) -> None:
    """The platform's k-means (amoe_core.curation.kmeans) with faiss GPU indexes vs the same run on CPU indexes."""
    try:  # optional dependency: faiss (any build) may be missing on a GPU machine; the row is then skipped
        import faiss

        from amoe_core.curation import kmeans as km
    except ImportError as e:
        rep.add("faiss GPU k-means == CPU", "skip", note=f"faiss not importable ({e})")
        return
    if not hasattr(faiss, "StandardGpuResources"):
        rep.add("faiss GPU k-means == CPU", "skip", note="faiss-gpu not importable (pip install -e '.[gpu]')")
        return
    if faiss.get_num_gpus() == 0:
        rep.add("faiss GPU k-means == CPU", "skip", note="faiss-gpu sees no GPU")
        return
    n, d, k = (5000, 16, 20) if smoke else (500_000, 128, 4096)
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    t0 = time.perf_counter()
    c_gpu, obj_gpu = km.kmeans(x, k, 10, "l2", seed=0)
    t_gpu = time.perf_counter() - t0
    on_gpu = km.use_gpu
    km.use_gpu = lambda: False  # the same code path on faiss CPU indexes
    try:
        t0 = time.perf_counter()
        c_cpu, obj_cpu = km.kmeans(x, k, 10, "l2", seed=0)
        t_cpu = time.perf_counter() - t0
    finally:
        km.use_gpu = on_gpu
    agree = float((km.assign(x, c_gpu, "l2")[0] == km.assign(x, c_cpu, "l2")[0]).mean())
    gap = abs(obj_gpu[-1] - obj_cpu[-1]) / obj_cpu[-1]
    # GPU and CPU GEMMs sum in another order: a few borderline points may move (the 2-process test allows 1%)
    ok = agree >= 0.99 and gap < 0.01
    rep.add("faiss GPU k-means == CPU", "ok" if ok else "fail", agree, "points agreeing",
            f"{n}x{d}, k={k}: objective gap {gap:.1e}; GPU {t_gpu:.1f} s vs CPU {t_cpu:.1f} s")  # fmt: skip


# -------------------------------------------------------------------------------------------------------- real size
def real_teacher_dirs(root: Path, smoke: bool) -> dict[str, Path]:
    """Random-weight SigLIP2 So400m/16 NaFlex and DINOv3 ViT-L/16 in `save_pretrained` layout (METHOD.md sizes), so
    the platform's own loaders read them exactly as they would read the real checkpoints."""
    if smoke:
        sig = Siglip2VisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=2)
        dino = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    else:
        sig = Siglip2VisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, num_patches=256
        )
        dino = DINOv3ViTConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    sig.patch_size = dino.patch_size = 16
    dino.num_register_tokens = 4
    torch.manual_seed(0)
    out = {}
    for name, model in (("siglip2", Siglip2VisionModel(sig)), ("dinov3", DINOv3ViTModel(dino))):
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


def synthetic_steps(cfg: PackingConfig, n_steps: int, seed: int = 0) -> tuple[list[PackedBatch], list[PackedBatch]]:
    """`n_steps` packed steps of random images (log-uniform 64-1024 px sides, aspect 1:2-2:1, grids from the training
    resolution policy) and the same images as one-image-per-row steps padded to each step's longest image, as many
    rows as fit the same computed-token budget (seqs_per_step x c_max)."""
    rng = np.random.default_rng(seed)
    n = int(n_steps * cfg.seqs_per_step * cfg.c_max / (0.5 * (cfg.min_tokens + cfg.max_tokens)) * 1.5) + 16
    side, aspect = np.exp(rng.uniform(np.log(64), np.log(1024), n)), np.exp(rng.uniform(np.log(0.5), np.log(2), n))
    hw = np.stack([side * np.sqrt(aspect), side / np.sqrt(aspect)], 1).round().astype(int)
    grids = plan_grids(cfg, [f"syn{i}" for i in range(n)], hw[:, 0], hw[:, 1], seed, 0)
    plan = balance_batches(
        stream_pack(grids[:, 0] * grids[:, 1], cfg.c_max, cfg.max_images_per_seq, cfg.shuffle_buffer),
        cfg.seqs_per_step,
        1,
    )[:n_steps]
    gen = torch.Generator().manual_seed(seed)
    items: dict[int, dict] = {}
    for i in sorted({i for step in plan for seq in step for i in seq}):
        r, c = (int(x) for x in grids[i])
        image = torch.rand(3, r * cfg.patch_size, c * cfg.patch_size, generator=gen)
        patches, coords = patchify(image, cfg.patch_size)
        items[i] = {"patches": patches, "coords": coords, "grid": (r, c), "image": image, "key": f"syn{i}"}
    packed = [assemble(step, items, cfg.c_max, cfg.seqs_per_step) for step in plan]
    order = sorted(items)
    tokens = [int(np.prod(items[i]["grid"])) for i in order]
    rows, start = [], 0
    for step in padded_steps(tokens, cfg.seqs_per_step * cfg.c_max):
        rows.append([[order[start + j]] for j in range(len(step))])
        start += len(step)
    padded = [assemble(step, items, None, None) for step in rows]
    return packed, padded


def timed_per_token(fn: Callable[[PackedBatch], Any], batches: list[PackedBatch], device: torch.device) -> float:
    """Real patch tokens/s of `fn` over `batches` after one untimed warm-up call."""
    fn(batches[0])
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    sync(device)
    return sum(b.n_tokens for b in batches) / (time.perf_counter() - t0)


def real_size(rep: Report, device: torch.device, args: argparse.Namespace) -> None:
    """Teachers of the real configurations on packed steps at c_max 2304 (one 768 px image), then the student."""
    cfg = (
        PackingConfig(c_max=64, max_tokens=32, seqs_per_step=2, max_images_per_seq=4)
        if args.smoke
        else PackingConfig(c_max=2304, min_tokens=16, max_tokens=2304, seqs_per_step=args.seqs, max_images_per_seq=16)
    )
    packed, padded = synthetic_steps(cfg, 2 if args.smoke else 6)
    batches, padded = [b.to(device) for b in packed], [b.to(device) for b in padded]
    with tempfile.TemporaryDirectory() as tmp:
        dirs = real_teacher_dirs(Path(tmp), args.smoke)
        params = distill_params(dirs, cfg, "tiny" if args.smoke else args.student)
        teachers = components.load_teachers(params, device)  # the platform's loaders: bf16 on CUDA, frozen
    with torch.inference_mode():
        for name, t in teachers.items():
            tps = timed_per_token(lambda b, t=t: t.forward_packed(b), batches, device)
            size = sum(p.numel() for p in t.parameters()) / 1e6
            rep.add(
                f"teacher {name} forward", "ok", tps, "tokens/s", f"{size:.0f}M params, {t.dtype}, c_max {cfg.c_max}"
            )
        both = timed_per_token(lambda b: components.teacher_outputs(teachers, b), batches, device)
        rep.add("teachers forward (both)", "ok", both, "tokens/s", "packed: one forward per teacher per step")
        per_size = timed_per_token(lambda b: components.teacher_outputs(teachers, b, packed=False), batches, device)
        rep.add("teachers forward (both, per-size)", "ok", per_size, "tokens/s", "one batch per image size")
        rep.add("teachers forward, packed vs per-size", "ok", both / per_size, "x", "the same steps")
        targets = {tuple(b.keys): components.teacher_outputs(teachers, b) for b in [*batches, *padded]}
    rep.run(
        "bf16 autocast step ~ float32", lambda: check_bf16(rep, device, tiny_params_of(params), teachers, batches[0])
    )
    student_rows(rep, device, params, teachers, batches, padded, targets, args)


def tiny_params_of(params: Params) -> Params:
    out = params.model_copy(deep=True)
    out.student.name = "tiny"
    return out


def student_step(params: Params, device: torch.device, teachers: dict, targets: dict, backend: str | None = None):
    """(student, step): the real DistillStep with teacher outputs looked up (the teachers' cost is measured apart)."""
    student = components.build(params, teachers, device)
    first = next(iter(targets.values()))
    with torch.no_grad():
        for name, out in first.items():
            student.phis[name].summary.fit(out.summary.float())
            student.phis[name].patches.fit(out.patches.float())
    info = DistInfo(device=device)
    model = components.wrap(student, info)
    if backend:
        model = torch.compile(model, backend=backend)
    step = DistillStep(
        model,
        lambda b: targets[tuple(b.keys)],
        components.loss(params, device, student),
        components.optimizer(params, student),
        params.distill,
        info,
    )
    return student, step


def active_flops_per_step(params: Params, batch: PackedBatch) -> float:
    """Matmul FLOPs of forward + backward (see the module docstring): 6 x active params per token + attention."""
    arch = resolve_arch(params.student.name, params.student.overrides)
    prefix = 1 + arch.num_registers
    tokens = batch.n_tokens + prefix * batch.n_images
    per_image = batch.image_sizes.prod(1).double() + prefix
    attention = 12 * arch.depth * arch.heads * arch.head_dim * float(per_image.square().sum())
    return 6.0 * count_parameters(arch)["active"] * tokens + attention


def student_rows(rep: Report, device: torch.device, params: Params, teachers, batches, padded, targets, args) -> None:
    tps = measure_student(rep, device, params, teachers, batches, padded, targets, args)
    rep.run("largest per-GPU batch", lambda: largest_batch(rep, device, params, teachers))
    rep.run("torch.compile", lambda: compiled(rep, device, params, teachers, batches, targets, tps, args))


def measure_student(
    rep: Report, device: torch.device, params: Params, teachers, batches, padded, targets, args
) -> float:
    """Eager student rows; returns packed tokens/s (its model and optimizer are freed on return)."""
    _, step = student_step(params, device, teachers, targets)
    size = count_parameters(resolve_arch(params.student.name, params.student.overrides))
    note = f"{params.student.name}: {size['total'] / 1e6:.1f}M backbone, {size['active'] / 1e6:.1f}M active"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counter = iter(range(10**9))
    tps = timed_per_token(lambda b: step([b], next(counter)), batches, device)
    rep.add("student fwd+bwd+AdamW (packed)", "ok", tps, "tokens/s", note)
    if device.type == "cuda":
        rep.add("student peak memory", "ok", torch.cuda.max_memory_allocated(device) / 2**30, "GiB")
    flops = sum(active_flops_per_step(params, b) for b in batches) / sum(b.n_tokens for b in batches)
    mfu = tps * flops / (args.peak_tflops * 1e12)
    rep.add("student step MFU", "ok" if device.type == "cuda" else "skip", mfu * 100, "%",
            f"{flops / 1e9:.2f} GFLOP per real token, peak {args.peak_tflops:.0f} TFLOP/s")  # fmt: skip
    teach, per_size = rep.value("teachers forward (both)"), rep.value("teachers forward (both, per-size)")
    if teach and per_size:
        online = 1 / (1 / teach + 1 / tps)
        rep.add("distillation step total (teachers + student)", "ok", online, "tokens/s",
                "packed teachers online, same device, sequential")  # fmt: skip
        rep.add("whole step, packed vs per-size teachers", "ok", online * (1 / per_size + 1 / tps), "x")
        # a step from a teacher cache is the student's step plus reading targets (about 1% of a CPU demo step)
        rep.add("distillation step, teacher cache vs online", "ok", tps / online, "x", "cache reads not counted")
    tpad = timed_per_token(lambda b: step([b], next(counter)), padded, device)
    rep.add("student fwd+bwd+AdamW (padded)", "ok", tpad, "tokens/s", "one image per row, same token budget")
    rep.add("packed / padded tokens/s", "ok", tps / tpad, "x", "paper: 7.5k -> 20k tokens/s (2.7x) on A100s")
    return tps


def fits(params: Params, device: torch.device, teachers: dict, seqs: int) -> bool:
    """Whether one training step with `seqs` sequences of c_max tokens fits in memory (all freed on return)."""
    cfg = params.packing.model_copy(update={"seqs_per_step": seqs})
    packed, _ = synthetic_steps(cfg, 1, seed=seqs)
    batch = packed[0].to(device)
    try:
        with torch.inference_mode():
            targets = {tuple(batch.keys): components.teacher_outputs(teachers, batch)}
        _, step = student_step(params.model_copy(update={"packing": cfg}), device, teachers, targets)
        step([batch], 0)
        torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False


def largest_batch(rep: Report, device: torch.device, params: Params, teachers: dict) -> None:
    """Double seqs_per_step until a training step runs out of memory; report the largest that fit."""
    if device.type != "cuda":
        rep.add("largest per-GPU batch", "skip", note="no CUDA (memory limit is the point)")
        return
    best, seqs = 0, params.packing.seqs_per_step
    while seqs <= 256 and fits(params, device, teachers, seqs):
        best, seqs = seqs, seqs * 2
        torch.cuda.empty_cache()
    torch.cuda.empty_cache()
    rep.add("largest per-GPU batch", "ok", best * params.packing.c_max, "tokens/step",
            f"{best} sequences of {params.packing.c_max} (doubling until out of memory, max 256)")  # fmt: skip


def compiled(
    rep: Report, device: torch.device, params: Params, teachers, batches, targets, eager_tps: float, args
) -> None:
    """torch.compile of the student: compile time, graphs over 20 steps of changing image mixes, speed-up."""
    backend = "eager" if args.smoke else "inductor"  # smoke: trace + guards only (an inductor build takes minutes)
    _, step = student_step(params, device, teachers, targets, backend=backend)
    counters.clear()
    t0 = time.perf_counter()
    step([batches[0]], 0)
    sync(device)
    first = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for i in range(20):
        step([batches[i % len(batches)]], i + 1)
        n += batches[i % len(batches)].n_tokens
    sync(device)
    tps = n / (time.perf_counter() - t0)
    graphs = int(counters["stats"]["unique_graphs"])
    breaks = sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])
    why = "; ".join(f"{n}x {reason.splitlines()[0][:80]}" for reason, n in breaks[:2]) or "no graph breaks"
    rep.add("torch.compile first step", "ok", first, "s", f"backend {backend}")
    rep.add("torch.compile graphs over 21 steps", "ok", graphs, "graphs", f"static [S, c_max]; {why}")
    rep.add("torch.compile speed-up", "ok", tps / eager_tps, "x", f"{tps:.0f} vs eager {eager_tps:.0f} tokens/s")


def env_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpus": os.cpu_count(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_report.json")
    ap.add_argument("--student", default="siglino-moe-0.3B")
    ap.add_argument("--seqs", type=int, default=8, help="packed sequences of c_max tokens per step (real size)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device, for MFU")
    ap.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = ap.parse_args()
    device = pick_device()
    env = env_info(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rep = Report()
    t0 = time.perf_counter()
    rep.run("attention packed == per image (fwd+bwd)", lambda: check_attention(rep, device, args.smoke))
    rep.run("nccl 1-rank all_reduce", lambda: check_nccl(rep, device))
    rep.run("moe grouped GEMM == expert loop", lambda: check_moe(rep, device, args.smoke))
    rep.run("faiss GPU k-means == CPU", lambda: check_faiss(rep, args.smoke))
    rep.run("real size", lambda: real_size(rep, device, args))
    env["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps({"env": env, "rows": [asdict(r) for r in rep.rows]}, indent=1))
    print(f"report: {args.out}")
    failed = [r.name for r in rep.rows if r.status == "fail"]
    ratio = rep.value("packed / padded tokens/s")
    print(f"failed rows: {', '.join(failed) or 'none'}")
    print(f"packed/padded student tokens/s: {ratio:.2f}x" if ratio else "packed/padded student tokens/s: not measured")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

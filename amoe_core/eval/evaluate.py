"""`amoe evaluate RUN` / `amoe evaluate --teachers`: kNN, linear probe, cross-resolution kNN, student-teacher fidelity
and PCA feature maps -> runs/<run>/eval.json (schema in the shared contracts; DVC metrics) plus
resolution.csv (DVC plots), resolution.png and pca_maps.png next to it.

The student enters only through an `Extractor` (images -> named features, see features.py), so the whole path is
the same for teachers and students; `run()` just decides which extractor to build.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from amoe_core.config.evaluate import EvalDataset, EvaluateConfig
from amoe_core.config.teachers import TeacherSpec
from amoe_core.device import pick_device
from amoe_core.errors import AmoeError, ConfigError
from amoe_core.eval.datasets import LabelledSet, Sizer, load_pair
from amoe_core.eval.features import (
    SIGLINO_MIN_PIXELS,
    Extractor,
    Feats,
    bf16_autocast,
    cached_teacher_summaries,
    ensemble,
    extract_summaries,
    release_size,
    smart_resize,
    student_extractor,
    teacher_extractor,
    teacher_fingerprint,
)
from amoe_core.eval.fidelity import fidelity
from amoe_core.eval.knn import knn_ensemble_predict, knn_predict, per_class_accuracy
from amoe_core.eval.labels import LabelledFeatures
from amoe_core.eval.linear_probe import linear_probe
from amoe_core.eval.pca_maps import save_pca_grid
from amoe_core.eval.plots import plot_resolution, write_resolution_csv
from amoe_core.eval.segmentation import (
    Patches,
    SegmentationSet,
    cached_patches,
    extract_patches,
    load_voc_pair,
    n_classes_of,
    segmentation_probe,
)
from amoe_core.eval.summary import summary_lines
from amoe_core.eval.text_tower import Siglip2TextTower, load_text_tower
from amoe_core.eval.zero_shot import class_embeddings, class_names, zero_shot_accuracy
from amoe_core.models.release import siglino
from amoe_core.models.teachers.loader import load_teacher
from amoe_core.models.trained import load_student
from amoe_core.outputs import output_lock
from amoe_core.tracking.eval_record import CLASS_FREQUENCY, HEADLINE_FEATURE, KNN_PER_CLASS, SEGMENTATION, ZERO_SHOT
from amoe_core.tracking.runs import TEACHERS_RUN, RunDir

if TYPE_CHECKING:  # annotations only: a stage imports its own section, not every section
    from amoe_core.config.params import Params

log = logging.getLogger(__name__)

PCA_FILE = "pca_maps.png"
RESOLUTION_CSV = "resolution.csv"
RESOLUTION_PNG = "resolution.png"
ENSEMBLE = HEADLINE_FEATURE
FIDELITY_IMAGES = 512  # per dataset, from the test split at the main resolution


def resolutions(params: Params) -> list[int]:
    """Every resolution to evaluate (the main one included), checked against the student patch size."""
    cfg: EvaluateConfig = params.evaluate
    p = params.packing.patch_size
    res = sorted(set(cfg.resolutions) | {cfg.main_resolution})
    bad = [r for r in res if r % p]
    if bad:
        raise ConfigError(
            f"evaluate.resolutions / main_resolution {bad}: must be multiples of packing.patch_size = {p}"
        )
    if not cfg.datasets:
        raise ConfigError("evaluate.datasets is empty: give at least one {name, train, test} dataset")
    return res


class TeacherBank:
    """Teachers (and a zero-shot text tower) loaded on first use (a cached run never loads them)."""

    def __init__(self, specs: list[TeacherSpec], device: torch.device) -> None:
        self.specs, self.device, self._loaded = {s.name: s for s in specs}, device, {}
        self._text: dict[str, Siglip2TextTower | None] = {}

    def extractor(self, name: str) -> Extractor:
        if name not in self._loaded:
            self._loaded[name] = teacher_extractor(name, load_teacher(self.specs[name], self.device))
        return self._loaded[name]

    def text_tower(self, name: str) -> Siglip2TextTower | None:
        """Teacher `name`'s text tower; None (zero-shot skipped, said once) when no teacher has that name or its
        checkpoint has no text tower: the default `evaluate.zero_shot` names the demo's teacher."""
        if name not in self._text:
            try:
                if name not in self.specs:
                    raise AmoeError(f"evaluate.zero_shot: no teacher named {name!r} among {list(self.specs)}")
                self._text[name] = load_text_tower(self.specs[name], self.device)
            except AmoeError as e:
                log.warning("zero-shot skipped: %s", e)
                self._text[name] = None
        return self._text[name]


def _zero_shot(
    params: Params, bank: TeacherBank, ds_name: str, train: LabelledSet, test: LabelledSet,
    fte: dict[str, np.ndarray], res: int, results: dict[str, Any], class_emb: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """Top-1 through the text tower for every test feature in that teacher's space (teacher:T, student:T)."""
    zs = params.evaluate.zero_shot
    if zs is None or bank.text_tower(zs.teacher) is None:
        return
    for name in (f"teacher:{zs.teacher}", f"student:{zs.teacher}"):
        if name not in fte:
            continue
        if ds_name not in class_emb:
            names = class_names(train.spec, train.classes)
            class_emb[ds_name] = class_embeddings(
                bank.text_tower(zs.teacher), names, zs.templates, params.evaluate.cache
            )
        emb = class_emb[ds_name]
        if emb.shape[1] != fte[name].shape[1]:
            log.warning(
                "zero-shot: %s has width %d, the text tower %d; not scored", name, fte[name].shape[1], emb.shape[1]
            )
            continue
        acc = zero_shot_accuracy(fte[name], test.labels, emb)
        results.setdefault(ZERO_SHOT, {}).setdefault(ds_name, {}).setdefault(name, {})[f"{res}px"] = acc


def image_sizing(params: Params, ds: EvalDataset, res: int) -> tuple[Sizer | None, str]:
    """How images of `ds` are sized at `res`: square (None), or the release's smart resize under ds.max_pixels
    (res² when unset); the second value names the sizing in cache keys."""
    if params.evaluate.preprocess != "release":
        return None, ""
    max_pixels = ds.max_pixels or res * res
    return release_size(params.packing.patch_size, max_pixels), f"release{max_pixels}"


def _split_features(
    params: Params,
    bank: TeacherBank,
    student: Extractor | None,
    ds: EvalDataset,
    split: str,
    data: LabelledSet,
    res: int,
) -> dict[str, np.ndarray]:
    cfg: EvaluateConfig = params.evaluate
    dataset = ds.name
    size, tag = image_sizing(params, ds, res)
    if student is None:
        return {
            f"teacher:{name}": cached_teacher_summaries(
                cfg.cache, dataset, split, data, res, spec, lambda n=name: bank.extractor(n), cfg.batch_size, size, tag
            )
            for name, spec in bank.specs.items()
        }
    desc = f"student {dataset}/{split} {res}px"
    feats = extract_summaries(student, data, res, cfg.batch_size, desc=desc, size=size)
    per_teacher = [feats[f"student:{t}"] for t in bank.specs if f"student:{t}" in feats]
    if len(per_teacher) > 1:
        feats[ENSEMBLE] = ensemble(per_teacher)
    return feats


def _patch_grids(extractor: Extractor) -> Patches:
    """An extractor's patch tokens as square grids: images [B, 3, r, r] -> {feature: [B, g, g, D]}."""

    def patches(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, f in extractor(images).items():
            g = int(round(f.patches.shape[1] ** 0.5))
            out[name] = f.patches.reshape(len(images), g, g, -1)
        return out

    return patches


def _segmentation(
    params: Params, bank: TeacherBank, student: Extractor | None, ds: EvalDataset, device: torch.device
) -> dict[str, dict[str, dict[str, float]]]:
    """The dense linear probe at the main resolution on every patch feature: the student's own and per-teacher
    tokens, or (no student) each teacher's, whose patch features are cached like its summaries."""
    cfg, res = params.evaluate, params.evaluate.main_resolution
    train, test = load_voc_pair(ds.train, ds.test)
    masks = {"train": [train.mask(i) for i in range(len(train))], "test": [test.mask(i) for i in range(len(test))]}
    n_classes = n_classes_of(masks["train"])
    log.info(
        "evaluate %s: %d train / %d test images, %d classes (segmentation)", ds.name, len(train), len(test), n_classes
    )
    feats: dict[str, dict[str, np.ndarray]] = {}
    for split, data in (("train", train), ("test", test)):
        if student is not None:
            feats[split] = extract_patches(_patch_grids(student), data, res, cfg.batch_size)
            continue
        feats[split] = {}
        for name, spec in bank.specs.items():
            path = cfg.cache / ds.name / f"seg-{split}-{data.fingerprint()}" / f"{res}px"
            path = path / f"{name}-{teacher_fingerprint(spec)}-patches.npy"

            def compute(n: str = name, d: SegmentationSet = data) -> np.ndarray:
                return extract_patches(_patch_grids(bank.extractor(n)), d, res, cfg.batch_size)[f"teacher:{n}"]

            feats[split][f"teacher:{name}"] = cached_patches(path, compute, len(data))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in sorted(feats["train"]):
        m = segmentation_probe(
            feats["train"][name], masks["train"], feats["test"][name], masks["test"], n_classes, cfg.seg_epochs,
            cfg.seg_lr, params.seed, device,
        )  # fmt: skip
        out[name] = {f"{res}px": m}
        log.info(
            "evaluate %s %s at %dpx: mIoU %.1f%%, pixel accuracy %.1f%%",
            ds.name,
            name,
            res,
            100 * m["miou"],
            100 * m["pixel_acc"],
        )
    return out


def _features_of(extractors: list[Extractor], images: torch.Tensor, batch_size: int) -> dict[str, Feats]:
    """Summaries and patches of a few equal-size images from several extractors."""
    out: dict[str, list[Feats]] = {}
    for start in range(0, len(images), batch_size):
        for ex in extractors:
            for name, f in ex(images[start : start + batch_size]).items():
                out.setdefault(name, []).append(f)
    return {n: Feats(torch.cat([f.summary for f in fs]), torch.cat([f.patches for f in fs])) for n, fs in out.items()}


def evaluate(
    params: Params,
    out: RunDir,
    student: Extractor | None,
    device: torch.device | None = None,
    checkpoint_step: int | None = None,
) -> dict[str, Any]:
    """Evaluate the student's features (or, with `student=None`, the teachers') and write everything under `out`;
    `checkpoint_step`: the run's checkpoint the student was read from (recorded in eval.json)."""
    cfg: EvaluateConfig = params.evaluate
    res_list = resolutions(params)
    device = device or pick_device()
    if student is not None:
        student = bf16_autocast(student, device, cfg.bf16)
    bank = TeacherBank(params.teachers, device)
    results: dict[str, Any] = {"knn": {}, "linear": {}, "fidelity": {}, "pca_maps": PCA_FILE}
    if checkpoint_step is not None:
        results["checkpoint_step"] = checkpoint_step
    if cfg.class_frequencies is not None:  # the training pool's images per class (demo_pool.long_tail writes them)
        results[CLASS_FREQUENCY] = _class_frequencies(cfg.class_frequencies)
    samples: list[list[torch.Tensor]] = []  # per dataset: test images at the main resolution (fidelity)
    tests: list[LabelledSet] = []  # per dataset: the test split (PCA maps)
    for ds in cfg.datasets:
        if ds.task == "segmentation":
            results.setdefault(SEGMENTATION, {})[ds.name] = _segmentation(params, bank, student, ds, device)
            continue
        train, test = load_pair(ds.train, ds.test, cfg.max_train_per_dataset, params.seed)
        log.info(
            "evaluate %s: %d train / %d test images, %d classes", ds.name, len(train), len(test), len(train.classes)
        )
        knn_ds, lin_ds = results["knn"].setdefault(ds.name, {}), results["linear"].setdefault(ds.name, {})
        class_emb: dict[str, np.ndarray] = {}
        for res in res_list:
            log.info("evaluate %s %dpx: features, kNN%s", ds.name, res, ", linear probe" * (res == cfg.main_resolution))
            ftr = _split_features(params, bank, student, ds, "train", train, res)
            fte = _split_features(params, bank, student, ds, "test", test, res)
            _zero_shot(params, bank, ds.name, train, test, fte, res, results, class_emb)
            for name in ftr:
                labelled = LabelledFeatures(ftr[name], train.labels, fte[name], test.labels)
                if name == ENSEMBLE:  # the released protocol: per-teacher votes, entropy-weighted fusion
                    parts = [f"student:{t}" for t in bank.specs if f"student:{t}" in ftr]
                    preds = knn_ensemble_predict(
                        [ftr[p] for p in parts], train.labels, [fte[p] for p in parts], test.labels, cfg.ks,
                        cfg.temperature,
                    )  # fmt: skip
                else:
                    tr_labels, te_labels, n_classes = labelled.labels()
                    preds = knn_predict(labelled.train, tr_labels, labelled.test, cfg.ks, cfg.temperature, n_classes)
                accs = {k: float((p == test.labels).mean()) for k, p in preds.items()}
                knn_ds.setdefault(name, {})[f"{res}px"] = {f"k{k}": acc for k, acc in accs.items()}
                if res == cfg.main_resolution:  # per class at the headline k: head vs tail classes of a pool
                    k_main = 20 if 20 in cfg.ks else cfg.ks[0]
                    per_class = results.setdefault(KNN_PER_CLASS, {}).setdefault(ds.name, {}).setdefault(name, {})
                    per_class[f"{res}px"] = {f"k{k_main}": per_class_accuracy(preds[k_main], test.labels, test.classes)}
                if res == cfg.main_resolution:
                    probe = linear_probe(
                        labelled,
                        cfg.probe_lrs,
                        cfg.probe_epochs,
                        cfg.probe_val_fraction,
                        seed=params.seed,
                        device=device,
                    )
                    lin_ds.setdefault(name, {})[f"{res}px"] = probe.test_accuracy
        n = min(FIDELITY_IMAGES, len(test))
        samples.append([test.image(i, cfg.main_resolution) for i in range(n)])
        tests.append(test)

    extractors = [bank.extractor(t) for t in bank.specs] + ([student] if student is not None else [])
    if student is not None:
        log.info("evaluate: fidelity to the teachers on %d test images", sum(len(s) for s in samples))
        feats = [_features_of(extractors, torch.stack(s), cfg.batch_size) for s in samples]
        for t in bank.specs if feats else []:
            if f"student:{t}" not in feats[0]:
                continue
            s_f, t_f = feats[0][f"student:{t}"], feats[0][f"teacher:{t}"]
            if s_f.patches.shape[1:] != t_f.patches.shape[1:]:  # a released model: other widths or input sizes
                log.warning("fidelity: student:%s and teacher:%s differ in patch grid or width; not compared", t, t)
                continue
            s_sum = torch.cat([f[f"student:{t}"].summary for f in feats]).numpy()
            t_sum = torch.cat([f[f"teacher:{t}"].summary for f in feats]).numpy()
            s_pat = torch.cat([f[f"student:{t}"].patches.flatten(0, 1) for f in feats]).numpy()
            t_pat = torch.cat([f[f"teacher:{t}"].patches.flatten(0, 1) for f in feats]).numpy()
            results["fidelity"][t] = fidelity(s_sum, t_sum, s_pat, t_pat)
    if tests:
        log.info("evaluate: PCA feature maps of %d test images", min(cfg.pca_images, sum(len(s) for s in samples)))
        _write_pca(params, out, tests, extractors, max(res_list))
    write_resolution_csv(results["knn"], out.path / RESOLUTION_CSV)
    plot_resolution(results["knn"], 20 if 20 in cfg.ks else cfg.ks[0], out.path / RESOLUTION_PNG)
    out.write_eval(results)
    for line in summary_lines(results, f"{cfg.main_resolution}px", f"k{20 if 20 in cfg.ks else cfg.ks[0]}"):
        log.info("%s", line)
    log.info("wrote %s (+ %s, %s, %s)", out.eval_file, RESOLUTION_CSV, RESOLUTION_PNG, PCA_FILE)
    return results


def _class_frequencies(path: Path) -> dict[str, int]:
    try:
        freq = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"evaluate.class_frequencies = {str(path)!r}: cannot read it ({e}); point it at a JSON "
                          "object {class: images}, e.g. data/demo/concept_frequencies.json of demo_pool.long_tail") from None  # fmt: skip
    if not isinstance(freq, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in freq.values()):
        raise ConfigError(f"evaluate.class_frequencies = {str(path)!r} is not a JSON object {{class: images}}")
    return {str(c): int(n) for c, n in freq.items()}


def _write_pca(params: Params, out: RunDir, tests: list[LabelledSet], extractors: list[Extractor], res: int) -> None:
    """First `pca_images` test images, taken round-robin over the datasets, at the highest evaluated resolution (more
    patches per map than at the main one); one column per feature source."""
    pairs = [(i, t) for i in range(max(len(t) for t in tests)) for t in tests if i < len(t)]
    picked = [t.image(i, res) for i, t in pairs[: params.evaluate.pca_images]]
    feats = _features_of(extractors, torch.stack(picked), params.evaluate.batch_size)
    order = sorted(feats, key=lambda n: (not n.startswith("teacher:"), n == "student:native", n))
    columns = {}
    for name in order:
        pats = feats[name].patches
        g = int(round(pats.shape[1] ** 0.5))
        columns[name] = ([p.numpy() for p in pats], [(g, g)] * len(picked))
    save_pca_grid([im.permute(1, 2, 0).numpy() for im in picked], columns, out.path / PCA_FILE)


def load_student_extractor(params: Params, run_dir: Path, device: torch.device) -> tuple[Extractor, int]:
    """The trained student of a run as an Extractor (its adapters predict each teacher's raw features), and the
    step of the checkpoint it was read from."""
    try:
        student, _, _ = load_student(run_dir, device=device)
    except AmoeError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        first = " ".join(str(e).split())[:240] or type(e).__name__  # one line, however long the torch message
        raise AmoeError(
            f"run {run_dir}: its checkpoint does not fit the student architecture its params.yaml describes ({first}); "
            "evaluate it with the params (student.name / overrides) it was trained with"
        ) from None
    student.eval()
    pk = params.packing
    return student_extractor(student, pk.patch_size, pk.c_max, pk.max_images_per_seq), student.checkpoint_step


def siglino_extractor(params: Params, spec: str, device: torch.device) -> tuple[str, Extractor]:
    """`--model siglino:CHECKPOINT[@CONFIG]`: a released SigLino model (amoe_core.models.release.siglino.load) as an
    Extractor, its siglip2 / dinov3 outputs named after the configured teacher of that kind (so fidelity and the
    ensemble compare them with those teachers). Returns (run id for its results, extractor)."""
    path, _, config = spec.removeprefix("siglino:").partition("@")
    model = siglino.load(path, config or None, device)
    kinds = {s.kind: s.name for s in params.teachers}
    rename = {role: kinds.get(role, role) for role in model.roles}
    pk = params.packing
    inner = student_extractor(model.student, pk.patch_size, pk.c_max, pk.max_images_per_seq)

    def extract(images: torch.Tensor) -> dict[str, Feats]:
        # the release's preprocessing: mean/std 0.5 (the student's own), sizes by its processor's rule with its
        # minimum area and the evaluated resolution as the maximum (a no-op for square images >= 128 px)
        h, w = images.shape[-2:]
        size = smart_resize(h, w, pk.patch_size, SIGLINO_MIN_PIXELS, h * w)
        if size != (h, w):
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        feats = inner(images)
        return {f"student:{rename.get(k[8:], k[8:])}": v for k, v in feats.items()}

    return f"siglino-{Path(path).stem}", extract


def run(
    params: Params, run: str | None = None, teachers: bool | None = False, model: str | None = None
) -> dict[str, Any]:
    """Stage entry point: `amoe evaluate [RUN]`, `amoe evaluate --teachers` (writes runs/_teachers/eval.json) or
    `amoe evaluate --model siglino:CHECKPOINT[@CONFIG]` (a released SigLino model; runs/siglino-<name>/eval.json)."""
    resolutions(params)  # config errors before any work
    device = pick_device()
    runs_dir = Path(params.distill.runs_dir)
    if model is not None:
        if not model.startswith("siglino:"):
            raise ConfigError(f"--model {model!r}: expected siglino:CHECKPOINT[@CONFIG]")
        run_id, extractor = siglino_extractor(params, model, device)
        # the release's own preprocessing: aspect kept, patch-aligned, under each dataset's max_pixels
        params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"preprocess": "release"})})
        out = RunDir(runs_dir / run_id)
        out.path.mkdir(parents=True, exist_ok=True)
        with output_lock(f"evaluate --model {model}", out.path):
            return evaluate(params, out, extractor, device)
    if teachers:
        out = RunDir(runs_dir / TEACHERS_RUN)  # not a training run: no params.yaml, so list_runs skips it
        out.path.mkdir(parents=True, exist_ok=True)
        with output_lock("evaluate --teachers", out.path):
            return evaluate(params, out, None, device)
    run_id = run or params.distill.run
    run_dir = RunDir(runs_dir / run_id)
    if not run_dir.path.is_dir():
        raise AmoeError(
            f"run {run_id!r}: no directory {run_dir.path}; train it with `amoe distill` or pick an existing run"
        )
    # the run's own lock (the one `amoe distill` holds): one writer of eval.json, never while the run trains
    with output_lock(f"run {run_id}", run_dir.path):
        student, step = load_student_extractor(params, run_dir.path, device)
        return evaluate(params, run_dir, student, device, checkpoint_step=step)

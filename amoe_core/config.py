"""Typed models of params.yaml: one section per stage, validated before any work starts. One file on purpose (~600
lines): the schema is the one list of every knob, its default and its bound, read top to bottom like params.yaml.

`load_params(path, overrides)` reads the YAML file, applies DVC-style `-S section.key=value` overrides and validates
everything; any problem becomes a `ConfigError` whose single line names the field, the bad value and what is allowed.
Paths are relative to the working directory (the repository root, like DVC). Input paths are checked by the stage
that reads them (`errors.require_path`), since earlier stages create them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amoe_core.errors import ConfigError
from amoe_core.models.configs import resolve_arch
from amoe_core.outputs import check_disjoint

DEFAULT_PARAMS = Path("params.yaml")
Byte = Annotated[int, Field(ge=0, le=255)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------------------- data
class DemoPoolConfig(Section):
    """`amoe data demo-pool`: real images from Debian packages, no internet."""

    out: Path = Path("data/demo")
    debs: Path = Path("data/debs")  # downloaded .deb files are cached here
    fmnist_pool: int = Field(12000, ge=0, le=60000)  # fashion-mnist train images in the unlabelled pool
    fmnist_teacher_train: int = Field(12000, ge=100, le=60000)  # labelled fashion-mnist train split for teachers
    fmnist_test: int = Field(2000, ge=20, le=10000)  # labelled evaluation split
    # Labelled clip-art splits, balanced (chance = 1/n_classes): categories with >= min pictures, not excluded,
    # each with test_per_category held out and at most train_per_category for train.
    clipart_min_per_category: int = Field(120, ge=2)
    clipart_test_per_category: int = Field(40, ge=1)  # lowered to half the smallest kept category if needed
    clipart_train_per_category: int = Field(250, ge=1)
    clipart_exclude: list[str] = Field(default_factory=lambda: ["unsorted"])  # grab-bag categories: no visual class
    max_per_category: int = Field(0, ge=0)  # clip-art / stamps taken per category (0 = all; small pools for tests)


class IngestConfig(Section):
    """`amoe data ingest`: image sources -> validated, deduplicated WebDataset shards + manifest.parquet."""

    sources: list[str] = Field(default_factory=lambda: ["folder:data/demo/pool"], min_length=1)
    out: Path = Path("data/shards")
    shard_size: int = Field(2000, ge=1)
    max_side: int = Field(512, ge=16)  # larger images are downscaled before storage
    min_side: int = Field(16, ge=1)  # smaller images are skipped
    max_pixels: int = Field(64_000_000, ge=1)  # decompression-bomb guard (8k x 8k); larger files are skipped
    max_bytes: int = Field(256 * 2**20, ge=1)  # files are read whole into memory: larger ones are skipped unread
    phash_distance: int = Field(4, ge=0, le=64)  # near-duplicate threshold (Hamming, 64-bit pHash); 0 = exact only
    phash_min_side: int = Field(32, ge=1)  # smaller images are only exact-deduplicated (why: amoe_core/data/dedup.py)
    background: tuple[Byte, Byte, Byte] = (255, 255, 255)  # alpha is composited onto this colour
    jpeg_quality: int = Field(92, ge=50, le=100)
    store_format: Literal["auto", "jpg", "png"] = "auto"  # auto: jpg for JPEG inputs, png for lossless ones
    on_extension_mismatch: Literal["skip", "decode"] = "skip"  # e.g. PNG bytes in a .jpg file
    workers: int = Field(0, ge=0)  # 0 = all cores
    chunk_size: int = Field(256, ge=1)  # files per staged work unit (the resume granularity)
    keep_staging: bool = False  # keep the decoded chunks after success (faster rebuild of deleted shards)

    @model_validator(mode="after")
    def _sides(self) -> IngestConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must not exceed max_side ({self.max_side})")
        return self


# ---------------------------------------------------------------------------------------------------------- teachers
class TeacherSpec(Section):
    """One frozen teacher: a local `save_pretrained` directory (or a hub id when online)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    kind: Literal["siglip2", "dinov3", "hf", "timm"]
    path: str
    summary_weight: float = Field(1.0, ge=0)
    patch_weight: float = Field(1.0, ge=0)
    register_weight: float = Field(0.0, ge=0)  # DINOv3 registers; 0 disables the term


class DemoTeacherConfig(Section):
    """One demo teacher trained locally in the real transformers class, as a classifier on a labelled folder."""

    train: Path  # folder with one subfolder per class
    test: Path  # its own domain's evaluation split (kNN accuracy in report.json)
    hidden_size: int = Field(128, ge=16)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    registers: int = Field(0, ge=0)  # DINOv3 register tokens (SigLIP2 has none)
    patch_size: int = Field(16, ge=2)
    image_size: int = Field(64, ge=16)  # training resolution; also the kNN evaluation resolution
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    augment: bool = True  # random resized crop + flip; off: each image is only resized to the batch's grid
    min_crop_scale: float = Field(0.35, gt=0, le=1)  # random-resized-crop area range [min_crop_scale, 1]
    grid_jitter: int = Field(1, ge=0)  # NaFlex-style: each batch's patch grid varies +-grid_jitter rows/cols
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    head: Literal["linear", "cosine"] = "cosine"  # cosine: NormFace logits, features separated by angle (for kNN)
    cosine_scale: float = Field(16.0, gt=0)  # logit scale of the cosine head

    @model_validator(mode="after")
    def _shape(self) -> DemoTeacherConfig:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.grid_jitter >= self.image_size // self.patch_size:
            raise ValueError(f"grid_jitter ({self.grid_jitter}) must be smaller than the patch grid side")
        return self


class DemoTeachersConfig(Section):
    """`amoe teachers demo`: a DINOv3 expert on fashion-mnist and a SigLIP2 expert on clip-art."""

    out: Path = Path("data/teachers")
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    knn_train_max: int = Field(5000, ge=10)  # kNN memory bank: at most this many train images (class-stratified)
    threads: int = Field(
        1, ge=0
    )  # torch threads during the stage (0 = torch's default): see train/demo_teachers/stage.py for why 1
    # Recipes measured on the demo splits (kNN trained vs random, report.json): fashion-mnist is learnt best without
    # augmentation; clip-art (~2000 train images, 10 classes) needs many small-batch epochs and light crops.
    dinov3: DemoTeacherConfig = DemoTeacherConfig(
        train=Path("data/demo/splits/fmnist_train"),
        test=Path("data/demo/splits/fmnist_test"),
        registers=4,
        batch_size=64,
        augment=False,
        grid_jitter=0,
    )
    siglip2: DemoTeacherConfig = DemoTeacherConfig(
        train=Path("data/demo/splits/clipart_train"),
        test=Path("data/demo/splits/clipart_test"),
        epochs=16.0,
        batch_size=32,
        min_crop_scale=0.6,
    )

    @model_validator(mode="after")
    def _siglip_registers(self) -> DemoTeachersConfig:
        if self.siglip2.registers:
            raise ValueError("siglip2.registers must be 0: Siglip2VisionModel has no register tokens")
        return self


# ---------------------------------------------------------------------------------------------------------- curation
class EmbedConfig(Section):
    """`amoe curate embed`: every image of the shard set -> float16 memmap aligned with the manifest."""

    shards: Path = Path("data/shards")
    # The demo embeds with the SigLIP2 teacher: the demo DINOv3 is a narrow fashion-mnist expert whose space spends
    # most clusters on fashion-mnist (balanced share 0.74 vs random 0.67); SigLIP2's spreads the pool (0.43 vs 0.67).
    # With real teachers use DINOv3, as the paper does.
    encoder: str = "siglip"  # a teacher name from `teachers`, or hf:PATH / timm:PATH for any local model
    image_size: int = Field(64, ge=16)
    batch_size: int = Field(256, ge=1)
    processes: int = Field(1, ge=1)  # processes of `amoe curate embed` on this machine (torchrun when > 1)
    out: Path = Path("data/curation/embeddings")


class ClusterConfig(Section):
    """`amoe curate cluster`: hierarchical k-means with resampling (Vo et al. 2024), one value per level for the
    lists; the resampling keys mean what they mean in the reference config of ssl-data-curation (see hkmeans.py)."""

    embeddings: Path = Path("data/curation/embeddings")
    k: list[int] = Field(default_factory=lambda: [300, 60, 20], min_length=1)
    iters: int = Field(20, ge=1)
    # k-means runs per level, the first on all items being step 0: 1 = no resampling
    resampling_steps: list[int] = Field(default_factory=lambda: [6, 6, 6])
    # items taken per cluster in a resampling step (~half the mean cluster size); <= 1 = no resampling
    sample_size: list[int] = Field(default_factory=lambda: [25, 3, 2])
    sampling_strategy: Literal["closest", "random"] = "closest"  # which items of a cluster a resampling step takes
    metric: Literal["cosine", "l2"] = "cosine"
    init: Literal["kmeans++", "random"] = "kmeans++"  # seeding reaches small, far clusters that random misses
    chunk_size: int = Field(65536, ge=1)  # points assigned per faiss search (bounds the float32 working copy)
    max_points_per_centroid: int = Field(256, ge=1)  # step 0 of level 1 trains on at most k * this many points
    processes: int = Field(1, ge=1)  # processes of `amoe curate cluster` on this machine (torchrun when > 1)
    out: Path = Path("data/curation/clusters")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        renamed = {"resample_steps": "resampling_steps (= old value + 1: the first k-means is step 0)",
                   "resample_points": "sample_size", "resample_method": "sampling_strategy"}  # fmt: skip
        for old in set(renamed) & set(data if isinstance(data, dict) else ()):
            raise ValueError(f"{old} was renamed to {renamed[old]}, as in Vo et al.'s reference config")
        return data

    @model_validator(mode="after")
    def _per_level(self) -> ClusterConfig:
        for name in ("resampling_steps", "sample_size"):
            if len(getattr(self, name)) != len(self.k):
                raise ValueError(
                    f"{name} needs one value per level ({len(self.k)} levels in k), got {getattr(self, name)}"
                )
        if any(b > a for a, b in zip(self.k, self.k[1:])):
            raise ValueError(f"k must not increase from one level to the next, got {self.k}")
        if min(self.k) < 1 or min(self.sample_size) < 1 or min(self.resampling_steps) < 1:
            raise ValueError("k, resampling_steps and sample_size must be >= 1 at every level")
        return self


class SampleConfig(Section):
    """`amoe curate sample`: hierarchical balanced sampling, plus a random baseline of the same size."""

    shards: Path = Path("data/shards")
    clusters: Path = Path("data/curation/clusters")
    embeddings: Path = Path("data/curation/embeddings")
    target: int = Field(4000, ge=1)
    within: Literal["random", "closest"] = "random"  # how points are taken inside a level-1 cluster
    out: Path = Path("data/curation/selection")
    plots: Path = Path("data/curation/plots")
    plot_clusters: int = Field(6, ge=1)  # clusters shown in the example grid
    plot_images: int = Field(8, ge=1)  # images per cluster in the example grid


# ---------------------------------------------------------------------------------------------------------- model
class PackingConfig(Section):
    """Token-balanced batching: native-aspect images packed into sequences of exactly `c_max` tokens."""

    patch_size: int = Field(16, ge=1)
    c_max: int = Field(256, ge=4)  # patch tokens per sequence (prefix tokens are added per image by the student)
    max_images_per_seq: int = Field(16, ge=1)
    min_tokens: int = Field(4, ge=1)  # per-image patch-count range; aspect ratio is kept
    max_tokens: int = Field(64, ge=1)
    token_sampling: Literal["native", "uniform", "loguniform"] = "loguniform"
    seqs_per_step: int = Field(8, ge=1)  # sequences per rank per step
    shuffle_buffer: int = Field(512, ge=1)
    shard_interleave: int = Field(16, ge=1)  # shards whose samples are interleaved in the stream (mixes sources)
    mode: Literal["packed", "fixed"] = "packed"  # fixed = a fixed number of images per step (ablation baseline)
    # mode=fixed only; None = as many images as packed mode fits on average (seqs_per_step * c_max / mean tokens)
    images_per_step: int | None = Field(None, ge=1)
    workers: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _tokens(self) -> PackingConfig:
        if self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        if self.max_tokens > self.c_max:
            raise ValueError(f"max_tokens ({self.max_tokens}) must fit in one sequence (c_max = {self.c_max})")
        return self


class StudentConfig(Section):
    """The student (the released SigLino architecture): a named config plus optional overrides of its fields, and
    optionally released weights to start from (`init`: a SigLino `.pt` state dict or our safetensors export)."""

    name: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)
    init: Path | None = None


class LossConfig(Section):
    """Feature losses on PHI-S normalised targets plus a relational term over the global batch of summaries."""

    relational: Literal["arkd", "rkd", "none"] = "arkd"
    relational_weight: float = Field(1.0, ge=0)  # feature-loss weights are per teacher (teachers[i].*_weight)
    # the Switch-style MoE balance loss counts when > 0 (its one switch); balancing is aux-loss-free by default
    balance_aux_weight: float = Field(0.0, ge=0)
    phis_samples: int = Field(2048, ge=16)  # teacher features used to fit PHI-S


# ---------------------------------------------------------------------------------------------------------- train
class DistillConfig(Section):
    """`amoe distill`: the distillation run."""

    run: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    # The training seed (student init, data order, per-image token budgets). The top-level `seed` fixes the data:
    # demo pool, teachers, curation and evaluation splits, so seed repeats of an ablation share all of those.
    seed: int = 0
    runs_dir: Path = Path("runs")
    shards: Path = Path("data/shards")
    selection: Path | None = Path("data/curation/selection/balanced.parquet")  # None = every image of the shards
    steps: int = Field(300, ge=1)
    lr: float = Field(1e-3, gt=0, le=10)  # AdamW moves each weight by about lr per step: beyond 10 it diverges at once
    min_lr: float = Field(1e-5, ge=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    grad_accum: int = Field(1, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(3, ge=1)  # newest complete checkpoints kept on disk
    log_every: int = Field(1, ge=1)
    compile: bool = False
    deterministic: bool = True
    balance_update_rate: float = Field(1e-3, ge=0)
    # `amoe teachers cache` writes the teachers' outputs here; when set, distillation reads its targets from it
    # instead of running the teachers (amoe_core/train/teacher_cache.py says when a cache is valid)
    teacher_cache: Path | None = None
    teacher_cache_dtype: Literal["bfloat16", "float16"] = "bfloat16"

    @field_validator("run")
    @classmethod
    def _folder_name(cls, run: str) -> str:
        if run in (".", ".."):  # a folder name under runs_dir, not runs_dir itself or its parent
            raise ValueError("must name a run folder, not . or ..")
        return run


class LaunchConfig(Section):
    """`amoe submit`: where and how a stage runs (submitit)."""

    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    folder: Path = Path("runs/_submitit")
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    tasks_per_node: int = Field(1, ge=1)
    cpus_per_task: int = Field(1, ge=1)
    mem_gb: float = Field(4, gt=0)
    timeout_min: int = Field(60, ge=1)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int = Field(90, ge=0)
    max_requeues: int = Field(3, ge=0)
    slurm_extra: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------- eval
class EvalDataset(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    train: str  # folder:PATH (one subfolder per class) or shards:PATH (labelled shards)
    test: str


class EvaluateConfig(Section):
    """`amoe evaluate`: kNN, linear probe, cross-resolution, fidelity, PCA maps."""

    datasets: list[EvalDataset] = Field(
        default_factory=lambda: [
            EvalDataset(
                name="fmnist", train="folder:data/demo/splits/fmnist_train", test="folder:data/demo/splits/fmnist_test"
            ),
            EvalDataset(
                name="clipart",
                train="folder:data/demo/splits/clipart_train",
                test="folder:data/demo/splits/clipart_test",
            ),
        ]
    )
    max_train_per_dataset: int = Field(5000, ge=10)
    resolutions: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [32, 64, 112], min_length=1)
    main_resolution: int = Field(64, ge=16)
    ks: list[int] = Field(default_factory=lambda: [10, 20, 100], min_length=1)
    temperature: float = Field(0.07, gt=0)
    probe_lrs: list[float] = Field(default_factory=lambda: [0.1, 0.03, 0.01])
    probe_epochs: int = Field(30, ge=1)
    probe_val_fraction: float = Field(0.1, gt=0, lt=1)
    pca_images: int = Field(6, ge=1)
    cache: Path = Path("data/eval_cache")
    batch_size: int = Field(256, ge=1)


# ---------------------------------------------------------------------------------------------------------- sweep
class SweepConfig(Section):
    """`amoe sweep`: Optuna over batching and loss settings, scored by kNN after a short distillation."""

    study: str = Field("amoe-sweep", pattern=r"^[A-Za-z0-9_.-]+$")  # also the prefix of the trials' run ids
    storage: str = "sqlite:///runs/optuna.db"  # any SQLAlchemy RDB URL (postgresql://... for many workers)
    n_trials: int = Field(8, ge=1)  # in total, split across the workers
    workers: int = Field(1, ge=1)  # parallel worker processes on this machine, sharing the storage
    steps: int = Field(60, ge=1)  # distillation steps per trial (when token_budget is not set)
    token_budget: int | None = Field(None, ge=1)  # fixed compute: steps = budget / (c_max * seqs_per_step)
    seed: int = 0
    search: list[str] = Field(default_factory=list)  # dimensions of amoe_core/sweep/space.py to search; [] = all
    overrides: list[str] = Field(default_factory=list)  # applied to every trial, e.g. evaluate.resolutions=[64]
    feature: str = "student:ensemble"  # scored feature: mean over datasets of kNN at evaluate.main_resolution
    k: int = Field(20, ge=1)
    objective: str = "amoe_core.sweep.objective:distill_knn"  # module:function(trial, params) -> float
    pruner_startup_trials: int = Field(3, ge=0)  # median pruning starts once this many trials completed
    heartbeat_s: int = Field(60, ge=1)  # a trial whose worker died is failed after 2 heartbeats and retried once
    best_out: Path = Path("runs/sweep_best.yaml")  # best trial as `-S` overrides for `dvc exp run` / load_params


class AblateConfig(Section):
    """`amoe ablate`: the paper's ablations as queued DVC experiments (amoe_core/experiments/ablations.py)."""

    seeds: int = Field(3, ge=1)  # distill.seed = 0 .. seeds-1 per variant
    jobs: int = Field(2, ge=1)  # DVC queue workers running experiments side by side
    variants: list[str] = Field(default_factory=list)  # empty = all (amoe_core/experiments/ablations.py: VARIANTS)
    # `key=value` for every experiment: the ablation trains longer than the demo, to the length at which the
    # reference student clears both expert checks (README, Current results)
    overrides: list[str] = Field(default_factory=lambda: ["distill.steps=600", "distill.lr=0.002"])
    out: Path = Path("results/ablations")  # the collected run records (versioned; `amoe report` reads them)


class ReportConfig(Section):
    """`amoe report`. The defaults regenerate the committed docs/RESULTS.md from the collected ablation runs; point
    `runs_dir` at `runs` (and `out` elsewhere) for a report on your own runs."""

    runs_dir: Path = Path("results/ablations")
    out: Path = Path("docs/RESULTS.md")


# ---------------------------------------------------------------------------------------------------------- root
def _default_teachers() -> list[TeacherSpec]:
    return [
        TeacherSpec(name="dino", kind="dinov3", path="data/teachers/dinov3", register_weight=1.0),
        TeacherSpec(name="siglip", kind="siglip2", path="data/teachers/siglip2"),
    ]


class Params(Section):
    """params.yaml: the top-level seed, the teachers and one section per stage (a section left out takes its defaults)."""

    seed: int = 0
    demo_pool: DemoPoolConfig
    ingest: IngestConfig
    teachers: list[TeacherSpec] = Field(default_factory=_default_teachers, min_length=1)
    demo_teachers: DemoTeachersConfig
    embed: EmbedConfig
    cluster: ClusterConfig
    sample: SampleConfig
    packing: PackingConfig
    student: StudentConfig
    loss: LossConfig
    distill: DistillConfig
    launch: LaunchConfig
    evaluate: EvaluateConfig
    sweep: SweepConfig
    ablate: AblateConfig
    report: ReportConfig

    @model_validator(mode="before")
    @classmethod
    def _default_sections(cls, data: Any) -> Any:
        """Every section absent from the file is built from its class's defaults (written once, in the class)."""
        if not isinstance(data, dict):
            return data
        sections = [name for name, f in cls.model_fields.items() if f.is_required()]
        return {**{name: {} for name in sections}, **data}

    @model_validator(mode="after")
    def _unique_teachers(self) -> Params:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        sel = self.distill.selection
        if sel is not None and sel.suffix != ".parquet":
            raise ConfigError(
                f"invalid distill.selection = {str(sel)!r}: must be a selection .parquet (from amoe curate sample)"
            )
        arch = resolve_arch(self.student.name, self.student.overrides)
        if arch.patch_size != self.packing.patch_size:
            raise ConfigError(
                f"invalid student.overrides.patch_size = {arch.patch_size}: must equal packing.patch_size = "
                f"{self.packing.patch_size} (batches are cut into patches of that size); set both together"
            )
        return self

    @model_validator(mode="after")
    def _outputs_apart_from_inputs(self) -> Params:
        """No output directory overlaps what its stage reads (or another output of it): a swap would delete it."""
        folders = {f"ingest.sources[{i}]": s.partition(":")[2] for i, s in enumerate(self.ingest.sources) if ":" in s}
        dt = self.demo_teachers
        teacher_data = {f"demo_teachers.{k}.{s}": getattr(getattr(dt, k), s) for k in ("dinov3", "siglip2")
                        for s in ("train", "test")}  # fmt: skip
        sel = {"distill.selection": self.distill.selection} if self.distill.selection else {}
        sample_in = {f"sample.{k}": getattr(self.sample, k) for k in ("shards", "clusters", "embeddings")}
        for outputs, inputs in (
            ({"ingest.out": self.ingest.out}, {k: v for k, v in folders.items() if v}),
            ({"demo_teachers.out": dt.out}, teacher_data),
            ({"embed.out": self.embed.out}, {"embed.shards": self.embed.shards}),
            ({"cluster.out": self.cluster.out}, {"cluster.embeddings": self.cluster.embeddings}),
            ({"sample.out": self.sample.out}, {**sample_in, "sample.plots": self.sample.plots}),
            ({"sample.plots": self.sample.plots}, sample_in),
            ({"distill.run": self.distill.runs_dir / self.distill.run}, {"distill.shards": self.distill.shards, **sel}),
        ):
            check_disjoint(outputs, inputs)
        return self

    def teacher(self, name: str) -> TeacherSpec:
        for t in self.teachers:
            if t.name == name:
                return t
        raise ConfigError(f"no teacher named {name!r}; params.yaml declares {[t.name for t in self.teachers]}")


# ---------------------------------------------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one DVC-style `a.b.c=value` override in place; the value is parsed as YAML (`3`, `true`, `[1, 2]`)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {dotted}: cannot parse value {raw!r} ({e.__class__.__name__})") from None
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, keys[: i + 1])]
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {dotted}: {'.'.join(keys[: i + 1])} is a value, not a section")
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys)] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, path: list[str]) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"override {'.'.join(path)}: {key!r} is not an index of a list of {len(node)} items")
    return int(key)


def _format_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = sorted(_model_at(Params, err["loc"][:-1]).model_fields)
        return f"unknown key {loc}; allowed keys here: {', '.join(allowed)}"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{loc} is required"
    where = f"{loc} = {value!r}" if loc and not isinstance(value, dict) else (loc or "params")
    return f"invalid {where}: {msg}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The pydantic model class that owns location `loc` (list indices skipped)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif inner:
            model = inner[0]
    return model


def validate_params(data: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e.errors()[0], data)) from None


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Load params.yaml (defaults when the file is absent and no path was given) and apply overrides."""
    data: dict[str, Any] = {}
    p = Path(path) if path is not None else DEFAULT_PARAMS
    if p.exists():
        try:
            data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except IsADirectoryError:
            raise ConfigError(f"--params {str(p)!r}: is a directory; give the params.yaml file") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"--params {str(p)!r}: not a text YAML file ({type(e).__name__})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if data is None:
            raise ConfigError(f"{p}: is empty; write the sections you change, or remove it to use the defaults")
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(data).__name__}")
    elif path is not None:
        raise ConfigError(f"--params {str(p)!r}: file does not exist")
    for o in overrides or []:
        apply_override(data, o)
    return validate_params(data)


def dump_params(params: Params) -> str:
    """The resolved params as YAML (what a run directory records)."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)

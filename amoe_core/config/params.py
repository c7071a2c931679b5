"""`Params`: params.yaml as a whole, assembled from one section per stage (a section left out takes its defaults), with
the checks that span sections; `validate_params` turns pydantic's first error into one `ConfigError` line naming the
field, the bad value and what is allowed."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from amoe_core.config.ablate import AblateConfig
from amoe_core.config.cluster import ClusterConfig
from amoe_core.config.demo_pool import DemoPoolConfig
from amoe_core.config.demo_teachers import DemoTeachersConfig
from amoe_core.config.distill import DistillConfig
from amoe_core.config.embed import EmbedConfig
from amoe_core.config.evaluate import EvaluateConfig
from amoe_core.config.ingest import IngestConfig
from amoe_core.config.launch import LaunchConfig
from amoe_core.config.loss import LossConfig
from amoe_core.config.packing import PackingConfig
from amoe_core.config.report import ReportConfig
from amoe_core.config.sample import SampleConfig
from amoe_core.config.section import Section
from amoe_core.config.student import StudentConfig, resolve_arch
from amoe_core.config.sweep import SweepConfig
from amoe_core.config.teachers import TeacherSpec, default_teachers
from amoe_core.errors import ConfigError
from amoe_core.outputs import check_disjoint


class Params(Section):
    """params.yaml: the top-level seed, the teachers and one section per stage (a section left out takes its defaults)."""

    seed: int = Field(  # numpy seeds are 0 .. 2**32 - 1
        0,
        ge=0,
        lt=2**32,
        description="Data seed: demo pool, teachers, curation and evaluation splits (distill.seed is the training seed).",
    )
    demo_pool: DemoPoolConfig = Field(description="`amoe data demo-pool`: the offline demo images.")
    ingest: IngestConfig = Field(description="`amoe data ingest`: image sources -> shards.")
    teachers: list[TeacherSpec] = Field(
        default_factory=default_teachers, min_length=1, description="The frozen teachers distilled into the student."
    )
    demo_teachers: DemoTeachersConfig = Field(description="`amoe teachers demo`: the two small demo teachers.")
    embed: EmbedConfig = Field(description="`amoe curate embed`: the curation embeddings.")
    cluster: ClusterConfig = Field(description="`amoe curate cluster`: hierarchical k-means.")
    sample: SampleConfig = Field(description="`amoe curate sample`: balanced and random selections.")
    packing: PackingConfig = Field(description="Token-balanced batching of `amoe distill`.")
    student: StudentConfig = Field(description="The student architecture and its initial weights.")
    loss: LossConfig = Field(description="The distillation losses.")
    distill: DistillConfig = Field(description="`amoe distill`: the training run.")
    launch: LaunchConfig = Field(description="`amoe submit`: where and how a stage runs.")
    evaluate: EvaluateConfig = Field(description="`amoe evaluate`: datasets and protocols.")
    sweep: SweepConfig = Field(description="`amoe sweep`: the Optuna search.")
    ablate: AblateConfig = Field(description="`amoe ablate`: the paper's ablations.")
    report: ReportConfig = Field(description="`amoe report`: docs/RESULTS.md.")

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
    def _zero_shot_teacher(self) -> Params:
        # A name absent from teachers is allowed (zero-shot is skipped with a log line, evaluate/_zero_shot): the
        # default names the demo's `siglip`, and configs with other teachers keep validating.
        zs = self.evaluate.zero_shot
        kinds = {t.name: t.kind for t in self.teachers}
        if zs is not None and zs.teacher in kinds and kinds[zs.teacher] != "siglip2":
            raise ConfigError(
                f"invalid evaluate.zero_shot.teacher = {zs.teacher!r}: must name a teacher of kind siglip2 "
                f"(teachers: {kinds}); its path must be a full Siglip2Model directory with a tokenizer"
            )
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


def _format_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = sorted(_model_at(Params, err["loc"][:-1]).model_fields)
        near = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f"did you mean {'.'.join([*map(str, err['loc'][:-1]), near[0]])}? " if near else ""
        return f"unknown key {loc}; {hint}allowed keys here: {', '.join(allowed)}"
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
        errors = e.errors()
        first = errors[0]
        if first["type"] == "missing":  # a required key reported missing because it was mistyped: name the typo
            typo = [x for x in errors if x["type"] == "extra_forbidden" and x["loc"][:-1] == first["loc"][:-1]]
            first = typo[0] if typo else first
        raise ConfigError(_format_error(first, data)) from None

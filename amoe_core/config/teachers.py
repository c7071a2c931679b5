"""The top-level `teachers` list: the frozen teachers that embed, distill and evaluate load."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from amoe_core.config.section import Section


class TeacherSpec(Section):
    """One frozen teacher: a local `save_pretrained` directory (or a hub id when online)."""

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="Teacher name, unique; embed.encoder and the metrics refer to it.",
    )
    kind: Literal["siglip2", "dinov3", "hf", "timm"] = Field(
        description="Model family: siglip2 or dinov3 (transformers classes), or any hf / timm model."
    )
    path: str = Field(description="A local save_pretrained directory (or a hub id when online).")
    summary_weight: float = Field(1.0, ge=0, description="Weight of this teacher's summary-token feature loss.")
    patch_weight: float = Field(1.0, ge=0, description="Weight of this teacher's patch-token feature loss.")
    register_weight: float = Field(
        0.0, ge=0, description="Weight of the DINOv3 register-token loss; 0 disables the term."
    )


def default_teachers() -> list[TeacherSpec]:
    return [
        TeacherSpec(name="dino", kind="dinov3", path="data/teachers/dinov3", register_weight=1.0),
        TeacherSpec(name="siglip", kind="siglip2", path="data/teachers/siglip2"),
    ]

"""What every section of params.yaml shares: the strict pydantic base and the YAML form of resolved params."""

from __future__ import annotations

from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field

Byte = Annotated[int, Field(ge=0, le=255)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def dump_params(params: BaseModel) -> str:
    """The resolved params as YAML (what a run directory records). Here rather than next to `load_params` so that a
    stage recording its params does not import every section's schema."""
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)

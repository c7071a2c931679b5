"""Frozen teachers (SigLIP2, DINOv3, any transformers or timm vision encoder) and the demo teachers' training."""

from amoe_core.models.teachers.base import Teacher, TeacherOutput
from amoe_core.models.teachers.loader import load_teacher, load_teachers

__all__ = ["Teacher", "TeacherOutput", "load_teacher", "load_teachers"]

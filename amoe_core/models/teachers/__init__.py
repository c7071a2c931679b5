"""Frozen teachers: SigLIP2, DINOv3, any transformers or timm vision encoder (`loader.load_teacher`)."""

from amoe_core.models.teachers.base import Teacher, TeacherOutput
from amoe_core.models.teachers.loader import load_teacher

__all__ = ["Teacher", "TeacherOutput", "load_teacher"]

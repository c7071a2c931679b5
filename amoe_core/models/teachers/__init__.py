"""Frozen teachers: SigLIP2, DINOv3, any transformers or timm vision encoder, loaded by `loader.load_teacher`."""

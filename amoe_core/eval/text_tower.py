"""The text tower of a full SigLIP2 checkpoint (`Siglip2Model`: vision + text + tokenizer), for zero-shot evaluation.

Texts are tokenised as SigLIP2 was trained: padded to 64 tokens with the pad token after the text, no attention
mask (the text transformer pools its last position), which is also how the released SigLino evaluation feeds
`google/siglip2-so400m-patch16-naflex`. The embedding is the text model's `pooler_output`, L2-normalised: the space
the vision tower's `pooler_output` (the teacher's summary) is compared with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from amoe_core.errors import AmoeError
from amoe_core.models.teachers.hf import load_config, load_model, resolve_source
from amoe_core.models.teachers.siglip2 import MODEL_TYPES

TEXT_TOKENS = 64  # SigLIP2's training text length


class Siglip2TextTower:
    """`encode(texts) -> [n, D]` unit vectors in the teacher's image-summary space."""

    def __init__(self, name: str, text_model: nn.Module, tokenizer: Any, fingerprint: str) -> None:
        self.name, self.text_model, self.tokenizer, self.fingerprint = name, text_model, tokenizer, fingerprint
        self.device = next(text_model.parameters()).device

    def token_ids(self, texts: list[str]) -> Tensor:
        """[n, 64] token ids: the tokenizer's own ids (special tokens included), cut or right-padded to 64."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(texts), TEXT_TOKENS), pad, dtype=torch.long)
        for i, t in enumerate(texts):
            enc = self.tokenizer(t)["input_ids"][:TEXT_TOKENS]
            ids[i, : len(enc)] = torch.tensor(enc, dtype=torch.long)
        return ids

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            ids = self.token_ids(texts[start : start + batch_size]).to(self.device)
            emb = self.text_model(input_ids=ids).pooler_output.float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)


def load_text_tower(spec: Any, device: torch.device | str = "cpu") -> Siglip2TextTower:
    """The text tower and tokenizer of teacher `spec` (kind siglip2); one clear error when its path is vision-only."""
    # transformers: imported when a text tower loads (about a second of start-up for commands that never do)
    from transformers import AutoTokenizer, Siglip2Model

    source = resolve_source(spec.name, spec.path)
    cfg = load_config(spec.name, source)
    if cfg.model_type not in MODEL_TYPES or getattr(cfg, "text_config", None) is None:
        raise AmoeError(
            f"evaluate.zero_shot: teacher {spec.name!r} ({spec.path!r}) is a {cfg.model_type!r} checkpoint without a "
            "text tower; zero-shot needs a full Siglip2Model directory (vision and text towers and a tokenizer)"
        )
    model = load_model(spec.name, Siglip2Model, source, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        first = " ".join(str(e).split())[:200]
        raise AmoeError(
            f"evaluate.zero_shot: teacher {spec.name!r}: no usable tokenizer in {source!r} ({first}); "
            "save the checkpoint's tokenizer beside it (tokenizer.save_pretrained)"
        ) from None
    return Siglip2TextTower(spec.name, model.text_model, tokenizer, _fingerprint(source))


def _fingerprint(source: str) -> str:
    """Changes with the text weights and the tokenizer (names, sizes, mtimes): part of the prompt-embedding cache key."""
    h = hashlib.sha256(source.encode())
    root = Path(source)
    if root.is_dir():
        for p in sorted(f for f in root.iterdir() if f.is_file()):
            st = p.stat()
            h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]

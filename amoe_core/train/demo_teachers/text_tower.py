"""The demo SigLIP2 teacher's text tower, trained LiT-style (Zhai et al. 2022, "locked image tuning"): the image
tower is frozen as trained, so every image embedding downstream is unchanged, and only a `Siglip2TextModel` plus the
sigmoid loss's logit scale and bias learn (SigLIP, Zhai et al. 2023), on real captions: Tux Paint's stamp
descriptions, Openclipart's category and title (its file name), fashion-mnist's class names.

Texts are tokenised exactly as zero-shot evaluation tokenises them (`Siglip2TextTower.token_ids`: canonicalised,
padded to 64 tokens after the text, the last position pooled), with a small Gemma-style BPE built from the captions
by the `tokenizers` library and saved so that transformers loads it back offline (as its Siglip2Tokenizer). Images
captioned by the same text are all positives of each other (fashion-mnist repeats its ten captions); every other
pair of the batch is a negative.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amoe_core.config.demo_teachers import DemoTextConfig
from amoe_core.data.labelled_folders import list_labelled_folder
from amoe_core.errors import AmoeError
from amoe_core.eval.text_tower import TEXT_TOKENS, Siglip2TextTower
from amoe_core.eval.zero_shot import canonicalize
from amoe_core.progress import progress

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


# ---------------------------------------------------------------------------------------------------------- captions
def title_words(file_name: str) -> str:
    """An Openclipart split file's title: sub-folders and name words, digits-only words (numbering) dropped."""
    words = Path(file_name).stem.replace("__", " ").replace("_", " ").replace("-", " ").split()
    return " ".join(w for w in words if not w.isdigit())


def caption_pairs(cfg: DemoTextConfig, seed: int) -> list[tuple[Path, tuple[str, ...]]]:
    """(image, its canonical captions) from every caption source of `cfg`: a picture's keywords (its categories) and
    its full caption (keywords and title or description) are both its metadata; training draws one per step."""
    pairs: list[tuple[Path, tuple[str, ...]]] = []
    for f in cfg.captions:
        if not f.is_file():
            raise AmoeError(f"demo_teachers.text.captions: {f} not found; build it with `amoe data demo-pool`")
        root = f.parent.parent
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                pairs.append((root / item["image"], (item["keywords"], item["caption"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise AmoeError(f"{f}:{n}: expected a JSON object with image, caption and keywords") from None
    for root in cfg.titled_folders:
        files, names = list_labelled_folder(root, "demo_teachers.text.titled_folders")
        pairs += [(p, (c, f"{c} {title_words(p.name)}")) for p, c in zip(files, names)]
    g = torch.Generator().manual_seed(seed)
    for root in cfg.class_folders:
        files, names = list_labelled_folder(root, "demo_teachers.text.class_folders")
        keep = torch.randperm(len(files), generator=g)[: cfg.class_folder_max].sort().values.tolist()
        pairs += [(files[i], (names[i],)) for i in keep]
    return [(p, tuple(canonicalize(c) for c in cs)) for p, cs in pairs]


# ---------------------------------------------------------------------------------------------------------- tokenizer
def build_tokenizer(texts: list[str], vocab_size: int, out: Path) -> Any:
    """A Gemma-style BPE (lower case, spaces as ▁, byte fallback: the layout transformers' Siglip2Tokenizer
    rebuilds on load) learnt from `texts`, saved into `out` and returned as transformers loads it from there."""
    # tokenizers / transformers: imported when a tokenizer is built (start-up time of every other command)
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        mask_token="<mask>",
    )  # fmt: skip
    fast.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


# ---------------------------------------------------------------------------------------------------------- model
def build_text_model(cfg: DemoTextConfig, vision_config: Any, vocab: int, pad_id: int) -> nn.Module:
    """A `Siglip2TextModel` projecting into the image tower's summary space (narrower: 64 tokens per text is most
    of the stage's time)."""
    from transformers import Siglip2TextConfig, Siglip2TextModel  # transformers: imported where a model is built

    tcfg = Siglip2TextConfig(
        vocab_size=vocab, hidden_size=cfg.width, intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, max_position_embeddings=TEXT_TOKENS,
        projection_size=int(vision_config.hidden_size), pad_token_id=pad_id, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return Siglip2TextModel(tcfg)


class TextSide(nn.Module):
    """What LiT trains: the text model and SigLIP's logit scale (log-space) and bias (initialised as SigLIP's)."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))
        self.logit_bias = nn.Parameter(torch.tensor([-10.0]))

    def embed(self, ids: Tensor) -> Tensor:
        return F.normalize(self.text_model(input_ids=ids).pooler_output, dim=-1)


def sigmoid_loss(logits: Tensor, positive: Tensor) -> Tensor:
    """SigLIP's pairwise sigmoid loss: -log sigmoid(+-logit) summed over all pairs, divided by the batch size."""
    sign = positive.float() * 2 - 1
    return -F.logsigmoid(sign * logits).sum() / logits.shape[0]


def train_text_tower(
    cfg: DemoTextConfig, image_feats: Tensor, captions: list[tuple[str, ...]], tokenizer: Any, vision_config: Any,
    seed: int,
    max_steps: int | None = None,
) -> tuple[TextSide, TextSide, dict[str, Any]]:  # fmt: skip
    """Train the text side against frozen image summaries [N, D], each image with one or more captions; returns
    (trained, its random init, facts)."""
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    initial = TextSide(build_text_model(cfg, vision_config, len(tokenizer), pad))
    side = copy.deepcopy(initial)
    unique = sorted({c for cs in captions for c in cs})
    index = {c: i for i, c in enumerate(unique)}
    width = max(len(cs) for cs in captions)  # [N, width] caption ids, -1 = none
    choices = torch.tensor([[index[c] for c in cs] + [-1] * (width - len(cs)) for cs in captions])
    n_choices = (choices >= 0).sum(1)
    tower = Siglip2TextTower("demo", side.text_model, tokenizer, "")
    ids = tower.token_ids(unique)
    img = F.normalize(image_feats.float(), dim=-1)
    steps = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    warmup = max(1, steps // 20)
    opt = torch.optim.AdamW(side.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    g = torch.Generator().manual_seed(seed)
    n, b = len(captions), min(cfg.batch_size, len(captions))
    losses: list[float] = []
    side.train()
    t0 = time.perf_counter()
    for _ in progress(range(steps), desc="train siglip2 text tower", total=steps):
        idx = torch.randperm(n, generator=g)[:b]
        pick = (torch.rand(b, generator=g) * n_choices[idx]).long()
        cid = choices[idx, pick]
        uniq, inverse = torch.unique(cid, return_inverse=True)  # repeated captions embedded once
        txt = side.embed(ids[uniq])[inverse]
        logits = img[idx] @ txt.T * side.logit_scale.exp() + side.logit_bias
        loss = sigmoid_loss(logits, cid[:, None] == cid[None, :])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(side.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    side.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    facts = {
        "steps": steps,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_loss": sum(tail) / len(tail),
        "captioned_images": n,
        "unique_captions": len(unique),
        "vocab_size": len(tokenizer),
    }
    return side, initial.eval(), facts


def full_model(vision: nn.Module, text: TextSide) -> nn.Module:
    """A transformers `Siglip2Model` holding the trained image tower and the text side (weights copied)."""
    from transformers import Siglip2Config, Siglip2Model  # transformers: imported where a model is built

    model = Siglip2Model(
        Siglip2Config(text_config=text.text_model.config.to_dict(), vision_config=vision.config.to_dict())
    )
    model.vision_model.load_state_dict(vision.state_dict())
    model.text_model.load_state_dict(text.text_model.state_dict())
    with torch.no_grad():
        model.logit_scale.copy_(text.logit_scale)
        model.logit_bias.copy_(text.logit_bias)
    return model.eval()


def temporary_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """The tokenizer as transformers loads it, built in a scratch folder (the stage saves it with the model)."""
    with tempfile.TemporaryDirectory() as tmp:
        return build_tokenizer(texts, vocab_size, Path(tmp))

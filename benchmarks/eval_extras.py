"""The share of `amoe evaluate --teachers` time that zero-shot and the segmentation probe add, same run, same data:
evaluate once with the params as given (zero-shot and `task: segmentation` datasets included) and once without
them (evaluate.zero_shot = None, segmentation datasets left out), each from an empty feature cache.

Run on the demo after `make demo` (its params declare both): `python benchmarks/eval_extras.py --params params.yaml`.
Prints the full / without ratio on the last line.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from _smoke import parse_and_compare, sample_pool
from PIL import Image

from amoe_core.config import Params, load_params
from amoe_core.eval.evaluate import evaluate
from amoe_core.tracking.runs import RunDir


def timed_evaluate(params: Params, root: Path) -> float:
    out = RunDir(root / "runs" / "_teachers")
    out.path.mkdir(parents=True, exist_ok=True)
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"cache": root / "cache"})})
    t0 = time.perf_counter()
    evaluate(params, out, None)
    return time.perf_counter() - t0


def without_extras(params: Params) -> Params:
    cfg = params.evaluate
    datasets = [d for d in cfg.datasets if d.task != "segmentation"]
    return params.model_copy(update={"evaluate": cfg.model_copy(update={"zero_shot": None, "datasets": datasets})})


def compare(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    params = args.loaded if getattr(args, "loaded", None) else load_params(args.params, [])
    if params.evaluate.zero_shot is None and all(d.task != "segmentation" for d in params.evaluate.datasets):
        raise SystemExit(f"{args.params}: declares neither evaluate.zero_shot nor a task: segmentation dataset")
    with tempfile.TemporaryDirectory() as tmp:
        base = timed_evaluate(without_extras(params), Path(tmp) / "base")
        full = timed_evaluate(params, Path(tmp) / "full")
    print(f"evaluate --teachers: {full:.1f} s with zero-shot + segmentation, {base:.1f} s without")
    print(f"zero-shot + segmentation add {100 * max(full - base, 0) / full:.1f}% of evaluate's time")
    print(f"ratio full / without: {full / base:.2f}x")


def smoke(args: argparse.Namespace, tmp: Path) -> None:
    """A tiny full Siglip2Model (text tower + BPE tokenizer), a two-class folder set and a VOC-layout set."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Siglip2Config, Siglip2Model

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.train_from_iterator(["a", "b", "a photo of a a", "a photo of a b"], trainers.BpeTrainer(
        vocab_size=40, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))  # fmt: skip
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    cfg = Siglip2Config(
        text_config={**small, "vocab_size": len(fast), "max_position_embeddings": 64},
        vision_config={**small, "patch_size": 16, "num_patches": 16},
    )
    Siglip2Model(cfg).save_pretrained(tmp / "sig")
    fast.save_pretrained(tmp / "sig")
    pool = sample_pool(tmp / "pool", n=24)
    voc = tmp / "voc"
    for d in ("JPEGImages", "SegmentationClass"):
        (voc / d).mkdir(parents=True)
    for i, f in enumerate(sorted(pool.rglob("*.png"))[:12]):
        im = Image.open(f).convert("RGB").resize((64, 64))
        im.save(voc / "JPEGImages" / f"{i}.png")
        mask = (np.asarray(im.convert("L")) > 128).astype(np.uint8)  # bright vs dark: a real, learnable split
        Image.fromarray(mask, mode="L").save(voc / "SegmentationClass" / f"{i}.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(map(str, range(8))))
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(map(str, range(8, 12))))
    args.loaded = Params.model_validate(
        {
            "teachers": [{"name": "sig", "kind": "siglip2", "path": str(tmp / "sig")}],
            "evaluate": {
                "datasets": [
                    {"name": "pool", "train": f"folder:{pool}", "test": f"folder:{pool}"},
                    {"name": "voc", "train": f"voc:{voc}", "test": f"voc:{voc}", "task": "segmentation"},
                ],
                "resolutions": [64],
                "main_resolution": 64,
                "ks": [5],
                "probe_epochs": 2,
                "seg_epochs": 2,
                "pca_images": 2,
                "zero_shot": {"teacher": "sig", "templates": ["a photo of a {}."]},
            },
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    parse_and_compare(ap, compare, smoke, "a tiny full Siglip2Model, scikit-image crops as classes and VOC masks")


if __name__ == "__main__":
    main()

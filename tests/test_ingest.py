"""Ingest on real demo-pool images plus generated bad files and duplicates."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from conftest import REPO, small_params
from PIL import Image
from test_decode import bad_files

from amoe_core.cli import main
from amoe_core.data.ingest import run
from amoe_core.data.shards import iter_images, read_manifest, reading_order, shard_path, tar_end, tar_sample


@pytest.fixture(scope="module")
def messy(tmp_path_factory, demo_pool_small):
    """Real tux-paint stamps and clip-art, one photo at several sizes/qualities, exact copies and every bad kind."""
    root = tmp_path_factory.mktemp("messy") / "crawl"
    for src in ("tuxpaint", "openclipart"):
        shutil.copytree(demo_pool_small / "pool" / src, root / src)
    photo = Image.open(sorted((demo_pool_small / "pool" / "tuxpaint").rglob("*.png"))[0]).convert("RGB")
    photo = photo.resize((400, round(400 * photo.height / photo.width)))
    dup = root / "dups" / "same"
    dup.mkdir(parents=True)
    photo.save(dup / "full.png")
    photo.resize((200, photo.height // 2)).save(dup / "half.jpg", quality=70)
    photo.resize((120, round(photo.height * 0.3))).save(dup / "small.webp", quality=60)
    shutil.copy(dup / "full.png", dup / "copy_of_full.png")
    bad = root / "bad" / "junk"
    bad.mkdir(parents=True)
    for reason, (data, name) in bad_files().items():
        (bad / f"{reason}_{name}").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def messy_out(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "shards"
    params = small_params(ingest={"max_pixels": 1_000_000, "shard_size": 40, "chunk_size": 16})
    report = run(params, sources=[f"folder:{messy}"], out=out)
    return out, report


def test_bad_files_counted_per_reason(messy, messy_out):
    out, report = messy_out
    disk = json.loads((out / "ingest_report.json").read_text())
    assert disk["skipped"] == report["skipped"]
    for reason, (_, name) in bad_files().items():
        assert report["skipped"][reason] >= 1, reason
        paths = [f["path"] for f in report["skipped_files"][reason]]
        assert str(messy / "bad" / "junk" / f"{reason}_{name}") in paths
    n_files = sum(1 for p in messy.rglob("*") if p.is_file())
    assert report["files"] == n_files
    assert report["kept"] + report["skipped_total"] + report["duplicates"]["removed"] == n_files


def test_one_photo_at_several_sizes_collapses_to_largest(messy, messy_out):
    out, report = messy_out
    man = read_manifest(out)
    same = man[man["label"] == "same"]
    full, copy = (str(messy / "dups" / "same" / n) for n in ("full.png", "copy_of_full.png"))
    assert len(same) == 1 and same["path"].iloc[0] in (full, copy)  # identical bytes: the first in order stays
    kept = same["path"].iloc[0]
    groups = report["duplicates"]["groups"]
    exact = [g for g in groups if g["kind"] == "exact" and g["kept_path"] == kept]
    assert [d["path"] for d in exact[0]["dropped"]] == [full if kept == copy else copy]
    near = [g for g in groups if g["kind"] == "near" and g["kept_path"] == kept][0]
    assert sorted(d["path"].rsplit("/", 1)[1] for d in near["dropped"]) == ["half.jpg", "small.webp"]
    assert all(d["distance"] <= 4 for d in near["dropped"])


def test_manifest_matches_shard_contents(shards_small):
    man = read_manifest(shards_small)
    assert man["key"].is_unique and len(man) > 100
    seen = []
    for row, data in iter_images(shards_small, man, reading_order(man), 0):
        img = Image.open(io.BytesIO(data))
        assert row == len(seen) and img.size == (man["width"].iat[row], man["height"].iat[row])
        seen.append(row)
    assert seen == list(range(len(man)))
    # The contract: plain webdataset reads the same samples back, with json metadata that agrees with the manifest.
    urls = [str(shard_path(shards_small, s)) for s in man["shard"].unique()]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == list(man["key"])
    for s, (_, row) in zip(samples, man.iterrows()):
        img, meta = s.get("jpg") or s.get("png"), s["json"]
        assert (img.width, img.height) == (row["width"], row["height"]) == (meta["width"], meta["height"])
        assert meta["source"] == row["source"] and meta["label"] == row["label"]
    assert set(man["source"]) == {"fashion_mnist", "openclipart", "tuxpaint"}
    assert man["label"].notna().all() and (man[["width", "height"]].max(axis=1) <= 512).all()
    # sha256 is the content hash of the source file.
    row = man[man["source"] == "tuxpaint"].iloc[0]
    assert row["sha256"] == hashlib.sha256(open(row["path"], "rb").read()).hexdigest()


def test_rerun_same_manifest_and_rebuilds_deleted_shard(demo_pool_small, tmp_path):
    src = [f"folder:{demo_pool_small / 'pool' / 'tuxpaint'}"]
    params = small_params(ingest={"shard_size": 30, "keep_staging": True})
    out = tmp_path / "s"
    run(params, sources=src, out=out)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.tar")}
    man = pd.read_parquet(out / "manifest.parquet")
    assert len(digests) >= 2
    victim = sorted(digests)[1]
    (out / victim).unlink()
    report = run(params, sources=src, out=out)
    assert report["shards_written_this_run"] == [victim] and report["decoded_this_run"] == 0
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.tar")} == digests
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), man)


def test_resume_after_kill(demo_pool_small, tmp_path):
    src = f"folder:{demo_pool_small / 'pool'}"
    args = ["data", "ingest", "-q", "--source", src, "-S", "ingest.chunk_size=8", "-S", "ingest.workers=1"]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    code = f"import sys; from amoe_core.cli import main; sys.exit(main({[*args, '--out', str(killed)]!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    staging = killed / ".staging"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(staging.glob("chunk-*.parquet"))) < 3:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    staged = sorted(staging.glob("chunk-*.parquet"))
    assert staged and not (killed / "manifest.parquet").exists()
    assert main([*args, "--out", str(killed)]) == 0
    report = json.loads((killed / "ingest_report.json").read_text())
    assert report["decoded_this_run"] < report["files"]  # staged chunks were not decoded again
    assert main([*args, "--out", str(ref)]) == 0
    a, b = pd.read_parquet(killed / "manifest.parquet"), pd.read_parquet(ref / "manifest.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert not list(killed.glob(".shard-*"))


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["-S", "ingest.max_side=8"], "ingest.max_side"),
        (["-S", "ingest.min_side=600"], "min_side"),
        (["-S", "ingest.nope=1"], "unknown key ingest.nope"),
        (["--source", "folder:/does/not/exist"], "/does/not/exist"),
        (["--source", "http://x"], "folder:PATH or shards:PATH"),
    ],
)
def test_config_errors_exit_2(argv, needle, capsys, tmp_path):
    assert main(["data", "ingest", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_shards_source_roundtrip(shards_small, tmp_path):
    """Existing shards are a source too: re-ingesting a shard set keeps every image, source and label."""
    out = tmp_path / "again"
    run(small_params(), sources=[f"shards:{shards_small}"], out=out)
    a, b = read_manifest(shards_small), read_manifest(out)
    assert len(a) == len(b)
    assert sorted(zip(a["source"], a["label"])) == sorted(zip(b["source"], b["label"]))

    # PNG in, PNG out: the very same pixels come back (compared as a multiset, keys differ between the sets).
    def pixels(d):
        man = read_manifest(d)
        images = (Image.open(io.BytesIO(data)).convert("RGB") for _, data in iter_images(d, man, reading_order(man), 0))
        return sorted(hashlib.md5(np.asarray(im).tobytes()).hexdigest() for im in images)

    assert pixels(shards_small) == pixels(out)


def test_workers_and_chunking_do_not_change_output(demo_pool_small, shards_small, tmp_path):
    """Byte-identical shards and the same manifest whatever the pool size, chunking and completion order."""
    out = tmp_path / "one_worker"
    run(small_params(ingest={"workers": 1, "chunk_size": 7}), sources=[f"folder:{demo_pool_small / 'pool'}"], out=out)
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.glob("shard-*.tar")}  # noqa: E731
    assert digest(out) == digest(shards_small) and len(digest(out)) >= 2
    pd.testing.assert_frame_equal(read_manifest(out), read_manifest(shards_small))


def test_staged_tar_records_equal_webdataset_writer():
    """Shards are assembled from records the workers build; they must be what wds.TarWriter writes, byte for byte."""
    samples = [
        {"__key__": f"src_{i:016x}", ext: bytes([i]) * (100 * i + 1), "json": json.dumps({"i": i}).encode()}
        for i, ext in enumerate(["png", "jpg", "png", "png"])
    ]
    samples.append({"__key__": "a_very_long_source_name_" * 5, "png": b"x", "json": b"{}"})  # > 100 bytes: PAX header
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0) as w:
        for s in samples:
            w.write(s)
    records = b"".join(tar_sample(s["__key__"], {k: v for k, v in s.items() if k != "__key__"}) for s in samples)
    assert records + tar_end(len(records)) == buf.getvalue()


def test_damaged_staged_chunks_are_decoded_again(demo_pool_small, tmp_path):
    """Staging is a cache: a truncated .bin or an unreadable chunk parquet is re-staged, never copied into a shard."""
    src = [f"folder:{demo_pool_small / 'pool' / 'tuxpaint'}"]
    params = small_params(ingest={"shard_size": 30, "chunk_size": 10, "keep_staging": True})
    out = tmp_path / "s"
    first = run(params, sources=src, out=out)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.tar")}
    staging = out / ".staging"
    bins = sorted(staging.glob("chunk-*.bin"))
    bins[0].write_bytes(bins[0].read_bytes()[:-100])
    sorted(staging.glob("chunk-*.parquet"))[1].write_bytes(b"not parquet")
    for p in out.glob("shard-*.tar"):
        p.unlink()
    report = run(params, sources=src, out=out)
    assert report["decoded_this_run"] == 20 < first["files"]  # the two damaged chunks of 10 files, no more
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.tar")} == digests

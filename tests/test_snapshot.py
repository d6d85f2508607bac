"""Snapshot: WebDataset shards from a validated manifest; resume, dedup, reader, ledger stop."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data.helpers import gx_copy, small_demo
from PIL import Image, ImageDraw

from r2d2.cli import main
from r2d2.data import shards as shards_mod
from r2d2.data import snapshot as snapshot_mod
from r2d2.data.ingest import IngestConfig, ingest
from r2d2.data.shards import iter_snapshot_samples, process_image, snapshot_summary, thumbnail_size
from r2d2.data.snapshot import snapshot, snapshot_config
from r2d2.data.validation import ImageRulesConfig, validate_config
from r2d2.errors import UserError


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo corpus -> `r2d2 ingest` -> `r2d2 validate` -> `r2d2 snapshot`, all through the CLI."""
    tmp = tmp_path_factory.mktemp("snap")
    demo = small_demo(tmp / "demo", train_images=40)
    gx_copy(tmp / "great_expectations")
    (tmp / "params.yaml").write_text(
        "snapshot:\n  shard_rows: 50\n  max_side: 16\nvalidate:\n  data_docs: false\n  gx_root: " + str(tmp / "great_expectations") + "\n",
        encoding="utf-8",
    )
    p = ["--params", str(tmp / "params.yaml"), "--no-progress"]
    assert main(["ingest", "--source", "zero", str(demo / "zero"), "--out", str(tmp / "ing"), *p]) == 0
    assert main(["validate", str(tmp / "ing"), "--out", str(tmp / "val"), *p]) == 0
    assert main(["snapshot", str(tmp / "val"), "--out", str(tmp / "snap"), *p]) == 0
    return tmp


def test_cli_pipeline_counts(work: Path) -> None:
    s = snapshot_summary(work / "snap")
    assert s["status"] == "passed" and s["rows"] == 160 and s["unique_images"] == 40
    assert s["reconciliation"]["balanced"] and s["reconciliation"]["ingested_rows"] == 160
    assert len(s["shards"]) == 4  # 50 rows per shard, a record's 4 rows never split
    assert s["gx"]["success"] and s["images_per_s"] > 0


def test_reader_yields_resized_pairs(work: Path) -> None:
    samples = list(iter_snapshot_samples(work / "snap"))
    assert len(samples) == 40
    for s in samples:
        assert Image.open(io.BytesIO(s["image_bytes"])).size == (16, 16)
        assert len(s["texts"]) == len(s["sample_ids"]) == 4
        assert sorted(s["text_kinds"]) == ["content", "keywords", "query", "title"]
    ids = [i for s in samples for i in s["sample_ids"]]
    assert len(set(ids)) == 160


def test_shards_are_webdataset_tars(work: Path) -> None:
    tar = sorted((work / "snap" / "shards").glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        names = t.getnames()
        assert all(m.mtime == 0 for m in t.getmembers())
    keys = [n.split(".")[0] for n in names]
    assert names[0].endswith(".json") and names[1].endswith(".png") and keys[0] == keys[1]
    rows = pq.read_table(tar.with_suffix(".parquet")).to_pandas()
    assert set(rows["key"]) == set(keys) and (rows["width"] == 16).all()


def test_resume_skips_finished_shards(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = snapshot_summary(work / "snap")
    calls: list[str] = []
    real = snapshot_mod.Fetcher.fetch

    def counting(self, source: str, ref: str):  # noqa: ANN001, ANN202
        calls.append(ref)
        return real(self, source, ref)

    monkeypatch.setattr(snapshot_mod.Fetcher, "fetch", counting)
    # other thread counts than the first run's: how fast, not what, so finished shards still count
    cfg = snapshot_config({"shard_rows": 50, "max_side": 16, "progress": False, "image_workers": 1, "download": {"concurrency": 3}})
    vcfg = validate_config({"gx_mode": "off", "progress": False})
    again = snapshot(work / "val", work / "snap", cfg, vcfg)
    assert calls == [] and again["snapshot_hash"] == before["snapshot_hash"]
    second = before["shards"][1]["shard"]
    (work / "snap" / "shards" / f"{second}.json").unlink()  # as if the run died while writing it
    (work / "snap" / "shards" / f"{second}.tar").unlink()
    redone = snapshot(work / "val", work / "snap", cfg, vcfg)
    assert len(calls) == before["shards"][1]["fetched_images"]
    assert redone["snapshot_hash"] == before["snapshot_hash"]  # byte-identical shard rewritten


def test_changed_settings_start_over(work: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(work / "snap", tmp_path / "snap")
    s = snapshot(work / "val", tmp_path / "snap", snapshot_config({"shard_rows": 50, "max_side": 8, "progress": False}),
                 validate_config({"gx_mode": "off", "progress": False, "images": {"min_side": 4}}))
    sample = next(iter_snapshot_samples(tmp_path / "snap"))
    assert Image.open(io.BytesIO(sample["image_bytes"])).size == (8, 8) and s["rows"] == 160


def test_cross_shard_duplicates_read_once(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(img)
    (tmp_path / "b.png").write_bytes(img.read_bytes())
    (tmp_path / "c.png").write_bytes(img.read_bytes())
    f1, f2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    f1.write_text('{"image": "a.png", "text": "红色方块"}\n{"image": "b.png", "text": "红色的方块"}\n', encoding="utf-8")
    f2.write_text('{"image": "c.png", "text": "一个红色正方形"}\n', encoding="utf-8")
    ingest([f1, f2], "manifest", tmp_path / "ing", IngestConfig(progress=False))
    s = snapshot(tmp_path / "ing", tmp_path / "snap", snapshot_config({"progress": False}), validate_config({"gx_mode": "off"}))
    assert s["images"] == 2 and s["unique_images"] == 1 and s["cross_shard_duplicate_images"] == 1
    assert "only the snapshot's own balance" in s["reconciliation"]["note"]
    (sample,) = list(iter_snapshot_samples(tmp_path / "snap"))
    assert sorted(sample["texts"]) == sorted(["红色方块", "红色的方块", "一个红色正方形"])


def test_too_many_fetch_failures_stop(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text('{"image": "missing1.png", "text": "不存在"}\n{"image": "missing2.png", "text": "也不存在"}\n', encoding="utf-8")
    ingest([f], "manifest", tmp_path / "ing", IngestConfig(progress=False))
    with pytest.raises(UserError, match=r"100.0% of rows could not be fetched .*missing_file"):
        snapshot(tmp_path / "ing", tmp_path / "snap", snapshot_config({"progress": False}), validate_config({"gx_mode": "off"}))
    ledger = pq.read_table(next((tmp_path / "snap" / "ledger").glob("*.parquet"))).to_pandas()
    assert ledger["error_kind"].tolist() == ["missing_file", "missing_file"] and (ledger["attempts"] == 1).all()


def test_process_image_guards_and_resizes() -> None:
    rules = ImageRulesConfig(max_pixels=1_000_000)

    def enc(img: Image.Image, fmt: str = "PNG") -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()

    out = process_image(enc(Image.new("RGB", (120, 60), (1, 2, 3))), rules, max_side=30, fmt="jpg")
    assert out.rules == [] and (out.width, out.height) == (30, 15) and out.data[:2] == b"\xff\xd8"
    assert (out.orig_width, out.orig_height) == (120, 60)
    bomb = process_image(enc(Image.new("L", (2000, 2000))), rules, max_side=30)
    assert bomb.rules == ["max_pixels"] and bomb.data is None
    pal = process_image(enc(Image.new("P", (40, 40))), rules, max_side=64)
    assert pal.rules == [] and Image.open(io.BytesIO(pal.data)).mode == "RGB"
    assert process_image(b"", rules, 64).rules == ["decodable"]


def _photo(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradients plus a few shapes: resizing error shows up, unlike on a flat image."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    ImageDraw.Draw(img).ellipse([w // 5, h // 4, w // 2, h // 2], fill=(250, 20, 30))
    return img.convert(mode)


@pytest.mark.parametrize(("w", "h", "mode", "side"), [
    (400, 300, "RGB", 224), (300, 520, "RGB", 224), (512, 512, "L", 64), (990, 333, "RGB", 64), (230, 100, "RGB", 224),
    (100, 80, "RGB", 224), (640, 480, "CMYK", 224),
])
def test_jpeg_fast_path_agrees_with_pillow(w: int, h: int, mode: str, side: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEGs decoded by libjpeg-turbo at an M/8 scale end at Pillow's size with nearly Pillow's pixels."""

    def jpeg(seed: int) -> bytes:
        buf = io.BytesIO()
        _photo(w, h, mode, seed).save(buf, format="JPEG", quality=92)
        return buf.getvalue()

    def pixels(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)

    out = process_image(jpeg(0), ImageRulesConfig(), max_side=side, fmt="jpg")
    assert out.rules == [] and (out.width, out.height) == thumbnail_size(w, h, side)
    monkeypatch.setattr(shards_mod, "_decode_jpeg_scaled", lambda *args: None)  # Pillow's path only
    ref = process_image(jpeg(0), ImageRulesConfig(), max_side=side, fmt="jpg")
    other = process_image(jpeg(1), ImageRulesConfig(), max_side=side, fmt="jpg")
    crop = (slice(0, min(out.height, ref.height)), slice(0, min(out.width, ref.width)))  # Pillow's path may round 1 px off
    diff = np.abs(pixels(out.data)[crop] - pixels(ref.data)[crop]).mean()
    assert diff < 6.0, diff  # of 255: scaling and re-encoding noise (small outputs show the most)
    assert np.abs(pixels(other.data)[crop] - pixels(ref.data)[crop]).mean() > 4 * diff  # a different picture is far off


@pytest.mark.parametrize(("w", "h", "rule"), [(8, 8, "min_side"), (300, 20, "aspect_ratio"), (1200, 1000, "max_pixels"), (20, 30, None)])
def test_jpeg_header_rules_match_pillows(w: int, h: int, rule: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path reads JPEG headers itself; it must reject exactly what the Pillow path rejects."""
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (9, 99, 199)).save(buf, format="JPEG")
    rules = ImageRulesConfig(min_side=16, max_pixels=1_000_000)
    fast = process_image(buf.getvalue(), rules, max_side=64, fmt="jpg")
    monkeypatch.setattr(shards_mod, "_decode_jpeg_scaled", lambda *args: None)
    ref = process_image(buf.getvalue(), rules, max_side=64, fmt="jpg")
    assert fast.rules == ref.rules == ([rule] if rule else [])
    assert (fast.detail, fast.orig_width, fast.orig_height, fast.data is None) == (ref.detail, ref.orig_width, ref.orig_height, ref.data is None)


def test_jpeg_fast_path_leaves_corrupt_bodies_to_pillow() -> None:
    buf = io.BytesIO()
    _photo(300, 200).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    truncated = process_image(data[: len(data) // 2], ImageRulesConfig(), max_side=64, fmt="jpg")
    assert truncated.rules == ["decodable"] and not truncated.decodable and truncated.data is None
    progressive = io.BytesIO()
    _photo(300, 200).save(progressive, format="JPEG", quality=90, progressive=True)
    assert process_image(progressive.getvalue(), ImageRulesConfig(), max_side=64, fmt="jpg").rules == []


@pytest.mark.parametrize("variant", ["RGB", "RGBA", "L", "LA", "P", "P-transparency", "L-transparency", "1", "I;16", "truncated"])
def test_png_fast_path_is_pillows_pixels(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PNGs decoded by libpng give exactly Pillow's pixels (lossless both ways), or fall back to Pillow."""
    base = _photo(90, 70)
    img = {"P-transparency": base.convert("P"), "L-transparency": base.convert("L"), "truncated": base}.get(variant)
    if variant == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    buf = io.BytesIO()
    (img or base.convert(variant)).save(buf, format="PNG", **({"transparency": 3} if "transparency" in variant else {}))
    data = buf.getvalue()[: len(buf.getvalue()) // 2] if variant == "truncated" else buf.getvalue()
    assert Image.open(io.BytesIO(data)).mode == (variant.split("-")[0] if variant != "truncated" else "RGB")
    assert (shards_mod._decode_png(data) is None) == (variant in ("I;16", "truncated"))  # which path runs
    fast = process_image(data, ImageRulesConfig(min_side=16), max_side=64, fmt="png")
    monkeypatch.setattr(shards_mod, "_decode_png", lambda data: None)
    ref = process_image(data, ImageRulesConfig(min_side=16), max_side=64, fmt="png")
    assert (fast.rules, fast.width, fast.height) == (ref.rules, ref.width, ref.height)
    if variant == "truncated":
        assert fast.rules == ["decodable"] and fast.data is None
    else:
        assert fast.rules == [] and (fast.width, fast.height) == (64, 50)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(fast.data))), np.asarray(Image.open(io.BytesIO(ref.data))))


def test_thumbnail_size_is_pillows() -> None:
    rng = np.random.default_rng(0)
    for w, h, side in zip(rng.integers(1, 2000, 500), rng.integers(1, 2000, 500), rng.choice([16, 64, 224, 333], 500), strict=True):
        img = Image.new("L", (int(w), int(h)))
        img.thumbnail((int(side), int(side)))
        assert thumbnail_size(int(w), int(h), int(side)) == img.size, (w, h, side)


def test_summary_missing_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `r2d2 snapshot"):
        snapshot_summary(tmp_path)

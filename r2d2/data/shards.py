"""Images into WebDataset tar shards, and the reader the trainer uses to get them back.

A shard holds one sample per unique image: `<key>.png|jpg` (decoded, resized, re-encoded) and
`<key>.json` (its texts, text kinds, sample ids, image refs). The key is the image's content
hash, so the same picture behind two URLs is stored once with the texts of both. Tars are
written with a fixed mtime and owner, so the same input gives byte-identical shards (stable
DVC hashes, and the scaled-out run can be compared with the single-process one).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import simplejpeg
from PIL import Image, UnidentifiedImageError

from r2d2.data.manifest import read_json
from r2d2.data.validation import ImageRulesConfig, image_rule_failures
from r2d2.errors import UserError

KEY_CHARS = 32  # hex chars of sha256 used as the WebDataset key (128 bits)


@dataclass
class ProcessedImage:
    """Outcome of decoding one fetched image: encoded output bytes, or the image rules it broke."""

    content_hash: str
    n_bytes: int
    data: bytes | None = None
    width: int = 0
    height: int = 0
    orig_width: int = 0
    orig_height: int = 0
    decodable: bool = True
    rules: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def key(self) -> str:
        return self.content_hash[:KEY_CHARS]


def process_image(data: bytes, rules: ImageRulesConfig, max_side: int, fmt: str = "png", jpeg_quality: int = 90) -> ProcessedImage:
    """Decode with a decompression-bomb guard, apply the image rules, resize and re-encode.

    The pixel count is read from the header before any pixel is decoded, so a 30 kB PNG that
    expands to 10 GB is rejected (`max_pixels`) without allocating it.
    """
    out = ProcessedImage(content_hash=hashlib.sha256(data).hexdigest(), n_bytes=len(data))
    if not data:
        out.decodable, out.rules, out.detail = False, ["decodable"], "empty file (0 bytes)"
        return out
    rgb = _decode_jpeg_scaled(data, rules, max_side, out) if data[:2] == b"\xff\xd8" else None
    if out.rules:
        return out
    if rgb is not None:  # the size from the original dimensions, as the Pillow path's thumbnail gives it
        size = thumbnail_size(out.orig_width, out.orig_height, max_side)
        if rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BOX)
    else:
        rgb = _decode_pillow(data, rules, max_side, out)
        if rgb is None:
            return out
        if max(rgb.size) > max_side:
            # Box filter (area average, img2dataset's default): ~3x cheaper than bicubic when shrinking.
            rgb.thumbnail((max_side, max_side), Image.Resampling.BOX)
    if fmt == "png":
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", compress_level=6)
        out.data = buf.getvalue()
    else:  # libjpeg-turbo as Pillow's encoder is, minus Pillow's Python-side encoder setup; 4:2:0 like Pillow
        out.data = simplejpeg.encode_jpeg(np.asarray(rgb), quality=jpeg_quality, colorspace="RGB", colorsubsampling="420")
    out.width, out.height = rgb.size
    return out


def _header_rules(width: int, height: int, rules: ImageRulesConfig, out: ProcessedImage) -> bool:
    """Record the header's size and the rules it breaks; True when the image is rejected.

    Checked before decoding: a rejected image costs no pixels.
    """
    out.orig_width, out.orig_height = width, height
    if width * height > rules.max_pixels:
        out.rules = ["max_pixels"]
        out.detail = f"{width}x{height} pixels > max {rules.max_pixels} (decompression-bomb guard)"
    else:
        out.rules = image_rule_failures(width, height, rules)
        out.detail = f"{width}x{height}: breaks {', '.join(out.rules)}" if out.rules else ""
    return bool(out.rules)


def _decode_pillow(data: bytes, rules: ImageRulesConfig, max_side: int, out: ProcessedImage) -> Image.Image | None:
    """Any format Pillow reads, as RGB; None with `out` saying why (rule broken or undecodable)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if _header_rules(im.width, im.height, rules, out):
                return None
            if im.format == "PNG" and im.mode in _PNG_FAST_MODES and (rgb := _decode_png(data)) is not None:
                return rgb
            if im.format == "JPEG" and max(im.size) > max_side:
                im.draft("RGB", (max_side, max_side))  # libjpeg shrinks by 1/2..1/8 while decoding
            im.load()  # truncated or corrupt bodies fail here
            if im.mode == "RGB":
                return im.copy()
            if im.mode in ("P", "LA", "PA"):
                return im.convert("RGBA").convert("RGB")
            return im.convert("RGB")
    except Image.DecompressionBombError as err:
        out.rules, out.detail = ["max_pixels"], str(err)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        out.decodable, out.rules, out.detail = False, ["decodable"], f"{type(err).__name__}: {err}"
    return None


def thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size `Image.thumbnail((max_side, max_side))` gives a width x height image (never larger).

    Pillow keeps no public helper for it; this follows its rule (the rounding of the shorter
    side that keeps the aspect ratio closest) so the DCT-scaled path lands on the same size.
    """
    if width <= max_side and height <= max_side:
        return width, height
    aspect = width / height
    if aspect <= 1:  # portrait or square: the height becomes max_side
        w = max(min(math.floor(max_side * aspect), math.ceil(max_side * aspect), key=lambda n: abs(aspect - n / max_side)), 1)
        return w, max_side
    h = max(min(math.floor(max_side / aspect), math.ceil(max_side / aspect), key=lambda n: 0 if n == 0 else abs(aspect - max_side / n)), 1)
    return max_side, h


def _decode_jpeg_scaled(data: bytes, rules: ImageRulesConfig, max_side: int, out: ProcessedImage) -> Image.Image | None:
    """Decode a YCbCr/RGB/grey JPEG straight to about the target size, or None to let Pillow try.

    libjpeg-turbo can scale by any M/8 inside the inverse DCT; Pillow's `draft` only uses 1/2,
    1/4 and 1/8, so a 400 px photo going to 224 px is decoded at full size there and at 5/8
    here (less IDCT work and a smaller image left to resample). The scale chosen keeps the
    longer side >= `max_side`, so the box-filter resize that follows only ever shrinks. The
    header is read here too (a few us, where opening the image in Pillow costs ~30), and a
    rule it breaks is recorded in `out`. Strict mode raises on any libjpeg warning: such a
    body falls back to Pillow, which stays the one judge of "decodable", exactly as before
    this fast path existed.
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    if colorspace not in ("YCbCr", "RGB", "Gray") or _header_rules(width, height, rules, out):
        return None  # CMYK/YCCK: Pillow converts them
    side = min(max_side, max(height, width))
    try:
        if width >= height:
            arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=side, strict=True)
        else:
            arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=side, strict=True)
    except (ValueError, RuntimeError):
        return None
    return Image.fromarray(arr)


# 8-bit-or-less PNG modes whose libpng decode, reduced to RGB, is pixel-identical to Pillow's
# convert("RGB") (tests/test_snapshot.py checks each); 16-bit PNGs stay with Pillow.
_PNG_FAST_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "1"})


def _decode_png(data: bytes) -> Image.Image | None:
    """Decode a PNG with libpng (imagecodecs) as RGB, dropping alpha as Pillow's path does; None: let Pillow try.

    Pillow's PNG decoder took ~5-7 ms for a 400 px photo here, libpng through imagecodecs ~2.2 ms,
    and imagecodecs releases the GIL while it decodes (pyspng, as fast, holds it, so two decode
    threads of one process would take turns). Any error falls back to Pillow, the judge of
    "decodable".
    """
    import imagecodecs  # ~0.3 s, paid by the processes that decode PNGs only

    try:
        arr = imagecodecs.png_decode(data)
    except (RuntimeError, ValueError):  # imagecodecs.PngError is a RuntimeError
        return None
    if arr.dtype != np.uint8:
        return None
    if arr.ndim == 2 or arr.shape[2] == 2:  # grey, grey + alpha
        return Image.fromarray(np.ascontiguousarray(arr if arr.ndim == 2 else arr[..., 0])).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]))


def write_tar(path: str | Path, samples: list[dict[str, Any]], ext: str) -> Path:
    """Write samples (`key`, `image` bytes, `meta` dict) as a reproducible WebDataset tar.

    Plain `tarfile` in WebDataset's layout (`<key>.<ext>` members, sorted per sample, USTAR,
    as `webdataset.TarWriter` writes them): importing webdataset pulls in torch (~10 s), which
    the data stages do not otherwise need. Any WebDataset reader reads these shards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            meta = json.dumps(s["meta"], ensure_ascii=False, sort_keys=True).encode("utf-8")
            for suffix, data in sorted({ext: s["image"], "json": meta}.items()):
                info = tarfile.TarInfo(f"{s['key']}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uname = info.gname = "r2d2"
                tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)
    return path


def iter_tar_samples(path: str | Path) -> Iterator[dict[str, Any]]:
    """(key, image bytes, meta) per sample of one shard, streaming."""
    current: dict[str, Any] = {}
    with tarfile.open(path, "r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["key"] != key:
                yield current
                current = {}
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            current.setdefault("key", key)
            if ext == "json":
                current["meta"] = json.loads(data)
            else:
                current["image"], current["ext"] = data, ext
    if current:
        yield current


def snapshot_summary(snapshot_dir: str | Path) -> dict[str, Any]:
    """The snapshot's `snapshot.json`: counts, reconciliation, shard list, hash, validation result."""
    path = Path(snapshot_dir) / "snapshot.json"
    if not path.exists():
        raise UserError(f"{snapshot_dir}: no snapshot.json; run `r2d2 snapshot MANIFEST_DIR --out {snapshot_dir}` first")
    return read_json(path)


def iter_snapshot_samples(snapshot_dir: str | Path, shards: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield one dict per unique image of a snapshot, in shard order.

    Keys: `image_bytes`, `image_key`, `texts`, `sample_ids`, `text_kinds`, `shard`. An image that
    also appears in a later shard (same content, other URL) is yielded once, with the texts of
    every copy (from duplicates.parquet, which holds only those extra rows).
    """
    snapshot_dir = Path(snapshot_dir)
    summary = snapshot_summary(snapshot_dir)
    names = shards if shards is not None else [s["shard"] for s in summary["shards"]]
    extra: dict[tuple[str, str], list[dict[str, Any]]] = {}
    skip: set[tuple[str, str]] = set()
    dup_path = snapshot_dir / "duplicates.parquet"
    if dup_path.exists():
        for row in pq.read_table(dup_path).to_pylist():
            extra.setdefault((row["canonical_shard"], row["key"]), []).append(row)
            skip.add((row["shard"], row["key"]))
    for name in names:
        for s in iter_tar_samples(snapshot_dir / "shards" / f"{name}.tar"):
            if (name, s["key"]) in skip:
                continue
            meta = s["meta"]
            texts, ids, kinds = list(meta["texts"]), list(meta["sample_ids"]), list(meta["text_kinds"])
            for row in extra.get((name, s["key"]), []):
                texts.append(row["text"])
                ids.append(row["sample_id"])
                kinds.append(row["text_kind"])
            yield {
                "image_bytes": s["image"], "image_key": s["key"], "texts": texts, "sample_ids": ids,
                "text_kinds": kinds, "shard": name,
            }

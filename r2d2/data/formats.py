"""Small readers and writers for the real distribution formats of DESIGN.md section 4.

The demo corpus is written in exactly these formats so that ingestion, fine-tuning and
evaluation code paths are the ones a real Zero / Wukong / Chinese-CLIP / ICM download
goes through; keeping the (de)serialisation here lets every module share one definition.
Only the standard library, Pillow and numpy are used: these run in every CI job.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ZERO_KEYS = ("Url", "Title", "Content", "Keywords", "ImageKey", "ImageUrl", "ImageQuery")
WUKONG_HEADER = ("url", "caption")
CNCLIP_TEXT_KEYS = ("text_id", "text", "image_ids")
ICM_KEYS = ("text", "image_path", "label")


def decode_image(data: bytes, size: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array (H, W, 3), resized to size x size if given.

    Real corpora mix palettes, greyscale and alpha; converting to RGB here means callers never
    branch on the image mode.
    """
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8).copy()


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes without metadata, so identical pixels give identical bytes (hashable, DVC-stable)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --- JSON Lines -------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """One JSON object per line, UTF-8, Chinese kept readable (ensure_ascii=False)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file, skipping blank lines; a bad line names its file and line number."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {err}") from None
    return rows


# --- Chinese-CLIP style: {split}_imgs.tsv + {split}_texts.jsonl -----------------------------------


def _parse_id(raw: str) -> Any:
    raw = raw.strip()
    return int(raw) if raw.lstrip("-").isdigit() else raw


def write_cnclip_split(
    out_dir: Path,
    split: str,
    images: Iterable[tuple[int, bytes]] | Mapping[int, bytes],
    texts: Iterable[Mapping[str, Any]],
) -> tuple[Path, Path]:
    """Write `{split}_imgs.tsv` (`id<TAB>urlsafe-base64`) and `{split}_texts.jsonl` as Chinese-CLIP does."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = images.items() if isinstance(images, Mapping) else images
    tsv = out_dir / f"{split}_imgs.tsv"
    with tsv.open("w", encoding="ascii", newline="\n") as fh:
        for image_id, data in items:
            fh.write(f"{image_id}\t{base64.urlsafe_b64encode(data).decode('ascii')}\n")
    rows = []
    for t in texts:
        rows.append({"text_id": t["text_id"], "text": t["text"], "image_ids": list(t["image_ids"])})
    jsonl = write_jsonl(out_dir / f"{split}_texts.jsonl", rows)
    return tsv, jsonl


def read_cnclip_split(
    directory: Path, split: str, prefix: str = ""
) -> tuple[dict[int, bytes], list[dict[str, Any]]]:
    """Read `{prefix}{split}_imgs.tsv` and its texts; ids are ints as in Chinese-CLIP (a non-integer id stays a str).

    MUGE ships the same layout with `MR_` prefix and `{split}_queries.jsonl` holding
    `query_id`, `query_text`, `item_ids`; those are accepted and renamed to
    `text_id`, `text`, `image_ids` so callers handle one schema.
    """
    directory = Path(directory)
    tsv = directory / f"{prefix}{split}_imgs.tsv"
    images: dict[Any, bytes] = {}
    with tsv.open(encoding="ascii") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{tsv}:{lineno}: expected `id<TAB>base64`, got {len(parts)} fields")
            images[_parse_id(parts[0])] = base64.urlsafe_b64decode(parts[1])
    texts_path = directory / f"{prefix}{split}_texts.jsonl"
    if not texts_path.exists() and (directory / f"{prefix}{split}_queries.jsonl").exists():
        texts_path = directory / f"{prefix}{split}_queries.jsonl"
    texts = []
    for row in read_jsonl(texts_path):
        if "query_id" in row:
            row = {"text_id": row["query_id"], "text": row["query_text"], "image_ids": row.get("item_ids", [])}
        texts.append({"text_id": row["text_id"], "text": row["text"], "image_ids": list(row.get("image_ids", []))})
    return images, texts


# --- Zero (CCMB) JSON records ----------------------------------------------------------------


def write_zero_json(path: Path, records: Iterable[Mapping[str, Any]]) -> Path:
    """A JSON list of records with exactly the Zero keys (order kept as in the release)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [{k: r[k] for k in ZERO_KEYS} for r in records]
    path.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def read_zero_json(path: Path) -> list[dict[str, Any]]:
    """Read a Zero-style JSON list; a record missing a key is an error naming the record."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    for i, rec in enumerate(data):
        missing = [k for k in ZERO_KEYS if k not in rec]
        if missing:
            raise ValueError(f"{path}: record {i} lacks {', '.join(missing)}")
    return data


# --- Wukong CSV ------------------------------------------------------------------------------


def write_wukong_csv(path: Path, rows: Iterable[tuple[str, str]]) -> Path:
    """`wukong_100m_{i}.csv`: header `url,caption`, one row per (image, caption)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(WUKONG_HEADER)
        writer.writerows(rows)
    return path


def read_wukong_csv(path: Path) -> list[dict[str, str]]:
    """Rows as `{"url", "caption"}` dicts; a file without the Wukong header is rejected."""
    with Path(path).open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != WUKONG_HEADER:
            raise ValueError(f"{path}: expected header {','.join(WUKONG_HEADER)}, got {reader.fieldnames}")
        return [{"url": r["url"], "caption": r["caption"]} for r in reader]


# --- ICM / IQM matching JSONL ------------------------------------------------------------------


def write_icm_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """ICM/IQM style: `{"text", "image_path", "label"}` per line."""
    return write_jsonl(path, ({k: r[k] for k in ICM_KEYS} for r in rows))


def read_icm_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read ICM/IQM rows; labels are checked to be 0/1 since AUC is meaningless otherwise."""
    rows = read_jsonl(path)
    for i, row in enumerate(rows):
        missing = [k for k in ICM_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {', '.join(missing)}")
        if row["label"] not in (0, 1):
            raise ValueError(f"{path}: row {i} has label {row['label']!r}, expected 0 or 1")
    return rows

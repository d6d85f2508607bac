"""One adapter per corpus format of DESIGN.md section 4, all yielding manifest rows or rejects.

Each adapter is a generator `(path, ctx) -> Iterator[dict | Reject]`. It checks the first record
against its format and raises FormatError (naming the line) when the file is plainly something
else; any later bad record becomes a Reject with a rule, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from r2d2.data.adapters.common import (
    AdapterContext,
    FormatError,
    Reject,
    as_text,
    excerpt,
    iter_csv_rows,
    iter_json_records,
    make_row,
    resolve_image,
    short_hash,
)

Adapter = Callable[[Path, AdapterContext], Iterator["dict[str, Any] | Reject"]]

ZERO_TEXT_FIELDS = {"Title": "title", "Content": "content", "ImageQuery": "query", "Keywords": "keywords"}
ZERO_KEYS = {"Url", "Title", "Content", "Keywords", "ImageKey", "ImageUrl", "ImageQuery"}


def _json_excerpt(obj: Any) -> str:
    import json

    return excerpt(json.dumps(obj, ensure_ascii=False, default=str))


def _first_checked(records: Iterator[tuple[int, Any, Reject | None]], check: Callable[[int, Any], None],
                   normalize: Callable[[Any], Any] | None = None,
                   not_object: str = "record is not a JSON object") -> Iterator[tuple[int, Any, Reject | None]]:
    """Pass rejects through; run `check(line, rec)` on the file's first record if it parsed.

    The first record decides whether the file is this format at all, so a wholly wrong file fails
    fast with a FormatError instead of quarantining every row. A later record that is not an
    object (a stray number or list in the array) becomes a `not_object` reject.
    """
    first = True
    for line, rec, rej in records:
        if rej is None:
            if normalize is not None:
                rec = normalize(rec)
            if first:
                check(line, rec)
            if not isinstance(rec, dict):
                rej = Reject(line, ["not_object"], not_object, _json_excerpt(rec))
        first = False
        yield line, rec, rej


def _check_keys(line: int, rec: Any, wanted: set[str], need: int, fmt: str) -> None:
    if not isinstance(rec, dict):
        raise FormatError(line, f"expected {fmt} records (JSON objects), found a JSON {type(rec).__name__}")
    if len(wanted & set(rec)) < need:
        raise FormatError(
            line, f"the record has keys {sorted(rec)[:8]}, expected {fmt} keys {sorted(wanted)}: is this the right --source?"
        )


def zero(path: Path, ctx: AdapterContext) -> Iterator[dict[str, Any] | Reject]:
    """Zero (CCMB): one image per record, several texts (Title, Content, ImageQuery, Keywords)."""
    check = lambda line, rec: _check_keys(line, rec, ZERO_KEYS, 2, "Zero")  # noqa: E731
    for line, rec, rej in _first_checked(iter_json_records(path, ctx.max_record_bytes), check):
        if rej is not None:
            yield rej
            continue
        url = as_text(rec.get("ImageUrl"))
        if not url or not url.strip():
            yield Reject(line, ["missing_field"], "missing or empty field ImageUrl", _json_excerpt(rec))
            continue
        src, ref = resolve_image(url, path, ctx)
        key = as_text(rec.get("ImageKey")) or short_hash(url)
        n = 0
        for fld, kind in ZERO_TEXT_FIELDS.items():
            value = rec.get(fld)
            items = value if isinstance(value, list) and fld == "ImageQuery" else [value]
            if isinstance(value, list) and fld != "ImageQuery":
                items = [",".join(str(v) for v in value)]
            for j, item in enumerate(items):
                text = as_text(item)
                if text is None:
                    continue
                sid = f"zero:{key}:{kind}" + (f":{j}" if len(items) > 1 else "")
                n += 1
                yield make_row(ctx, path, line, sample_id=sid, image_key=key, image_source=src, image_ref=ref, text=text, text_kind=kind)
        if n == 0:
            yield Reject(line, ["missing_field"], "no text field (Title, Content, ImageQuery, Keywords)", _json_excerpt(rec), image_ref=ref)


def wukong(path: Path, ctx: AdapterContext) -> Iterator[dict[str, Any] | Reject]:
    """Wukong: `wukong_100m_{i}.csv` with a `url,caption` header, one row per (image, caption)."""
    header: list[str] | None = None
    for line, fields, rej in iter_csv_rows(path):
        if header is None:
            if rej is not None or fields is None:
                raise FormatError(line, f"cannot read the CSV header: {rej.reason if rej else 'empty'}")
            header = [f.strip().lower() for f in fields]
            if "url" not in header or "caption" not in header:
                raise FormatError(line, f"expected a Wukong CSV header `url,caption`, found {excerpt(','.join(fields))[:80]!r}")
            iu, ic = header.index("url"), header.index("caption")
            continue
        if rej is not None:
            yield rej
            continue
        assert fields is not None
        if len(fields) != len(header):
            yield Reject(line, ["malformed_csv"], f"expected {len(header)} fields, got {len(fields)}", excerpt(",".join(fields)))
            continue
        url, caption = fields[iu].strip(), fields[ic]
        if not url:
            yield Reject(line, ["missing_field"], "empty url", excerpt(",".join(fields)), text=caption)
            continue
        src, ref = resolve_image(url, path, ctx)
        yield make_row(
            ctx, path, line, sample_id=f"wukong:{short_hash(url, caption)}", image_key=short_hash(url),
            image_source=src, image_ref=ref, text=caption, text_kind="caption",
        )


def _keywords_like(text: str) -> bool:
    parts = [p for p in text.replace("，", ",").split(",") if p.strip()]
    return len(parts) >= 3 and all(len(p.strip()) <= 8 for p in parts)


def wudaomm(path: Path, ctx: AdapterContext) -> Iterator[dict[str, Any] | Reject]:
    """WuDaoMM: a JSON array per category of `name`, `tag`, `url`, `captions`.

    Later releases removed `url`; such a record can only be used when the image file `name`
    exists locally (next to the JSON or under --base-dir), otherwise it is quarantined as
    `missing_url` and counted.
    """
    check = lambda line, rec: _check_keys(line, rec, {"name", "tag", "url", "captions"}, 2, "WuDaoMM")  # noqa: E731
    for line, rec, rej in _first_checked(iter_json_records(path, ctx.max_record_bytes), check):
        if rej is not None:
            yield rej
            continue
        caps = rec.get("captions")
        captions = [as_text(c) for c in caps] if isinstance(caps, list) else [as_text(caps)]
        captions = [c for c in captions if c is not None]
        if not captions:
            yield Reject(line, ["missing_field"], "missing field captions", _json_excerpt(rec))
            continue
        url, name = as_text(rec.get("url")), as_text(rec.get("name"))
        if url and url.strip():
            src, ref = resolve_image(url, path, ctx)
        else:
            src, ref = resolve_image(name, path, ctx) if name else ("path", "")
            if not name or not Path(ref).is_file():
                yield Reject(
                    line, ["missing_url"], "record without `url` (removed in later WuDaoMM releases) and no local image `name`",
                    _json_excerpt(rec), text=captions[0],
                )
                continue
        for cap in captions:
            yield make_row(
                ctx, path, line, sample_id=f"wudaomm:{short_hash(ref, cap)}", image_key=short_hash(ref),
                image_source=src, image_ref=ref, text=cap, text_kind="keywords" if _keywords_like(cap) else "caption",
            )


def cnclip_images_tsv(texts_path: Path) -> Path:
    name = texts_path.name
    for suffix in ("_texts.jsonl", "_queries.jsonl"):
        if name.endswith(suffix):
            return texts_path.with_name(name[: -len(suffix)] + "_imgs.tsv")
    raise FormatError(0, "expected a Chinese-CLIP `{split}_texts.jsonl` (or MUGE `{split}_queries.jsonl`) file")


def cnclip(path: Path, ctx: AdapterContext) -> Iterator[dict[str, Any] | Reject]:
    """Chinese-CLIP: `{split}_texts.jsonl` (text_id, text, image_ids) + `{split}_imgs.tsv` (id, base64).

    Images stay inline: `image_ref` is "<tsv>#<image id>" and the snapshot decodes the base64
    line only when it writes the shard, so ingest never holds image bytes.
    """
    tsv = cnclip_images_tsv(path)
    if not tsv.is_file():
        raise FormatError(0, f"no images TSV next to the texts: expected {tsv}")
    split = tsv.name[: -len("_imgs.tsv")]
    check = lambda line, rec: _check_keys(line, rec, {"text_id", "text", "image_ids"}, 2, "Chinese-CLIP")  # noqa: E731
    for line, rec, rej in _first_checked(iter_json_records(path, ctx.max_record_bytes), check, _muge_to_cnclip):
        if rej is not None:
            yield rej
            continue
        text, tid, ids = as_text(rec.get("text")), rec.get("text_id"), rec.get("image_ids")
        if text is None or tid is None or not isinstance(ids, list) or not ids:
            missing = [k for k, v in (("text", text), ("text_id", tid), ("image_ids", ids if isinstance(ids, list) and ids else None)) if v is None]
            yield Reject(line, ["missing_field"], f"missing or empty field(s): {', '.join(missing)}", _json_excerpt(rec), text=text)
            continue
        for iid in ids:
            yield make_row(
                ctx, path, line, sample_id=f"cnclip:{split}:{tid}:{iid}", image_key=f"{split}:{iid}",
                image_source="inline", image_ref=f"{tsv}#{iid}", text=text, text_kind="caption",
            )


OWN_IMAGE_COLS = ("image_ref", "image", "image_url", "image_path", "url", "path")
OWN_TEXT_COLS = ("text", "caption")


def _own_records(path: Path, ctx: AdapterContext) -> Iterator[tuple[int, Any, Reject | None]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            for rec in batch.to_pylist():
                n += 1
                yield n, rec, None
    elif suffix in (".csv", ".tsv"):
        header: list[str] | None = None
        for line, fields, rej in iter_csv_rows(path, "\t" if suffix == ".tsv" else ","):
            if header is None:
                if fields is None:
                    raise FormatError(line, "cannot read the header row")
                header = [f.strip() for f in fields]
                continue
            if rej is not None or fields is None:
                yield line, None, rej
            elif len(fields) != len(header):
                yield line, None, Reject(line, ["malformed_csv"], f"expected {len(header)} fields, got {len(fields)}", excerpt(",".join(fields)))
            else:
                yield line, dict(zip(header, fields, strict=True)), None
    else:
        yield from iter_json_records(path, ctx.max_record_bytes)


def _check_own_columns(line: int, rec: Any) -> None:
    if not isinstance(rec, dict):
        raise FormatError(line, "expected records with an image column and a text column")
    if not any(c in rec for c in OWN_IMAGE_COLS) or not any(c in rec for c in OWN_TEXT_COLS):
        raise FormatError(
            line, f"the record has columns {sorted(rec)[:8]}; a manifest needs one of {OWN_IMAGE_COLS} and one of {OWN_TEXT_COLS}"
        )


def _muge_to_cnclip(rec: Any) -> Any:
    """MUGE names its fields query_id/query_text/item_ids; the rest of the adapter reads Chinese-CLIP's."""
    if isinstance(rec, dict) and "query_id" in rec:
        return {"text_id": rec.get("query_id"), "text": rec.get("query_text"), "image_ids": rec.get("item_ids")}
    return rec


def own(path: Path, ctx: AdapterContext) -> Iterator[dict[str, Any] | Reject]:
    """A user's own manifest (Parquet, JSONL or CSV): an image column and a text column, optional
    `sample_id`, `text_kind`, `license`, `image_key`."""
    for line, rec, rej in _first_checked(_own_records(path, ctx), _check_own_columns, not_object="record is not an object"):
        if rej is not None:
            yield rej
            continue
        image = next((as_text(rec[c]) for c in OWN_IMAGE_COLS if rec.get(c) is not None), None)
        text = next((as_text(rec[c]) for c in OWN_TEXT_COLS if rec.get(c) is not None), None)
        if not image or text is None:
            yield Reject(line, ["missing_field"], "missing image or text", _json_excerpt(rec), text=text)
            continue
        src, ref = resolve_image(image, path, ctx)
        row = make_row(
            ctx, path, line, sample_id=as_text(rec.get("sample_id")) or f"manifest:{short_hash(ref, text)}",
            image_key=as_text(rec.get("image_key")) or short_hash(ref), image_source=src, image_ref=ref,
            text=text, text_kind=as_text(rec.get("text_kind")) or "caption",
        )
        if as_text(rec.get("license")):
            row["license"] = as_text(rec.get("license"))
        yield row


ADAPTERS: dict[str, Adapter] = {"zero": zero, "wukong": wukong, "wudaomm": wudaomm, "cnclip": cnclip, "manifest": own}

"""The one manifest schema every corpus is normalised into, and the side tables around it.

Every stage (ingest, validate, snapshot) reads and writes Parquet with the schemas below, so
a row can be followed from its source file and line to a tar shard, a quarantine table or the
failure ledger. Writers stream in row groups: a 100M-row corpus never has to fit in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from r2d2.errors import UserError

SCHEMA_VERSION = 1

IMAGE_SOURCES = ("url", "path", "inline")

# One row per (image, text) pair. `image_ref` is a URL, a path (already resolved relative to the
# input file or --base-dir) or "<tsv file>#<image id>" for inline base64 images (Chinese-CLIP).
MANIFEST_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),  # unique and stable: derived from corpus ids or content
        ("image_key", pa.string()),  # the corpus' own image id (Zero ImageKey) or a hash of image_ref
        ("image_source", pa.string()),  # "url" | "path" | "inline"
        ("image_ref", pa.string()),
        ("text", pa.string()),
        ("text_kind", pa.string()),  # title / content / query / keywords / caption / ...
        ("source", pa.string()),  # corpus: zero / wukong / wudaomm / cnclip / manifest
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("license", pa.string()),
    ]
)

# Rows rejected by any stage, with the rule(s) that rejected them. `raw` holds an excerpt of an
# unparseable record (ingest) so a human can see what was wrong without opening the corpus.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),  # ingest | validate | image
        ("rules", pa.list_(pa.string())),
        ("reason", pa.string()),
        ("sample_id", pa.string()),
        ("image_ref", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("raw", pa.string()),
    ]
)

# Rows whose image could not be fetched (network, HTTP status, size, content type, missing file).
LEDGER_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("image_ref", pa.string()),
        ("error_kind", pa.string()),
        ("attempts", pa.int32()),
        ("detail", pa.string()),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
    ]
)

# Per-shard snapshot manifest: one row per sample (text) written into a tar shard.
SHARD_SCHEMA = pa.schema(
    list(MANIFEST_SCHEMA)
    + [
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),  # the WebDataset key of the image inside the shard
        pa.field("content_hash", pa.string()),  # sha256 of the fetched bytes (dedup key)
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
    ]
)

# Per-image statistics the image suite (Great Expectations) validates, accepted or not.
IMAGE_STATS_SCHEMA = pa.schema(
    [
        ("content_hash", pa.string()),
        ("image_ref", pa.string()),
        ("decodable", pa.bool_()),
        ("orig_width", pa.int32()),
        ("orig_height", pa.int32()),
        ("n_bytes", pa.int64()),
        ("rules", pa.list_(pa.string())),
    ]
)


class ParquetBatchWriter:
    """Append dict rows; flush a row group every `batch_rows`; atomically publish on close.

    The file is written under a temporary name and renamed at the end, so a crashed run never
    leaves a half-written file that a resumed run would take for a finished one. An empty
    table is still written (with its schema), so row counts are always readable.
    """

    def __init__(self, path: str | Path, schema: pa.Schema, batch_rows: int = 50_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows = 0
        self._buf: list[dict[str, Any]] = []
        self._writer = pq.ParquetWriter(self.tmp, schema)

    @property
    def count(self) -> int:
        """Rows added so far (flushed or buffered)."""
        return self.rows + len(self._buf)

    def add(self, row: dict[str, Any]) -> None:
        self._buf.append(row)
        if len(self._buf) >= self.batch_rows:
            self.flush()

    def write_table(self, table: pa.Table) -> None:
        """Append a whole (already batched) table, e.g. the passing rows of a validated batch."""
        self.flush()
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add(row)

    def flush(self) -> None:
        if self._buf:
            self._writer.write_table(pa.Table.from_pylist(self._buf, schema=self.schema))
            self.rows += len(self._buf)
            self._buf = []

    def close(self) -> Path:
        self.flush()
        self._writer.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ParquetBatchWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_table(path: str | Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    with ParquetBatchWriter(path, schema) as w:
        w.extend(rows)
    return Path(path)


def parquet_files(directory: str | Path) -> list[Path]:
    """Sorted Parquet files of a folder (the parts of a manifest, quarantine or ledger)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.parquet"))


def manifest_parts(in_dir: str | Path, run_first: str) -> list[Path]:
    """The schema-checked manifest parts of a stage's input folder; none is a UserError saying
    which command (`run_first`) makes them."""
    parts = parquet_files(Path(in_dir) / "manifest")
    if not parts:
        raise UserError(f"{in_dir}: no manifest/*.parquet here; run {run_first} first")
    for p in parts:
        check_schema(p)
    return parts


def count_rows(paths: Iterable[str | Path]) -> int:
    """Row count from Parquet footers only (no data read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


def iter_batches(path: str | Path, batch_rows: int = 50_000, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)


def read_table(paths: Iterable[str | Path], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Concatenate small side tables (quarantine, ledger, stats); never used for the full manifest."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    if not tables:
        sch = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return sch.empty_table()
    return pa.concat_tables(tables)


def check_schema(path: str | Path, expected: pa.Schema = MANIFEST_SCHEMA) -> None:
    """A schema change between stages is a batch-level failure: stop with the exact difference."""
    try:
        got = pq.read_schema(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's problem to fix
        raise UserError(f"{path}: not a readable Parquet manifest ({err}); re-run `r2d2 ingest`") from None
    got_fields = {f.name: f.type for f in got}
    want_fields = {f.name: f.type for f in expected}
    missing = [n for n in want_fields if n not in got_fields]
    extra = [n for n in got_fields if n not in want_fields]
    changed = [f"{n} ({got_fields[n]} != {t})" for n, t in want_fields.items() if n in got_fields and got_fields[n] != t]
    if missing or extra or changed:
        parts = []
        if missing:
            parts.append("missing columns: " + ", ".join(missing))
        if extra:
            parts.append("unexpected columns: " + ", ".join(extra))
        if changed:
            parts.append("changed types: " + ", ".join(changed))
        raise UserError(
            f"{path}: manifest schema changed ({'; '.join(parts)}); the manifest was written by another "
            f"version of `r2d2 ingest` (schema v{SCHEMA_VERSION}): re-run ingest"
        )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, obj: Any) -> Path:
    """Pretty JSON written atomically (summaries are read by DVC metrics and resumed runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))

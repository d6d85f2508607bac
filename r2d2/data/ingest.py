"""`r2d2 ingest`: normalise corpus files into one Parquet manifest, streaming, one unit per file.

Layout of an ingest output folder:
    manifest/part-00000.parquet   rows of input file 0 (MANIFEST_SCHEMA), in row groups
    quarantine/ingest-00000.parquet  its records that could not become rows (QUARANTINE_SCHEMA)
    ingest.json                   per-file and total counts; `ingested_rows` = rows + quarantine rows

One input file is one independent unit (`ingest_unit`), so the same function runs in this
process or on a Dask worker (`r2d2.data.scale`), and the merged summary is identical.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from r2d2.config import format_validation_error
from r2d2.data.adapters import ADAPTERS, AdapterContext, FormatError, Reject
from r2d2.data.manifest import (
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    ParquetBatchWriter,
    read_json,
    write_json,
)
from r2d2.errors import UserError

SOURCES = tuple(ADAPTERS)
# What a folder given as INPUT expands to, per source (the 256-file Wukong layout, one JSON per
# WuDaoMM category, ...).
FOLDER_GLOBS = {
    "zero": ("*.json", "*.jsonl"),
    "wukong": ("*.csv",),
    "wudaomm": ("*.json",),
    "cnclip": ("*_texts.jsonl", "*_queries.jsonl"),
    "manifest": ("*.parquet", "*.jsonl", "*.csv"),
}


class IngestConfig(BaseModel):
    """`ingest:` in params.yaml."""

    model_config = ConfigDict(extra="forbid")

    row_group_rows: int = Field(50_000, gt=0)
    license: str = "unknown"  # written into every row; set it to the corpus' terms
    base_dir: str | None = None  # where relative image paths live (default: next to the input file)
    max_record_bytes: int = Field(1 << 20, gt=0)  # a JSON record longer than this is quarantined
    progress: bool = True


def format_config_error(err: ValidationError, section: str) -> str:
    return format_validation_error(err, "params.yaml", docs="docs/data.md", section=section)


def ingest_config(raw: dict[str, Any] | None) -> IngestConfig:
    """Parse the `ingest:` section kept verbatim in `Params.extra`."""
    try:
        return IngestConfig.model_validate(raw or {})
    except ValidationError as err:
        raise UserError(format_config_error(err, "ingest")) from None


def plan_units(inputs: list[str | Path], source: str) -> list[Path]:
    """Expand INPUT arguments (files or folders) into the sorted list of unit files."""
    if source not in ADAPTERS:
        raise UserError(f"unknown --source {source!r}; choose one of {', '.join(SOURCES)}")
    units: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted({f for pat in FOLDER_GLOBS[source] for f in p.glob(pat)})
            if not found:
                raise UserError(f"{p}: no {source} files ({', '.join(FOLDER_GLOBS[source])}) in this folder")
            units.extend(found)
        elif p.is_file():
            if source == "cnclip" and p.name.endswith("_imgs.tsv"):
                p = p.with_name(p.name[: -len("_imgs.tsv")] + "_texts.jsonl")
            units.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    seen: set[Path] = set()
    return [u for u in units if not (u in seen or seen.add(u))]


def _reject_row(rej: Reject, path: Path, source: str) -> dict[str, Any]:
    return {
        "stage": "ingest", "rules": rej.rules, "reason": rej.reason, "sample_id": rej.sample_id,
        "image_ref": rej.image_ref, "text": rej.text, "source": source, "source_file": str(path),
        "source_line": rej.line, "raw": rej.raw,
    }


def unit_paths(out_dir: Path, index: int) -> tuple[Path, Path]:
    return out_dir / "manifest" / f"part-{index:05d}.parquet", out_dir / "quarantine" / f"ingest-{index:05d}.parquet"


def ingest_unit(index: int, path: str | Path, source: str, out_dir: str | Path, cfg: IngestConfig) -> dict[str, Any]:
    """Stream one input file into its manifest part and quarantine part; return its counts."""
    path, out_dir = Path(path), Path(out_dir)
    ctx = AdapterContext(
        source=source, license=cfg.license, base_dir=Path(cfg.base_dir) if cfg.base_dir else None,
        max_record_bytes=cfg.max_record_bytes,
    )
    man_path, q_path = unit_paths(out_dir, index)
    rules: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    with (
        ParquetBatchWriter(man_path, MANIFEST_SCHEMA, cfg.row_group_rows) as rows,
        ParquetBatchWriter(q_path, QUARANTINE_SCHEMA, cfg.row_group_rows) as quarantine,
        tqdm(desc=f"ingest {path.name}", unit="row", disable=not cfg.progress, leave=False) as bar,
    ):
        try:
            for item in ADAPTERS[source](path, ctx):
                if isinstance(item, Reject):
                    quarantine.add(_reject_row(item, path, source))
                    rules.update(item.rules)
                else:
                    rows.add(item)
                    kinds[item["text_kind"]] += 1
                bar.update(1)
                if bar.n % 5000 == 0:
                    bar.set_postfix(quarantined=quarantine.count)
        except FormatError as err:
            where = f"{path}:{err.line}" if err.line else str(path)
            raise UserError(f"{where}: {err.problem} (reading it as --source {source})") from None
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: cannot be read as text ({err}); is this the right file for --source {source}?") from None
    n_rows, n_q = rows.rows, quarantine.rows
    return {
        "unit": index, "file": str(path), "manifest": man_path.name, "quarantine": q_path.name,
        "rows": n_rows, "quarantine_rows": n_q, "rules": dict(sorted(rules.items())), "text_kinds": dict(sorted(kinds.items())),
    }


def merge_ingest(out_dir: str | Path, source: str, units: list[dict[str, Any]], cfg: IngestConfig) -> dict[str, Any]:
    """Sum unit counts into `ingest.json`; the same whether units ran here or on a cluster."""
    units = sorted(units, key=lambda u: u["unit"])
    rules: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for u in units:
        rules.update(u["rules"])
        kinds.update(u["text_kinds"])
    rows = sum(u["rows"] for u in units)
    quarantined = sum(u["quarantine_rows"] for u in units)
    summary = {
        "schema_version": SCHEMA_VERSION, "stage": "ingest", "source": source, "license": cfg.license,
        "units": units, "rows": rows, "quarantine_rows": quarantined, "ingested_rows": rows + quarantined,
        "rules": dict(sorted(rules.items())), "text_kinds": dict(sorted(kinds.items())),
    }
    write_json(Path(out_dir) / "ingest.json", summary)
    return summary


def clear_outputs(out_dir: Path, patterns: tuple[str, ...]) -> None:
    """Remove the files a previous run of this stage wrote (stale parts would be read as new)."""
    for pat in patterns:
        for f in out_dir.glob(pat):
            f.unlink()


def ingest(inputs: list[str | Path], source: str, out_dir: str | Path, cfg: IngestConfig | None = None) -> dict[str, Any]:
    """Ingest every input file (one unit each) and write the merged summary."""
    cfg = cfg or IngestConfig()
    out_dir = Path(out_dir)
    units = plan_units(inputs, source)
    clear_outputs(out_dir, ("manifest/*.parquet", "quarantine/ingest-*.parquet", "ingest.json"))
    results = [ingest_unit(i, p, source, out_dir, cfg) for i, p in enumerate(units)]
    return merge_ingest(out_dir, source, results, cfg)


def load_ingest_summary(in_dir: str | Path) -> dict[str, Any] | None:
    p = Path(in_dir) / "ingest.json"
    return read_json(p) if p.exists() else None

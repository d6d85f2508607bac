"""`r2d2 snapshot`: validated manifest in, WebDataset shards + ledger + image quarantine out.

Stage order (see docs/data.md): ingest -> validate (text rules) -> snapshot (fetch + image rules).
Every row that enters the snapshot leaves it in exactly one place: a shard manifest, the image
quarantine or the failure ledger, so with the upstream counts
    ingested = ingest quarantine + validate quarantine + image quarantine + ledger + snapshot rows
which `merge_snapshot` checks before it writes snapshot.json.

Layout of a snapshot folder:
    plan/<shard>.parquet          the input rows of each shard (consecutive rows of one input part)
    shards/<shard>.tar            WebDataset samples: <key>.png|jpg + <key>.json
    shards/<shard>.parquet        one row per sample (SHARD_SCHEMA)
    shards/<shard>.json           done marker with counts: a re-run skips shards that have one
    ledger/<shard>.parquet        rows whose image could not be fetched (LEDGER_SCHEMA)
    quarantine/image-<shard>.parquet  rows whose image broke an image rule
    stats/<shard>.parquet         per-image statistics for the GX image suite
    duplicates.parquet            rows of images already stored in an earlier shard
    snapshot.json                 counts, reconciliation, shard list, snapshot_hash, GX result
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from r2d2.data.download import DownloadConfig, Fetched, Fetcher
from r2d2.data.ingest import format_config_error
from r2d2.data.manifest import (
    IMAGE_STATS_SCHEMA,
    LEDGER_SCHEMA,
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    SHARD_SCHEMA,
    ParquetBatchWriter,
    file_sha256,
    manifest_parts,
    read_json,
    read_table,
    write_json,
    write_table,
)
from r2d2.data.quarantine import reconcile
from r2d2.data.shards import ProcessedImage, process_image, write_tar
from r2d2.data.validation import ImageRulesConfig, ValidateConfig, validate_images
from r2d2.errors import UserError


class SnapshotConfig(BaseModel):
    """`snapshot:` in params.yaml (image rules live under `validate.images`)."""

    model_config = ConfigDict(extra="forbid")

    shard_rows: int = Field(2000, gt=0)  # input rows per shard (rows of one image are never split)
    max_side: int = Field(64, gt=0)  # resize so the longer side is at most this (never upscale)
    format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(90, ge=1, le=100)
    # Threads decoding/resizing at once per process (fetching has `download.concurrency`);
    # None: the CPUs this process may use.
    image_workers: int | None = Field(None, gt=0)
    max_failed_share: float = Field(0.5, ge=0, le=1)  # ledger rows / input rows before the run stops
    progress: bool = True
    download: DownloadConfig = DownloadConfig()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def snapshot_config(raw: dict[str, Any] | None) -> SnapshotConfig:
    """Parse the `snapshot:` section kept verbatim in `Params.extra`."""
    try:
        return SnapshotConfig.model_validate(raw or {})
    except ValidationError as err:
        raise UserError(format_config_error(err, "snapshot")) from None


def plan_shards(in_dir: str | Path, out_dir: str | Path, cfg: SnapshotConfig, rules: ImageRulesConfig) -> list[tuple[str, Path]]:
    """Cut each input part into shards of ~shard_rows consecutive rows; write each shard's rows.

    Consecutive chunks keep one pass over the manifest with one open writer, and the rows of an
    image (adjacent in every corpus format) stay in one shard. The plan is deterministic, so a
    resumed run finds the same shard names; it is rewritten (and finished shards are discarded)
    only when the input or a setting that changes the output changed.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    parts = manifest_parts(in_dir, "`r2d2 validate` (or `r2d2 ingest`)")
    settings = cfg.model_dump(exclude={"progress"})
    settings["download"].pop("concurrency")  # how fast, not what: changing it must not restart a snapshot
    if settings["download"]["ca_bundle"] is None:  # unset: the fingerprint of snapshots from before the option
        settings["download"].pop("ca_bundle")
    settings.pop("image_workers")
    fingerprint = {"parts": [[p.name, file_sha256(p)] for p in parts], "settings": settings, "rules": rules.model_dump()}
    marker = out_dir / "plan" / "plan.json"
    if marker.exists() and read_json(marker)["fingerprint"] == fingerprint:
        return [(name, out_dir / "plan" / f"{name}.parquet") for name in read_json(marker)["shards"]]
    # Input or settings changed: finished shards no longer match, start over.
    for pattern in ("plan/*", "shards/*", "ledger/*", "quarantine/image-*", "stats/*", "duplicates.parquet", "snapshot.json"):
        for old in out_dir.glob(pattern):
            old.unlink()
    shards: list[str] = []
    for i, part in enumerate(parts):
        chunk, writer, last_ref = 0, None, None
        for batch in pq.ParquetFile(part).iter_batches(batch_size=10_000):
            for row in batch.to_pylist():
                if writer is not None and writer.count >= cfg.shard_rows and row["image_ref"] != last_ref:
                    writer.close()
                    writer, chunk = None, chunk + 1
                if writer is None:
                    name = f"{i:05d}-{chunk:05d}"
                    shards.append(name)
                    writer = ParquetBatchWriter(out_dir / "plan" / f"{name}.parquet", MANIFEST_SCHEMA)
                writer.add(row)
                last_ref = row["image_ref"]
        if writer is not None:
            writer.close()
    write_json(marker, {"fingerprint": fingerprint, "shards": shards})
    return [(name, out_dir / "plan" / f"{name}.parquet") for name in shards]


def _ledger_row(row: dict[str, Any], f: Fetched) -> dict[str, Any]:
    return {
        "sample_id": row["sample_id"], "image_ref": row["image_ref"], "error_kind": f.error_kind, "attempts": f.attempts,
        "detail": f.detail, "source_file": row["source_file"], "source_line": row["source_line"],
    }


def _quarantine_row(row: dict[str, Any], img: ProcessedImage) -> dict[str, Any]:
    return {
        "stage": "image", "rules": img.rules, "reason": img.detail, "sample_id": row["sample_id"], "image_ref": row["image_ref"],
        "text": row["text"], "source": row["source"], "source_file": row["source_file"], "source_line": row["source_line"], "raw": None,
    }


def snapshot_shard(
    name: str, plan_path: str | Path, out_dir: str | Path, cfg: SnapshotConfig, rules: ImageRulesConfig,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fetch, check, resize and write one shard; skip it if its done marker exists (resume)."""
    out_dir = Path(out_dir)
    done = out_dir / "shards" / f"{name}.json"
    if done.exists():
        return read_json(done)
    rows = pq.read_table(plan_path).to_pylist()
    refs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        refs.setdefault((row["image_source"], row["image_ref"]), []).append(row)
    fetcher = Fetcher(cfg.download)

    # Fetching waits on the network, so it gets `concurrency` threads; decoding is CPU work, so at
    # most `image_workers` threads do it at once. More would only queue on the cores and the GIL
    # (measured on 2 cores: 16 threads decoding cost ~10 % more CPU per image than 2).
    cpu_slots = threading.BoundedSemaphore(cfg.image_workers or available_cpus())

    def work(ref: tuple[str, str]) -> tuple[Fetched, ProcessedImage | None]:
        f = fetcher.fetch(*ref)
        img = None
        if f.data is not None:
            with cpu_slots:
                img = process_image(f.data, rules, cfg.max_side, cfg.format, cfg.jpeg_quality)
        if progress is not None:
            progress("failed" if img is None else "quarantined" if img.rules else "ok")
        return f, img

    with fetcher, ThreadPoolExecutor(max_workers=cfg.download.concurrency) as pool:
        results = list(pool.map(work, list(refs)))
    samples: dict[str, dict[str, Any]] = {}
    shard_rows, ledger, quarantine, stats = [], [], [], []
    for (src, ref), (f, img) in zip(refs, results, strict=True):
        group = refs[(src, ref)]
        if img is None:
            ledger += [_ledger_row(r, f) for r in group]
            continue
        stats.append({
            "content_hash": img.content_hash, "image_ref": ref, "decodable": img.decodable, "orig_width": img.orig_width,
            "orig_height": img.orig_height, "n_bytes": img.n_bytes, "rules": img.rules,
        })
        if img.rules:
            quarantine += [_quarantine_row(r, img) for r in group]
            continue
        sample = samples.setdefault(img.key, {"key": img.key, "image": img.data, "meta": {
            "texts": [], "text_kinds": [], "sample_ids": [], "image_refs": [], "content_hash": img.content_hash,
            "width": img.width, "height": img.height, "source": group[0]["source"]}})
        sample["meta"]["image_refs"].append(ref)
        for r in group:
            sample["meta"]["texts"].append(r["text"])
            sample["meta"]["text_kinds"].append(r["text_kind"])
            sample["meta"]["sample_ids"].append(r["sample_id"])
            shard_rows.append({**r, "shard": name, "key": img.key, "content_hash": img.content_hash, "width": img.width,
                               "height": img.height, "orig_width": img.orig_width, "orig_height": img.orig_height})
    ext = "png" if cfg.format == "png" else "jpg"
    tar = write_tar(out_dir / "shards" / f"{name}.tar", list(samples.values()), ext)
    man = write_table(out_dir / "shards" / f"{name}.parquet", shard_rows, SHARD_SCHEMA)
    write_table(out_dir / "ledger" / f"{name}.parquet", ledger, LEDGER_SCHEMA)
    write_table(out_dir / "quarantine" / f"image-{name}.parquet", quarantine, QUARANTINE_SCHEMA)
    write_table(out_dir / "stats" / f"{name}.parquet", stats, IMAGE_STATS_SCHEMA)
    result = {
        "shard": name, "input_rows": len(rows), "rows": len(shard_rows), "images": len(samples),
        "ledger_rows": len(ledger), "quarantine_rows": len(quarantine), "fetched_images": len(refs),
        "tar_sha256": file_sha256(tar), "manifest_sha256": file_sha256(man),
    }
    write_json(done, result)  # written last: its presence means the shard is complete
    return result


def cross_shard_duplicates(out_dir: Path, names: list[str]) -> int:
    """Record rows whose image (same content hash) is already stored in an earlier shard.

    Within a shard duplicates share one sample; across shards the later copy is skipped by the
    reader and its texts are merged into the first copy from duplicates.parquet. Memory holds
    one hash per unique image.
    """
    first: dict[str, str] = {}
    dup_rows = []
    for name in names:
        t = pq.read_table(out_dir / "shards" / f"{name}.parquet", columns=["key", "sample_id", "text", "text_kind"])
        df = t.to_pandas()
        for key, group in df.groupby("key", sort=False):
            if key in first and first[key] != name:
                dup_rows += [{"key": key, "shard": name, "canonical_shard": first[key], **r}
                             for r in group[["sample_id", "text", "text_kind"]].to_dict("records")]
            else:
                first.setdefault(str(key), name)
    pd.DataFrame(dup_rows, columns=["key", "shard", "canonical_shard", "sample_id", "text", "text_kind"]).to_parquet(
        out_dir / "duplicates.parquet", index=False
    )
    return len({(r["shard"], r["key"]) for r in dup_rows})


def merge_snapshot(
    in_dir: str | Path, out_dir: str | Path, results: list[dict[str, Any]], cfg: SnapshotConfig, vcfg: ValidateConfig,
    seconds: float = 0.0,
) -> dict[str, Any]:
    """Reconcile counts, validate image statistics with GX, hash the snapshot, write snapshot.json."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    results = sorted(results, key=lambda r: r["shard"])
    names = [r["shard"] for r in results]
    dup_images = cross_shard_duplicates(out_dir, names)
    totals = {k: sum(r[k] for r in results) for k in ("input_rows", "rows", "images", "ledger_rows", "quarantine_rows", "fetched_images")}
    ledger = read_table([out_dir / "ledger" / f"{n}.parquet" for n in names], LEDGER_SCHEMA, ["error_kind"]).column(0).to_pylist()
    stats = read_table([out_dir / "stats" / f"{n}.parquet" for n in names], IMAGE_STATS_SCHEMA).to_pandas()
    upstream = read_json(in_dir / "validate.json") if (in_dir / "validate.json").exists() else None
    counts = reconcile(upstream, totals)
    h = hashlib.sha256()
    for r in results:
        h.update(f"{r['shard']}:{r['tar_sha256']}:{r['manifest_sha256']}\n".encode())
    gx = validate_images(stats, vcfg)
    failed_share = totals["ledger_rows"] / max(totals["input_rows"], 1)
    failed = failed_share > cfg.max_failed_share or (gx is not None and not gx["success"])
    summary = {
        "stage": "snapshot", "status": "failed" if failed else "passed", **totals, "unique_images": totals["images"] - dup_images,
        "cross_shard_duplicate_images": dup_images, "ledger_by_kind": {str(k): int(v) for k, v in pd.Series(ledger, dtype=object).value_counts().sort_index().items()},
        "image_rules": gx["rules"] if gx else None, "failed_share": round(failed_share, 6), "reconciliation": counts,
        "snapshot_hash": h.hexdigest(), "shards": results, "gx": gx, "seconds": round(seconds, 3),
        "images_per_s": round(totals["fetched_images"] / seconds, 2) if seconds else None,
        "config": {"snapshot": cfg.model_dump(), "images": vcfg.images.model_dump()},
    }
    write_json(out_dir / "snapshot.json", summary)
    if failed:
        why = (f"{failed_share:.1%} of rows could not be fetched (max {cfg.max_failed_share:.0%}; by kind: {summary['ledger_by_kind']})"
               if failed_share > cfg.max_failed_share else f"the image suite failed: {', '.join(gx['failed'])}")  # type: ignore[index]
        raise UserError(f"snapshot stopped: {why}. Ledger: {out_dir / 'ledger'}; quarantine: {out_dir / 'quarantine'}")
    return summary


def snapshot(in_dir: str | Path, out_dir: str | Path, cfg: SnapshotConfig | None = None, vcfg: ValidateConfig | None = None) -> dict[str, Any]:
    """Write a snapshot of a validated manifest folder, shard by shard, resuming finished shards."""
    cfg, vcfg = cfg or SnapshotConfig(), vcfg or ValidateConfig()
    start = time.perf_counter()
    plan = plan_shards(in_dir, out_dir, cfg, vcfg.images)
    counts = {"ok": 0, "failed": 0, "quarantined": 0}
    with tqdm(desc="snapshot", unit="img", disable=not cfg.progress, mininterval=0.5) as bar:

        def tick(status: str) -> None:
            counts[status] += 1
            bar.update(1)
            if bar.n % 50 == 0:
                bar.set_postfix(counts, refresh=False)

        results = [snapshot_shard(name, path, out_dir, cfg, vcfg.images, tick) for name, path in plan]
        bar.set_postfix(counts)
    return merge_snapshot(in_dir, out_dir, results, cfg, vcfg, time.perf_counter() - start)

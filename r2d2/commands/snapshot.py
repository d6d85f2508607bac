"""`r2d2 snapshot`: fetch, check and shard the images of a validated manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from r2d2.commands.ingest import add_scale_args, scale_config

ORDER = 13


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "snapshot",
        help="download/decode/resize/dedup images into WebDataset tar shards with a failure ledger",
        description=(
            "Read MANIFEST_DIR/manifest/*.parquet (an `r2d2 validate` output; an ingest output also works) and write "
            "OUT/shards/<shard>.tar (WebDataset: <key>.png|jpg + <key>.json with texts, kinds and sample ids), "
            "OUT/shards/<shard>.parquet (one row per sample), OUT/ledger/ (images that could not be fetched: URL, "
            "error kind, attempts), OUT/quarantine/ (images that broke validate.images rules) and OUT/snapshot.json "
            "(counts that reconcile with ingest and validate, snapshot_hash). Re-running resumes: finished shards "
            "are skipped. Reads params.yaml sections `snapshot` and `validate` (images rules, GX)."
        ),
    )
    p.add_argument("manifest_dir", metavar="MANIFEST_DIR", help="an `r2d2 validate` (or `r2d2 ingest`) output folder")
    p.add_argument("--out", required=True, help="output folder (re-use it to resume)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml; all defaults if absent)")
    p.add_argument("--max-side", type=int, default=None, help="resize so the longer side is at most this (snapshot.max_side)")
    p.add_argument("--concurrency", type=int, default=None, help="images fetched at once (snapshot.download.concurrency)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scale_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from r2d2.config import load_params
    from r2d2.data.quarantine import format_reconciliation
    from r2d2.data.snapshot import snapshot, snapshot_config
    from r2d2.data.validation import validate_config

    params = load_params(args.params)
    raw = dict(params.extra.get("snapshot") or {})
    if args.max_side is not None:
        raw["max_side"] = args.max_side
    if args.concurrency is not None:
        raw["download"] = {**(raw.get("download") or {}), "concurrency": args.concurrency}
    if args.no_progress:
        raw["progress"] = False
    cfg, vcfg = snapshot_config(raw), validate_config(params.extra.get("validate"))
    scale = scale_config(args)
    if scale is None:
        s = snapshot(args.manifest_dir, args.out, cfg, vcfg)
    else:
        from r2d2.data.scale import run_stage

        s = run_stage("snapshot", scale, in_dir=Path(args.manifest_dir), out=Path(args.out), cfg=cfg, vcfg=vcfg)
    print(f"snapshot {args.out}: {s['unique_images']} images in {len(s['shards'])} shard(s), {s['rows']} texts; "
          f"ledger {s['ledger_rows']} rows{' ' + str(s['ledger_by_kind']) if s['ledger_by_kind'] else ''}; image quarantine {s['quarantine_rows']} rows")
    print(f"counts: {format_reconciliation(s['reconciliation'])}")
    if s.get("gx"):
        print(f"image suite: {'passed' if s['gx']['success'] else 'FAILED'} {s['gx']['rules']}"
              + (f"; Data Docs: {s['gx']['data_docs']}" if s["gx"].get("data_docs") else ""))
    print(f"snapshot_hash {s['snapshot_hash']}")
    return 0

"""`r2d2 validate`: text rules + Great Expectations on an ingested manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from r2d2.commands.ingest import add_scale_args, scale_config

ORDER = 12


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check manifest rows (ids, text, language, length, boilerplate, URL scheme) with Great Expectations",
        description=(
            "Read INGEST_DIR/manifest/*.parquet; write rows that pass to OUT/manifest/ and rows that fail to "
            "OUT/quarantine/validate-*.parquet with the failed rule(s). Great Expectations (file context in "
            "great_expectations/) validates the batch and builds Data Docs. Stops with a non-zero exit when more "
            "than validate.max_rejected_share of the ingested rows were rejected, or the schema changed. Reads "
            "params.yaml section `validate`. Next step: `r2d2 snapshot OUT --out DIR`."
        ),
    )
    p.add_argument("ingest_dir", metavar="INGEST_DIR", help="an `r2d2 ingest` output folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml; all defaults if absent)")
    p.add_argument("--gx-mode", choices=["aggregates", "rows", "off"], default=None,
                   help="what GX validates: per-rule aggregates (fast, default), every row (slow), or nothing")
    p.add_argument("--no-docs", action="store_true", help="do not build Data Docs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scale_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from r2d2.config import load_params
    from r2d2.data.validation import validate_config, validate_manifest

    raw = dict(load_params(args.params).extra.get("validate") or {})
    if args.gx_mode:
        raw["gx_mode"] = args.gx_mode
    if args.no_docs:
        raw["data_docs"] = False
    if args.no_progress:
        raw["progress"] = False
    cfg = validate_config(raw)
    scale = scale_config(args)
    if scale is None:
        s = validate_manifest(args.ingest_dir, args.out, cfg)
    else:
        from r2d2.data.scale import run_stage

        s = run_stage("validate", scale, in_dir=Path(args.ingest_dir), out=Path(args.out), cfg=cfg)
    rules = ", ".join(f"{k}: {v}" for k, v in s["rules"].items() if v) or "none"
    print(f"validated {s['rows']} rows: {s['passed']} passed, {s['quarantine_rows']} quarantined ({rules}); "
          f"rejected share incl. ingest {s['rejected_share']:.1%}")
    if s.get("gx"):
        print(f"Great Expectations: {'passed' if s['gx']['success'] else 'FAILED'}"
              + (f"; Data Docs: {s['gx']['data_docs']}" if s["gx"].get("data_docs") else ""))
    return 0

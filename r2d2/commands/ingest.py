"""`r2d2 ingest`: corpus files in their real formats -> one Parquet manifest (+ quarantine)."""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 11
SOURCES = ("zero", "wukong", "wudaomm", "cnclip", "manifest")


def add_scale_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ingest/validate/snapshot to fan units out onto Dask through Prefect."""
    g = p.add_argument_group("scale-out (Prefect + Dask)")
    g.add_argument("--dask-workers", type=int, default=None, metavar="N",
                   help="run the units (files / parts / shards) as Prefect tasks on a local N-worker Dask cluster")
    g.add_argument("--dask-address", default=None, metavar="ADDR",
                   help="run them on an existing Dask scheduler instead, e.g. tcp://10.0.0.5:8786")


def scale_config(args: argparse.Namespace):  # -> ScaleConfig | None
    if args.dask_workers is None and args.dask_address is None:
        return None
    from r2d2.data.scale import ScaleConfig

    return ScaleConfig(workers=args.dask_workers or 2, address=args.dask_address)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="normalise Zero / Wukong / WuDaoMM / Chinese-CLIP / own manifest files into one Parquet manifest",
        description=(
            "Stream corpus files into OUT/manifest/part-NNNNN.parquet (one part per input file; columns sample_id, "
            "image_key, image_source, image_ref, text, text_kind, source, source_file, source_line, license). "
            "Records that cannot become rows go to OUT/quarantine/ingest-NNNNN.parquet with a rule and reason; "
            "a file in the wrong format stops with its file, line and problem. Counts: OUT/ingest.json. "
            "Reads params.yaml section `ingest`. Next step: `r2d2 validate OUT --out DIR`."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="corpus files or folders (a folder expands to e.g. all wukong_100m_*.csv in it)")
    p.add_argument("--source", required=True, choices=SOURCES,
                   help="corpus format: zero (JSON records), wukong (url,caption CSV), wudaomm (JSON arrays), "
                   "cnclip (SPLIT_texts.jsonl + SPLIT_imgs.tsv), manifest (Parquet/JSONL/CSV with image + text columns)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml; all defaults if absent)")
    p.add_argument("--base-dir", default=None, help="folder relative image paths are resolved against "
                   "(default: the input file's folder, then its parent)")
    p.add_argument("--license", default=None, help="license/terms string written into every row (overrides ingest.license)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scale_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from r2d2.config import load_params
    from r2d2.data.ingest import ingest, ingest_config

    raw = dict(load_params(args.params).extra.get("ingest") or {})
    if args.base_dir is not None:
        raw["base_dir"] = args.base_dir
    if args.license is not None:
        raw["license"] = args.license
    if args.no_progress:
        raw["progress"] = False
    cfg = ingest_config(raw)
    scale = scale_config(args)
    if scale is None:
        s = ingest(args.inputs, args.source, args.out, cfg)
    else:
        from r2d2.data.scale import run_stage

        s = run_stage("ingest", scale, inputs=args.inputs, source=args.source, out=Path(args.out), cfg=cfg)
    rules = ", ".join(f"{k}: {v}" for k, v in s["rules"].items()) or "none"
    print(f"ingested {s['ingested_rows']} rows from {len(s['units'])} file(s) into {args.out}: "
          f"{s['rows']} manifest rows, {s['quarantine_rows']} quarantined ({rules})")
    return 0

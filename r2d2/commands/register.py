"""`r2d2 register`: log a model folder as a new registered version with lineage, alias `challenger`.

    r2d2 register --model runs/ft/model --metrics eval/flickr.json eval/icm.json --name R2D2 \
        --snapshot-manifest snapshot/snapshot.json --validation validated/validate.json

Each --metrics file is `r2d2 evaluate` output, named `DATASET=PATH` or by its file name (its
folder's name for `.../DATASET/metrics.json`); the version gets tags `metric.DATASET.NAME`,
which `r2d2 promote` compares, and `lineage.*` tags (git commit and dirty flag, data.dvc md5,
snapshot manifest sha256, Great Expectations result, params hash, package versions).
Runs go to MLFLOW_TRACKING_URI, else the embedded sqlite:///<project>/mlflow.db.
Defaults for --name/--experiment come from params.yaml `register:` (name, experiment).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 70


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "register",
        help="register a model folder in MLflow (pyfunc + lineage + metrics tags), alias `challenger`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="model folder (model.safetensors + config.json + vocab.txt)")
    p.add_argument("--metrics", required=True, nargs="+", metavar="[DATASET=]PATH", help="evaluation JSON(s)")
    p.add_argument("--name", default=None, help="registered model name (default: register.name or R2D2)")
    p.add_argument("--snapshot-manifest", type=Path, help="the data snapshot's manifest (snapshot.json): its sha256 is tagged")
    p.add_argument("--validation", type=Path, help="validation result JSON (validate.json or a GX result): its success flag is tagged")
    p.add_argument("--params", default="params.yaml", help="params file hashed into lineage.params_sha256")
    p.add_argument("--experiment", default=None, help="MLflow experiment of the registering run (default: r2d2-registry)")
    p.add_argument("--tracking-uri", default=None, help="override MLFLOW_TRACKING_URI / the embedded store")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def section(params: str | Path, name: str) -> dict:
    """A params.yaml section owned by the registry (kept verbatim by r2d2.config)."""
    import yaml

    path = Path(params)
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(name) or {}


def run(args: argparse.Namespace) -> int:
    from r2d2.registry.register import REGISTRY_EXPERIMENT, register_model

    cfg = section(args.params, "register")
    name = args.name or cfg.get("name") or "R2D2"
    rv = register_model(
        args.model, args.metrics, name,
        snapshot_manifest=args.snapshot_manifest, validation=args.validation, params_path=args.params,
        tracking_uri=args.tracking_uri, experiment=args.experiment or cfg.get("experiment") or REGISTRY_EXPERIMENT,
    )
    if args.json:
        print(json.dumps({"name": rv.name, "version": rv.version, "run_id": rv.run_id, "model_uri": rv.model_uri,
                          "tags": rv.tags}, indent=2, ensure_ascii=False))
    else:
        primary = rv.tags.get("primary_metric", "none")
        print(f"registered {rv.name} version {rv.version} (alias challenger; primary metric {primary}; run {rv.run_id})")
        print(rv.version)
    return 0

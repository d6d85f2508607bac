"""Register a model folder as a new version of a registered model, alias `challenger`.

One call does what a reviewer needs to trust a version later: an MLflow run holding the
pyfunc (weights, config, vocab), the evaluation JSONs and their metrics; a registry version
tagged with its lineage (`lineage.*`, see `r2d2.registry.lineage`) and its evaluation
metrics (`metric.<dataset>.<name>`, what `r2d2 promote` compares); and the `challenger` alias.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2d2.errors import UserError
from r2d2.registry.promote import METRIC_TAG, flatten_eval_metrics, primary_metric

GENERIC_STEMS = {"metrics", "metric", "eval", "evaluation", "results", "scores"}
REGISTRY_EXPERIMENT = "r2d2-registry"


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str  # models:/NAME/VERSION
    tags: dict[str, str] = field(default_factory=dict)


def dataset_name(path: str | Path) -> str:
    """`eval/flickr30k-cn.json` -> `flickr30k-cn`; `eval/flickr30k-cn/metrics.json` -> `flickr30k-cn`."""
    p = Path(path)
    return p.parent.name if p.stem.lower() in GENERIC_STEMS and p.parent.name else p.stem


def parse_metrics_spec(spec: str) -> tuple[str, Path]:
    """CLI `[DATASET=]PATH` -> (dataset, path)."""
    name, sep, path = spec.partition("=")
    if sep and name and not re.search(r"[/\\]", name):
        return name, Path(path)
    return dataset_name(spec), Path(spec)


def load_metrics(files: Mapping[str, str | Path] | Sequence[str | Path]) -> tuple[dict[str, float], dict[str, Path]]:
    """Evaluation JSONs -> flat metrics `{<dataset>.<name>: value}` and `{dataset: path}`."""
    pairs = list(files.items()) if isinstance(files, Mapping) else [parse_metrics_spec(str(f)) for f in files]
    flat: dict[str, float] = {}
    paths: dict[str, Path] = {}
    for dataset, path in pairs:
        path = Path(path)
        if dataset in paths:
            raise UserError(f"two metrics files for dataset {dataset!r} ({paths[dataset]}, {path}); name them DATASET=PATH")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"--metrics {path}: cannot read an evaluation JSON ({err})") from None
        one = flatten_eval_metrics(doc, dataset)
        if not one:
            raise UserError(f"--metrics {path}: no retrieval or matching metrics in it (is it `r2d2 evaluate` output?)")
        flat.update(one)
        paths[dataset] = path
    return flat, paths


@contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (which `pyfunc.log_model` uses) at `uri`, then put back what was there."""
    import mlflow
    import mlflow.tracking._model_registry.utils as reg_utils
    import mlflow.tracking._tracking_service.utils as trk_utils

    saved = (trk_utils._tracking_uri, reg_utils._registry_uri,
             os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        trk_utils._tracking_uri, reg_utils._registry_uri = saved[0], saved[1]
        for key, value in zip(("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"), saved[2:], strict=True):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_model(
    model_dir: str | Path,
    metrics: Mapping[str, str | Path] | Sequence[str | Path],
    name: str = "R2D2",
    *,
    snapshot_manifest: str | Path | None = None,
    validation: str | Path | None = None,
    params_path: str | Path | None = None,
    repo: str | Path | None = None,
    dvc_file: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = REGISTRY_EXPERIMENT,
    run_name: str | None = None,
    alias: str = "challenger",
) -> RegisteredVersion:
    """Log `model_dir` as a pyfunc in a new run, register it as a new version of `name`, set `alias`.

    `metrics`: `{dataset: path}` or paths (`[DATASET=]PATH`; the dataset name defaults to the
    file stem, or its folder for `metrics.json`). Lineage paths default to the project root
    (`data.dvc`, `params.yaml`); `snapshot_manifest`/`validation` are "none" when not given.
    """
    import mlflow

    from r2d2.model.io import read_config
    from r2d2.registry.lineage import lineage_tags
    from r2d2.registry.pyfunc import ARTIFACT, R2D2PyFunc, input_example, pip_requirements, signature
    from r2d2.registry.tracking import (
        client_for,
        ensure_experiment,
        flatten,
        project_root,
        resolve_tracking_uri,
    )

    model_dir = Path(model_dir)
    cfg = read_config(model_dir)  # fails clearly before anything is logged
    flat, paths = load_metrics(metrics)
    root = Path(repo) if repo else project_root()
    for opt, p in (("--snapshot-manifest", snapshot_manifest), ("--validation", validation)):
        if p is not None and not Path(p).is_file():
            raise UserError(f"{opt} {p}: no such file")
    try:
        lineage = lineage_tags(root, snapshot_manifest=snapshot_manifest, validation=validation,
                               params_path=params_path, dvc_file=dvc_file)
    except (OSError, ValueError) as err:
        raise UserError(f"lineage: {err}") from None
    uri = resolve_tracking_uri(tracking_uri, root)
    client = client_for(uri)
    exp_id = ensure_experiment(client, experiment, uri)
    primary = primary_metric(flat)

    # MLflow writes "View run at <url>" to stdout when a run ends on a server: keep stdout for
    # our own output (`r2d2 register --json > registered.json`).
    with contextlib.redirect_stdout(sys.stderr), fluent_uri(uri), \
            mlflow.start_run(experiment_id=exp_id, run_name=run_name or f"register-{name}", tags=lineage,
                             nested=mlflow.active_run() is not None) as run:
        mlflow.log_params(flatten(cfg.model_dump(mode="json"), "model."))
        mlflow.log_metrics(flat)
        for dataset, path in paths.items():
            mlflow.log_artifact(str(path), f"evaluation/{dataset}")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=R2D2PyFunc(),
            artifacts={ARTIFACT: str(model_dir)},
            signature=signature(),
            input_example=input_example(cfg.vision.image_size),
            pip_requirements=pip_requirements(),
            registered_model_name=name,
            metadata={"r2d2_format": "r2d2/1", "embed_dim": cfg.embed_dim, "prd2": cfg.prd2},
        )
    version = str(info.registered_model_version)
    tags = {**lineage, **{f"{METRIC_TAG}{k}": repr(float(v)) for k, v in flat.items()},
            "primary_metric": "none" if primary is None else f"{primary:.4f}",
            "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_model_dir": str(model_dir.resolve())}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return RegisteredVersion(name, version, run.info.run_id, f"models:/{name}/{version}", tags)


def version_summary(name: str, alias: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The version behind `name@alias` with its tags (for reports and `r2d2 promote` output)."""
    from r2d2.registry.tracking import client_for, resolve_tracking_uri

    mv = client_for(resolve_tracking_uri(tracking_uri)).get_model_version_by_alias(name, alias)
    return {"name": name, "alias": alias, "version": mv.version, "run_id": mv.run_id, "tags": dict(mv.tags)}

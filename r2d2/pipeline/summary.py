"""The end of a pipeline run: the champion, its metrics, and where to browse everything.

Reads the registry (the `champion` alias of `register.name`), the report written by the
`report` stage and the validation summary (for the Data Docs link). Used by `r2d2 pipeline run`
and by the Prefect flow's artifacts.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_NAME = "R2D2"
VALIDATE_SUMMARY = "artifacts/validated/validate.json"
REPORT_MD = "reports/report.md"
PROMOTION_JSON = "reports/promotion.json"
MLFLOW_UI_PORT = 5000
PREFECT_UI_PORT = 4200


@dataclass
class Champion:
    name: str
    version: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    primary: str | None = None
    lineage: dict[str, str] = field(default_factory=dict)
    tracking_uri: str = ""
    error: str | None = None


def registered_name(root: str | Path) -> str:
    path = Path(root) / "params.yaml"
    if path.is_file():
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        name = (raw.get("register") or {}).get("name")
        if name:
            return str(name)
    return DEFAULT_NAME


def champion(root: str | Path, name: str | None = None, alias: str = "champion") -> Champion:
    """The version behind NAME@ALIAS with its metric and lineage tags (error filled in if none)."""
    from r2d2.registry.promote import metrics_from_tags
    from r2d2.registry.tracking import client_for, resolve_tracking_uri

    root = Path(root)
    name = name or registered_name(root)
    uri = resolve_tracking_uri(None, root)
    out = Champion(name=name, tracking_uri=uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        out.error = f"no registry yet ({uri} does not exist)"  # looking must not create an empty store
        return out
    try:
        client = client_for(uri)
        mv = client.get_model_version_by_alias(name, alias)
    except Exception as err:  # noqa: BLE001 - no registry yet, no such alias: reported, not fatal
        out.error = f"no {name}@{alias} in {uri} ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        return out
    tags = dict(mv.tags)
    out.version, out.run_id = str(mv.version), mv.run_id
    out.metrics = metrics_from_tags(tags)
    out.primary = tags.get("primary_metric")
    out.lineage = {k: v for k, v in tags.items() if k.startswith("lineage.")}
    try:
        out.experiment_id = client.get_run(mv.run_id).info.experiment_id
    except Exception:  # noqa: BLE001
        out.experiment_id = None
    return out


def mlflow_ui(ch: Champion) -> tuple[str, str | None]:
    """(URL to open, command that serves it or None when a server already does)."""
    uri = ch.tracking_uri
    if uri.startswith(("http://", "https://")):
        base, command = uri.rstrip("/"), None
    else:
        base = f"http://127.0.0.1:{MLFLOW_UI_PORT}"
        command = f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port {MLFLOW_UI_PORT}"
    url = f"{base}/#/models/{ch.name}/versions/{ch.version}" if ch.version else base
    return url, command


def mlflow_run_url(ch: Champion) -> str | None:
    if not (ch.run_id and ch.experiment_id):
        return None
    base = mlflow_ui(ch)[0].split("/#/")[0]
    return f"{base}/#/experiments/{ch.experiment_id}/runs/{ch.run_id}"


def prefect_ui(flow_run_id: str | None = None) -> tuple[str, str | None]:
    """(URL, command) for the Prefect UI; in the default no-server mode runs live in PREFECT_HOME's database."""
    api = os.environ.get("PREFECT_API_URL", "")
    if api:
        base = api.rstrip("/")
        base = base[: -len("/api")] if base.endswith("/api") else base
        command = None
    else:
        base = f"http://127.0.0.1:{PREFECT_UI_PORT}"
        command = f"prefect server start --host 127.0.0.1 --port {PREFECT_UI_PORT}"
    url = f"{base}/runs/flow-run/{flow_run_id}" if flow_run_id else f"{base}/runs"
    return url, command


def data_docs(root: str | Path) -> str | None:
    path = Path(root) / VALIDATE_SUMMARY
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    link = (doc.get("gx") or {}).get("data_docs")
    if link:
        return str(link)
    local = Path(root) / "great_expectations" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    return local.resolve().as_uri() if local.is_file() else None


def promotion(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / PROMOTION_JSON
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text[text.index("{"):]) if "{" in text else None
    except ValueError:
        return None


def format_metrics(metrics: dict[str, float]) -> list[str]:
    by_ds: dict[str, list[str]] = {}
    for key in sorted(metrics):
        ds, _, rest = key.partition(".")
        by_ds.setdefault(ds, []).append(f"{rest} {metrics[key]:.2f}")
    return [f"  {ds}: " + ", ".join(items) for ds, items in by_ds.items()]


def format_versus_untrained(root: str | Path) -> list[str]:
    """Trained vs untrained (same architecture and init, zero steps) from the report's metrics.json."""
    path = Path(root) / "reports" / "metrics.json"
    if not path.is_file():
        return []
    datasets = json.loads(path.read_text(encoding="utf-8")).get("datasets", {})
    rows = [("t2i", "r1", "T->I R@1"), ("t2i", "r10", "T->I R@10"), ("i2t", "r1", "I->T R@1"), (None, "mr", "MR"),
            (None, "auc", "match AUC")]
    lines = [f"  {'dataset':<16}{'metric':<12}{'trained':>9}{'untrained':>11}"]
    for name, entry in datasets.items():
        base = entry.get("untrained") or {}
        for group, key, title in rows:
            ours = (entry.get(group) or {}).get(key) if group else entry.get(key)
            if ours is None:
                continue
            ref = (base.get(group) or {}).get(key) if group else base.get(key)
            lines.append(f"  {name:<16}{title:<12}{ours:>9.2f}{'-' if ref is None else f'{ref:.2f}':>11}")
    return ["trained vs untrained (%, held-out demo sets):", *lines] if len(lines) > 1 else []


def format_summary(root: str | Path, ch: Champion, flow_run_id: str | None = None,
                   stages: list[dict[str, Any]] | None = None) -> str:
    """The text `r2d2 pipeline run` ends with."""
    lines: list[str] = []
    if stages:
        ran = [s["stage"] for s in stages if s["status"] == "ran"]
        restored = [s["stage"] for s in stages if s["status"] == "restored"]
        lines.append(f"stages: {len(ran)} ran, {len(restored)} restored from the run cache, "
                     f"{len(stages) - len(ran) - len(restored)} up to date"
                     + (f" (ran: {', '.join(ran)})" if ran else ""))
    lines += format_versus_untrained(root)
    promo = promotion(root)
    if promo and isinstance(promo.get("decision"), dict):
        verdict = "promoted" if promo["decision"].get("promote") else "kept the champion"
        lines.append(f"promotion: challenger version {promo.get('challenger')} {verdict}: {promo['decision'].get('reason', '')}")
    if ch.version:
        lines.append(f"champion: {ch.name} version {ch.version}  (models:/{ch.name}@champion, primary metric "
                     f"{ch.primary or '-'})")
        lines += format_metrics(ch.metrics)
        commit = ch.lineage.get("lineage.git_commit")
        if commit:
            lines.append(f"  lineage: git {commit[:12]}{' (dirty)' if ch.lineage.get('lineage.git_dirty') == 'true' else ''}, "
                         f"data.dvc {ch.lineage.get('lineage.data_dvc_md5', '-')}; reproduce with "
                         f"`r2d2 reproduce {ch.name}@champion`")
    else:
        lines.append(f"champion: none ({ch.error})")
    url, command = mlflow_ui(ch)
    lines.append(f"MLflow UI:  {url}" + (f"   (serve it: {command})" if command else ""))
    run_url = mlflow_run_url(ch)
    if run_url:
        lines.append(f"  run:      {run_url}")
    url, command = prefect_ui(flow_run_id)
    lines.append(f"Prefect UI: {url}" + (f"   (serve it: {command}; or `r2d2 pipeline run --server`)" if command else ""))
    docs = data_docs(root)
    lines.append(f"Data Docs:  {docs or 'not built (validate.data_docs: false)'}")
    report = Path(root) / REPORT_MD
    if report.is_file():
        lines.append(f"Report:     {report}   (plots: `dvc plots show`, metrics: `dvc metrics show`)")
    return "\n".join(lines)

"""MLflow tracking for training and evaluation, from rank 0 only.

Where runs go: `MLFLOW_TRACKING_URI` when set (e.g. the server `r2d2 services up` starts),
else an embedded SQLite store `<project>/mlflow.db` with artifacts under `<project>/mlruns/`
(both git-ignored). The embedded store needs no server and still supports the registry.

Why a thin wrapper over `MlflowClient` rather than `mlflow.start_run`: the fluent API keeps one
global active run per process, which a library function (called from a Prefect task, a test,
or a notebook that already has a run open) must not hijack. Every call here names its run.
MLflow is imported only when tracking is on, so the library works without it; `NullRun` keeps
callers free of `if tracking:` branches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_EXPERIMENT = "r2d2"
SKIP_STEP_KEYS = {"step"}


@dataclass
class TrackingSettings:
    """The `tracking:` section of params.yaml (all optional)."""

    enabled: bool | None = None  # None: track when MLFLOW_TRACKING_URI is set
    uri: str | None = None  # overrides the embedded default, not MLFLOW_TRACKING_URI
    experiment: str = DEFAULT_EXPERIMENT
    system_metrics: bool = True
    system_metrics_interval: float = 10.0  # seconds between CPU/memory/disk/network samples


def load_tracking_settings(params_path: str | Path | None = "params.yaml") -> TrackingSettings:
    """Read `tracking:` from params.yaml; unknown keys are errors (a typo must not silently disable tracking)."""
    from r2d2.errors import UserError

    if params_path is None or not Path(params_path).is_file():
        return TrackingSettings()
    raw = (yaml.safe_load(Path(params_path).read_text(encoding="utf-8")) or {}).get("tracking") or {}
    known = set(TrackingSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{params_path}: tracking: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return TrackingSettings(**raw)


def project_root() -> Path:
    from r2d2.services.config import find_project_root

    return find_project_root()


def resolve_tracking_uri(uri: str | None = None, root: str | Path | None = None) -> str:
    """Explicit URI > MLFLOW_TRACKING_URI > `sqlite:///<project>/mlflow.db`."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    base = Path(root) if root else project_root()
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def should_track(flag: bool | None, settings: TrackingSettings | None = None) -> bool:
    """`--mlflow/--no-mlflow` wins, then `tracking.enabled`, then whether MLFLOW_TRACKING_URI is set.

    Ranks other than 0 never track: one run per training job, not one per GPU.
    """
    if os.environ.get("RANK", "0") != "0":
        return False
    if flag is not None:
        return flag
    if settings is not None and settings.enabled is not None:
        return settings.enabled
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def client_for(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: Any, name: str, uri: str) -> str:
    """The experiment's id, created if needed; embedded stores put artifacts in `<db folder>/mlruns`
    (MLflow's own default is `./mlruns` relative to wherever the command runs)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - created by a concurrent process meanwhile
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> `{"a.b.c": "value"}` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class NullRun:
    """Tracking switched off: every method is a no-op."""

    run_id: str | None = None
    enabled = False

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def on_log(self, step: int, row: Mapping[str, float]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> NullRun:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.end("FAILED" if exc_type else "FINISHED")


class Run(NullRun):
    """One MLflow run addressed by id (no global active run)."""

    enabled = True

    def __init__(self, uri: str, experiment: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None,
                 system_metrics: bool = True, system_metrics_interval: float = 10.0) -> None:
        self.uri = uri
        self.client = client_for(uri)
        self.experiment_id = ensure_experiment(self.client, experiment, uri)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
        self.run_id: str = run.info.run_id
        self.artifact_uri: str = run.info.artifact_uri
        self._monitor = None
        self._ended = False
        if system_metrics:
            self._monitor = start_system_metrics(self.run_id, uri, system_metrics_interval)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()
                 if isinstance(v, int | float) and not math.isnan(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def on_log(self, step: int, row: Mapping[str, float]) -> None:
        """The trainer's `on_log` hook: one point per logged step for every loss term, lr, throughput.

        A tracking hiccup (server restarting) loses points with a warning; it never kills a
        training job that may have hours of GPU time in it.
        """
        try:
            self.log_metrics({k: v for k, v in row.items() if k not in SKIP_STEP_KEYS}, step=step)
        except Exception as err:  # noqa: BLE001 - any MLflow/transport error
            import logging

            logging.getLogger(__name__).warning("MLflow: metrics of step %d not logged: %s", step, err)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str = "FINISHED") -> None:
        if self._ended:
            return
        self._ended = True
        if self._monitor is not None:
            self._monitor.finish()
        self.client.set_terminated(self.run_id, status)


def start_system_metrics(run_id: str, uri: str, interval: float) -> Any | None:
    """CPU, memory, disk and network (and GPU with pynvml) sampled by a thread every `interval`
    seconds into `system/*` metrics; None when psutil is missing (MLflow needs it)."""
    try:
        import psutil  # noqa: F401
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1, tracking_uri=uri)
    monitor.start()
    return monitor


def start_run(
    enabled: bool,
    *,
    run_name: str | None = None,
    experiment: str | None = None,
    settings: TrackingSettings | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    uri: str | None = None,
) -> NullRun:
    """A `Run` when tracking is on (with params and git tags logged), else a `NullRun`."""
    if not enabled:
        return NullRun()
    from r2d2.registry.lineage import git_state

    settings = settings or TrackingSettings()
    uri = resolve_tracking_uri(uri or settings.uri)
    check_server(uri)
    git = git_state(project_root())
    run = Run(uri, experiment or settings.experiment, run_name,
              tags={"lineage.git_commit": git["git_commit"], "lineage.git_dirty": git["git_dirty"], **(tags or {})},
              system_metrics=settings.system_metrics, system_metrics_interval=settings.system_metrics_interval)
    if params:
        run.log_params(params)
    return run


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when a tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    from r2d2.errors import UserError

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if "127.0.0.1" in uri or "localhost" in uri \
        else urllib.request.build_opener()
    try:
        with opener.open(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
    except (urllib.error.URLError, OSError):
        pass
    raise UserError(f"MLflow tracking server {uri} is not answering (GET /health); start it with "
                    "`r2d2 services up`, unset MLFLOW_TRACKING_URI, or pass --no-mlflow")


def log_files(run: NullRun, files: Iterable[str | Path], artifact_path: str | None = None) -> None:
    for f in files:
        run.log_artifact(f, artifact_path)


def log_evaluation(run: NullRun, metrics: Mapping[str, Any], metrics_path: str | Path, plots_dir: str | Path) -> list[Path]:
    """Metrics (`retrieval.t2i.r1`, `matching.auc`, ...), the evaluation JSON, recall@K and ROC plots."""
    from r2d2.registry.plots import evaluation_plots

    flat: dict[str, float] = {}
    ret = metrics.get("retrieval") or {}
    for direction in ("t2i", "i2t"):
        for k, v in (ret.get(direction) or {}).items():
            if k.startswith("r") and k[1:].isdigit() and v is not None:
                flat[f"retrieval.{direction}.{k}"] = v
    if ret.get("mr") is not None:
        flat["retrieval.mr"] = ret["mr"]
    for k in ("auc", "accuracy"):
        if (metrics.get("matching") or {}).get(k) is not None:
            flat[f"matching.{k}"] = metrics["matching"][k]
    plots = evaluation_plots(metrics, plots_dir)
    if run.enabled:
        run.log_metrics(flat)
        run.log_artifact(metrics_path, "evaluation")
        log_files(run, plots, "plots")
    return plots

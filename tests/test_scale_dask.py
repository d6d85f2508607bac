"""Scale-out: ingest, validate and snapshot units fanned out onto a local 2-worker Dask cluster
give byte-identical outputs to the single-process run.

The default test drives the orchestration code of r2d2.data.scale with a plain dask.distributed
client (seconds); the slow one runs the real Prefect flow with `DaskTaskRunner` (a fresh Prefect
API database costs ~30 s to create)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from data.helpers import configs, gx_copy, small_demo

from r2d2.data import scale
from r2d2.data.ingest import ingest_unit
from r2d2.data.scale import ScaleConfig, run_pipeline, run_pipeline_local
from r2d2.data.snapshot import snapshot_shard
from r2d2.data.validation import validate_unit


def _digest(folder: Path) -> dict[str, str]:
    """Hash every data file (summaries hold timings and are compared field by field instead)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.suffix in (".parquet", ".tar")}


def _same(a: dict[str, Any], b: dict[str, Any], dir_a: Path, dir_b: Path) -> None:
    assert a["snapshot"]["snapshot_hash"] == b["snapshot"]["snapshot_hash"]
    assert _digest(dir_a) == _digest(dir_b)
    for stage, keys in (("ingest", ["rows", "quarantine_rows", "ingested_rows", "rules"]),
                        ("validate", ["rows", "passed", "quarantine_rows", "rules", "rejected_share"]),
                        ("snapshot", ["rows", "images", "ledger_rows", "quarantine_rows", "reconciliation", "shards"])):
        assert {k: a[stage][k] for k in keys} == {k: b[stage][k] for k in keys}, stage


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("scale")
    demo = small_demo(tmp / "demo", train_images=40)
    cfg = configs(gx_copy(tmp / "gx"), gx_mode="off")  # GX runs in the driver either way; not what is tested
    cfg["snapshot_cfg"] = cfg["snapshot_cfg"].model_copy(update={"shard_rows": 40})
    local = run_pipeline_local([demo / "wukong"], "wukong", tmp / "local", **cfg)
    # two CSV files: two ingest units, two validate units, 4 shards
    assert len(local["ingest"]["units"]) == 2 and len(local["snapshot"]["shards"]) == 4
    return tmp, cfg, local


class _Via:
    """The `.submit(...) -> future.result()` interface of a Prefect task, on a Dask client."""

    def __init__(self, client: Any, fn: Any) -> None:
        self.client, self.fn = client, fn

    def submit(self, *args: Any) -> Any:
        return self.client.submit(self.fn, *args, pure=False)


def test_dask_units_equal_single_process(reference: tuple) -> None:
    from distributed import Client, LocalCluster

    tmp, cfg, local = reference
    out = tmp / "dask"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        tasks = {"ingest": _Via(client, ingest_unit), "validate": _Via(client, validate_unit), "snapshot": _Via(client, snapshot_shard)}
        got = {
            "ingest": scale._ingest(tasks, [tmp / "demo" / "wukong"], "wukong", out / "ingested", cfg["ingest_cfg"]),
            "validate": scale._validate(tasks, out / "ingested", out / "validated", cfg["validate_cfg"]),
            "snapshot": scale._snapshot(tasks, out / "validated", out / "snapshot", cfg["snapshot_cfg"], cfg["validate_cfg"]),
        }
        assert len(client.scheduler_info()["workers"]) == 2
    _same(got, local, out, tmp / "local")


@pytest.mark.slow
def test_prefect_dask_flow_equals_single_process(reference: tuple) -> None:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_LOGGING_TO_API_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    tmp, cfg, local = reference
    ours = not getattr(SubprocessASGIServer._instances.get(None), "running", False)
    # A private Prefect home: the ephemeral API's SQLite file is not shared with other processes.
    settings = {PREFECT_HOME: tmp / "prefect", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120,
                PREFECT_LOGGING_TO_API_ENABLED: False}  # no log shipping left pending when the server stops
    try:
        with temporary_settings(settings):
            got = run_pipeline([tmp / "demo" / "wukong"], "wukong", tmp / "prefect-dask", scale=ScaleConfig(workers=2), **cfg)
    finally:
        if ours:  # later tests must not inherit an API server whose database lives in our tmp_path
            SubprocessASGIServer().stop()
    _same(got, local, tmp / "prefect-dask", tmp / "local")


@pytest.mark.parametrize("processes", [False, True])
def test_task_runner_stays_on_loopback(processes: bool) -> None:
    kwargs = scale._task_runner(ScaleConfig(processes=processes)).cluster_kwargs
    assert kwargs["dashboard_address"] is None and kwargs["n_workers"] == 2
    assert kwargs.get("host") == ("127.0.0.1" if processes else None)

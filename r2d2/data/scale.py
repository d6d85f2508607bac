"""Scale-out: the same per-unit functions, fanned out by Prefect onto a Dask cluster.

Ingest, validation and snapshot work unit by unit (an input file, a manifest part, a shard),
each unit with its own output files and counts; only the cheap merge steps (sums, the global
duplicate-id pass, the shard plan, GX on aggregates) run in the driver. A Prefect flow submits
the units as tasks through `prefect_dask.DaskTaskRunner`: by default onto a temporary local
cluster bound to 127.0.0.1, or onto an existing scheduler (`address="tcp://host:8786"`, e.g. a
Dask cluster on Kubernetes). The merged outputs are byte-identical to a single-process run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from r2d2.data import ingest as ingest_mod
from r2d2.data import snapshot as snapshot_mod
from r2d2.data import validation as validation_mod
from r2d2.data.ingest import IngestConfig
from r2d2.data.manifest import manifest_parts
from r2d2.data.snapshot import SnapshotConfig
from r2d2.data.validation import ValidateConfig


class ScaleConfig(BaseModel):
    """Where the units run: a temporary local Dask cluster, or an existing scheduler."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(2, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    processes: bool = False  # threads in one process start in ~1 s; True gives real CPU parallelism
    address: str | None = None  # an existing scheduler, e.g. tcp://10.0.0.5:8786


def _task_runner(cfg: ScaleConfig) -> Any:
    import logging

    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # one line per worker event otherwise

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    kwargs: dict[str, Any] = {
        "n_workers": cfg.workers, "threads_per_worker": cfg.threads_per_worker, "processes": cfg.processes,
        "dashboard_address": None,
    }
    if cfg.processes:  # worker processes talk TCP: keep it on loopback; threads use in-process comms
        kwargs["host"] = "127.0.0.1"
    return DaskTaskRunner(cluster_kwargs=kwargs)


def _tasks() -> dict[str, Any]:
    """Prefect tasks wrapping the unit functions (built lazily: importing prefect costs seconds)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def make(name: str, fn: Any) -> Any:
        return task(name=name, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)(fn)

    return {
        "ingest": make("ingest-unit", ingest_mod.ingest_unit),
        "validate": make("validate-unit", validation_mod.validate_unit),
        "snapshot": make("snapshot-shard", snapshot_mod.snapshot_shard),
    }


def _quiet(cfg: Any) -> Any:
    """Units on workers draw no progress bars (they would interleave)."""
    return cfg.model_copy(update={"progress": False})


def _ingest(tasks: dict[str, Any], inputs: list[str | Path], source: str, out: Path, cfg: IngestConfig) -> dict[str, Any]:
    units = ingest_mod.plan_units(inputs, source)
    ingest_mod.clear_outputs(out, ("manifest/*.parquet", "quarantine/ingest-*.parquet", "ingest.json"))
    futures = [tasks["ingest"].submit(i, p, source, out, _quiet(cfg)) for i, p in enumerate(units)]
    return ingest_mod.merge_ingest(out, source, [f.result() for f in futures], cfg)


def _validate(tasks: dict[str, Any], in_dir: Path, out: Path, cfg: ValidateConfig) -> dict[str, Any]:
    parts = manifest_parts(in_dir, "`r2d2 ingest`")
    ingest_mod.clear_outputs(out, ("manifest/*.parquet", "quarantine/validate-*.parquet", "validate.json"))
    masks = validation_mod.duplicate_masks(parts)  # global: the one pass that sees every part
    futures = [tasks["validate"].submit(i, p, m, out, _quiet(cfg)) for i, (p, m) in enumerate(zip(parts, masks, strict=True))]
    return validation_mod.merge_validate(in_dir, out, [f.result() for f in futures], cfg)


def _snapshot(tasks: dict[str, Any], in_dir: Path, out: Path, cfg: SnapshotConfig, vcfg: ValidateConfig) -> dict[str, Any]:
    import time

    start = time.perf_counter()
    plan = snapshot_mod.plan_shards(in_dir, out, cfg, vcfg.images)
    futures = [tasks["snapshot"].submit(name, path, out, _quiet(cfg), vcfg.images) for name, path in plan]
    results = [f.result() for f in futures]
    return snapshot_mod.merge_snapshot(in_dir, out, results, cfg, vcfg, time.perf_counter() - start)


def run_stage(stage: str, scale: ScaleConfig, **kwargs: Any) -> dict[str, Any]:
    """Run one stage ("ingest" | "validate" | "snapshot") as a Prefect flow on Dask.

    kwargs: ingest(inputs, source, out, cfg); validate(in_dir, out, cfg); snapshot(in_dir, out, cfg, vcfg).
    """
    from prefect import flow

    stages = {"ingest": _ingest, "validate": _validate, "snapshot": _snapshot}

    @flow(name=f"r2d2-{stage}", task_runner=_task_runner(scale), log_prints=False)
    def stage_flow() -> dict[str, Any]:
        return stages[stage](_tasks(), **kwargs)

    return stage_flow()


def run_pipeline(
    inputs: list[str | Path], source: str, work_dir: str | Path, *, ingest_cfg: IngestConfig | None = None,
    validate_cfg: ValidateConfig | None = None, snapshot_cfg: SnapshotConfig | None = None, scale: ScaleConfig | None = None,
) -> dict[str, Any]:
    """ingest -> validate -> snapshot in one Prefect flow (one Dask cluster), under work_dir/{ingested,validated,snapshot}."""
    from prefect import flow

    work = Path(work_dir)
    ic, vc, sc = ingest_cfg or IngestConfig(), validate_cfg or ValidateConfig(), snapshot_cfg or SnapshotConfig()

    @flow(name="r2d2-data-pipeline", task_runner=_task_runner(scale or ScaleConfig()), log_prints=False)
    def pipeline_flow() -> dict[str, Any]:
        tasks = _tasks()
        return {
            "ingest": _ingest(tasks, inputs, source, work / "ingested", ic),
            "validate": _validate(tasks, work / "ingested", work / "validated", vc),
            "snapshot": _snapshot(tasks, work / "validated", work / "snapshot", sc, vc),
        }

    return pipeline_flow()


def run_pipeline_local(
    inputs: list[str | Path], source: str, work_dir: str | Path, *, ingest_cfg: IngestConfig | None = None,
    validate_cfg: ValidateConfig | None = None, snapshot_cfg: SnapshotConfig | None = None,
) -> dict[str, Any]:
    """The same three stages in this process, no Prefect: the reference the scaled run must equal."""
    work = Path(work_dir)
    vc = validate_cfg or ValidateConfig()
    return {
        "ingest": ingest_mod.ingest(inputs, source, work / "ingested", ingest_cfg),
        "validate": validation_mod.validate_manifest(work / "ingested", work / "validated", vc),
        "snapshot": snapshot_mod.snapshot(work / "validated", work / "snapshot", snapshot_cfg, vc),
    }

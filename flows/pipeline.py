"""The `r2d2-pipeline` Prefect flow: the stages of dvc.yaml, one task each.

Each task runs `dvc repro --single-item <stage>` (r2d2.pipeline.dvc.run_stage), so DVC decides
what runs and `dvc.lock` plus the DVC cache stay the truth: an unchanged stage is skipped in
about a second. The task graph is read from dvc.yaml, so a stage added there is picked up
here; stages with no dependency between them (finetune@A and finetune@B) run in parallel.
Retries with exponential backoff apply to transient failures only (lock contention, a
remote or server briefly away); a stage that fails for real fails the flow at once.

Runs in Prefect's default no-server mode or against a server (PREFECT_API_URL, e.g. from
`r2d2 services up --only prefect`). Deployed on a cron schedule by `flows/schedule.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from r2d2.pipeline import summary
from r2d2.pipeline.data import add_data_version, ensure_data
from r2d2.pipeline.dvc import StageFailed, is_transient, project_root, run_dvc, run_stage, stage_graph

FLOW_NAME = "r2d2-pipeline"


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may succeed on a second try (see r2d2.pipeline.dvc.TRANSIENT_PATTERNS)."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # noqa: BLE001 - whatever the result store says, it is an answer
            exc = err
    if isinstance(exc, StageFailed):
        return exc.transient
    return isinstance(exc, OSError | TimeoutError) or (isinstance(exc, BaseException) and is_transient(str(exc)))


@task(name="data", cache_policy=NO_CACHE, retry_condition_fn=_transient)
def prepare_data(root: str, update: str) -> dict[str, str]:
    """data/ as data.dvc says (pull: `git pull` first; add: record data/ as a new version)."""
    logger = get_run_logger()
    if update == "add":
        state = add_data_version(root, echo=logger.info)
    else:
        state = ensure_data(root, update=update, echo=logger.info)
    logger.info(state.line())
    return {"md5": state.md5, "action": state.action}


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE, retry_condition_fn=_transient)
def dvc_stage(stage: str, root: str, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item STAGE`: runs the stage's `r2d2` command only if DVC says it changed."""
    logger = get_run_logger()
    result = run_stage(stage, root, force=force, echo=lambda line: logger.info("%s", line))
    logger.info("%s: %s in %.1fs", stage, result.status, result.seconds)
    return result.to_dict()


@task(name="dvc-push", cache_policy=NO_CACHE, retry_condition_fn=_transient)
def dvc_push(root: str) -> None:
    res = run_dvc(["push"], root, echo=get_run_logger().info)
    if res.returncode != 0:
        raise StageFailed("push", res.returncode, res.output, True)  # a remote that is away may come back


@task(name="publish", cache_policy=NO_CACHE)
def publish(root: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Prefect artifacts: the metrics table, links to the MLflow run and the Data Docs."""
    ch = summary.champion(root)
    run_id = flow_run.get_id()
    report = Path(root) / summary.REPORT_MD
    table = ["| stage | status | seconds |", "|---|---|---:|", *(f"| {s['stage']} | {s['status']} | {s['seconds']} |"
                                                                  for s in stages)]
    text = [report.read_text(encoding="utf-8") if report.is_file() else "_no report yet_", "", "## Stages", "", *table]
    if ch.version:
        text += ["", f"## Champion: {ch.name} version {ch.version}", "", "| metric | value |", "|---|---:|",
                 *(f"| {k} | {v:.2f} |" for k, v in sorted(ch.metrics.items()))]
    create_markdown_artifact(markdown="\n".join(text), key="r2d2-report", description="R2D2 evaluation report")
    mlflow_url, mlflow_cmd = summary.mlflow_ui(ch)
    run_url = summary.mlflow_run_url(ch) or mlflow_url
    create_link_artifact(link=run_url, link_text=f"MLflow: {ch.name} v{ch.version or '-'} run", key="mlflow-run",
                         description=f"Needs `{mlflow_cmd}`" if mlflow_cmd else "MLflow tracking server")
    docs = summary.data_docs(root)
    if docs:
        create_link_artifact(link=docs, link_text="Great Expectations Data Docs", key="data-docs",
                             description="Validation results of the ingested manifest and the snapshot images")
    return {"champion": {"name": ch.name, "version": ch.version, "run_id": ch.run_id, "metrics": ch.metrics,
                         "error": ch.error},
            "flow_run_id": str(run_id) if run_id else None}


def _selected(graph: dict[str, Any], targets: list[str] | None) -> list[str]:
    """Stages to run: all, or the targets and everything upstream of them (as `dvc repro TARGET`)."""
    if not targets:
        return list(graph)
    wanted: set[str] = set()
    todo = []
    for t in targets:
        matches = [s for s in graph if s == t or s.split("@")[0] == t]
        if not matches:
            raise ValueError(f"unknown stage {t!r}; stages: {', '.join(graph)}")
        todo += matches
    while todo:
        s = todo.pop()
        if s not in wanted:
            wanted.add(s)
            todo += graph[s].upstream
    return [s for s in graph if s in wanted]


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def r2d2_pipeline(
    repo: str = ".",
    data_update: str = "none",
    targets: list[str] | None = None,
    force: bool = False,
    push: bool = False,
    retries: int = 2,
    retry_delay_s: float = 10.0,
) -> dict[str, Any]:
    """Run the DVC stages of `repo` (data -> ... -> promote); return stage statuses and the champion.

    data_update: none (data/ must match data.dvc; restored from cache/remote/regenerated if
    missing), pull (`git pull --ff-only` first, then as none), add (record data/ as a new
    version). targets: stop at these stages (with everything upstream). force: re-run every
    stage. push: `dvc push` the outputs at the end. retries/retry_delay_s: transient failures
    are retried with exponential backoff (delay, 2*delay, ...).
    """
    root = str(project_root(repo))
    logger = get_run_logger()
    graph = stage_graph(root)
    order = _selected(graph, targets)
    retry = {"retries": retries, "retry_delay_seconds": exponential_backoff(retry_delay_s), "retry_jitter_factor": 0.2}
    logger.info("stages: %s", " -> ".join(order))

    data = prepare_data.with_options(**retry).submit(root, data_update)
    futures: dict[str, Any] = {}
    for name in order:
        upstream = [futures[u] for u in graph[name].upstream if u in futures]
        futures[name] = dvc_stage.with_options(**retry).submit(name, root, force, wait_for=[data, *upstream])
    data.result()
    stages = []
    for future in futures.values():
        future.wait()
        stages.append(future.result())  # raises the stage's error (or the upstream failure) here
    if push:
        dvc_push.with_options(**retry).submit(root).result()
    published = publish.submit(root, stages).result()
    return {"stages": stages, **published}


if __name__ == "__main__":
    r2d2_pipeline()

"""Scheduled retraining: a cron deployment of the `r2d2-pipeline` flow, served by this process.

`serve_pipeline` registers the deployment `r2d2-pipeline/<name>` with a cron schedule and a
deployment concurrency limit of 1 (a run that starts while another is still going waits), then
executes its runs here (`flow.serve`: no work pool or worker needed; for a cluster, deploy the
same flow to a process or Kubernetes work pool instead). Each run pulls the latest data version
(`git pull --ff-only` when the branch tracks an upstream, then data/ as data.dvc says), runs the
pipeline (DVC skips every stage whose code, params and data did not change, so nothing is
retrained for nothing), registers and promotes, and pushes data and outputs to the DVC remote.

Needs a Prefect server (PREFECT_API_URL): the no-server mode has no scheduler.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEPLOYMENT = "scheduled-retraining"


def deployment_parameters(root: Path, data_update: str = "pull", push: bool = True) -> dict[str, Any]:
    return {"repo": str(root), "data_update": data_update, "push": push}


def serve_pipeline(root: str | Path, cron: str, *, name: str = DEPLOYMENT, timezone: str | None = None,
                   data_update: str = "pull", push: bool = True) -> None:
    """Create/update the cron deployment and serve its runs until interrupted (Ctrl-C pauses the schedule)."""
    from prefect.schedules import Cron

    from flows.pipeline import r2d2_pipeline

    root = Path(root).resolve()
    os.chdir(root)  # the deployment's entrypoint (flows/pipeline.py) is resolved from here
    r2d2_pipeline.serve(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        global_limit=1,  # deployment concurrency limit: never two retrainings at once
        limit=1,
        parameters=deployment_parameters(root, data_update, push),
        description=f"Retrain R2D2 on schedule `{cron}` from {root}: pull data, dvc stages, register, promote.",
        tags=["r2d2", "scheduled"],
    )

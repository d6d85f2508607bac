"""`r2d2 schedule`: a cron deployment (concurrency 1) on a real Prefect server on 127.0.0.1 whose run completes.

The deployment's first scheduled run is moved to "now" (its cron fires at 03:00), the runner of
`r2d2 schedule` picks it up and runs the whole flow on the reproduced tiny checkout: data and params
did not change, so DVC skips every stage and nothing is retrained.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pipeline_helpers as h
import pytest

from r2d2.services.config import ServicesConfig
from r2d2.services.manager import ServiceManager

pytestmark = pytest.mark.servers
CRON = "0 3 * * *"


def _wait(what: str, fn, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(1.0)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def test_cron_deployment_run_completes_and_retrains_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = h.clone_template(tmp_path_factory, "schedule")
    tmp = tmp_path_factory.mktemp("schedule-state")
    lock_before = (root / "dvc.lock").read_text()
    weights = root / "artifacts" / "pretrain" / "model" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    mgr = ServiceManager(ServicesConfig(state_dir=str(tmp / "services")), root=root)
    mgr.up("prefect", echo=lambda _: None)
    proc = None
    log = tmp / "schedule.log"
    try:
        api = mgr.exports()["PREFECT_API_URL"]
        env = h.env()
        env.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "client-home"), PREFECT_RUNNER_POLL_FREQUENCY="2",
                   PREFECT_LOGGING_LEVEL="INFO")
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "r2d2.cli", "schedule", "--cron", CRON, "--repo", str(root)],
                                    cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
        http = httpx.Client(base_url=api, timeout=30, trust_env=False)

        def deployment():
            r = http.post("/deployments/filter", json={"deployments": {"name": {"any_": ["scheduled-retraining"]}}})
            return r.json()[0] if r.status_code == 200 and r.json() else None

        dep = _wait("the deployment", deployment, 120, proc, log)
        assert dep["concurrency_limit"] == 1 or (dep.get("global_concurrency_limit") or {}).get("limit") == 1
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == [CRON]
        assert dep["parameters"]["data_update"] == "pull" and dep["parameters"]["push"] is True

        def scheduled():
            r = http.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]},
                                                                   "state": {"type": {"any_": ["SCHEDULED"]}}},
                                                     "sort": "EXPECTED_START_TIME_ASC", "limit": 1})
            return r.json()[0] if r.status_code == 200 and r.json() else None

        run = _wait("a scheduled run", scheduled, 90, proc, log)  # created by the server's scheduler
        now = dt.datetime.now(dt.UTC).isoformat()
        r = http.post(f"/flow_runs/{run['id']}/set_state", json={
            "state": {"type": "SCHEDULED", "name": "Scheduled", "state_details": {"scheduled_time": now}}, "force": True})
        assert r.status_code in (200, 201), r.text

        def finished():
            st = http.get(f"/flow_runs/{run['id']}").json()["state"]["type"]
            return st if st in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        start = time.perf_counter()
        assert _wait("the scheduled run to finish", finished, 240, proc, log) == "COMPLETED", log.read_text()[-4000:]
        print(f"scheduled run (no-op pipeline) completed in {time.perf_counter() - start:.1f}s after its trigger")
        tasks = http.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        names = {t["name"] for t in tasks}
        assert {"ingest", "pretrain", "finetune@demo-retrieval", "register", "promote"} <= names, names
        assert all(any(n.startswith(p) for n in names) for p in ("data", "dvc-push", "publish")), names
        assert all(t["state"]["type"] == "COMPLETED" for t in tasks), [(t["name"], t["state"]["type"]) for t in tasks]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        mgr.down("prefect", echo=lambda _: None)
    assert (root / "dvc.lock").read_text() == lock_before  # DVC decided: nothing changed, nothing retrained
    assert weights.stat().st_mtime_ns == mtime
    assert any((root / ".r2d2" / "dvc-remote").rglob("*")), "the run did not push to the DVC remote"

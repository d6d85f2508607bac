"""The Prefect flow over the DVC stages: thin tasks, parallel fan-out, retries, artifacts, the main job's CLI.

Flows run through `r2d2 pipeline run` in a subprocess, in Prefect's default no-server mode with a
private PREFECT_HOME (the test never touches ~/.prefect).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pipeline_helpers as h
import pytest
import yaml

from r2d2.pipeline.dvc import StageFailed, run_dvc, run_stage, stage_graph

TOOLS = '''
import json, sys, time
from pathlib import Path

kind, out = sys.argv[1], Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
if kind == "sleep":
    t = time.time()
    time.sleep(float(sys.argv[3]))
    out.write_text(json.dumps({"start": t, "end": time.time()}))
elif kind == "flaky":  # fails like a busy SQLite store on the first attempt
    marker = Path("attempts.txt")
    n = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(n))
    if n < 2:
        print("sqlite3.OperationalError: database is locked", file=sys.stderr)
        sys.exit(1)
    out.write_text(f"ok after {n} attempts")
else:
    out.write_text(kind)
'''

MINI_DVC = textwrap.dedent("""\
    stages:
      first:
        cmd: python tools.py first out/first.txt
        deps: [data, tools.py]
        outs: [out/first.txt]
      left:
        cmd: python tools.py sleep out/left.json 3
        deps: [out/first.txt]
        outs: [out/left.json]
      right:
        cmd: python tools.py sleep out/right.json 3
        deps: [out/first.txt]
        outs: [out/right.json]
      flaky:
        cmd: python tools.py flaky out/flaky.txt
        deps: [out/left.json, out/right.json]
        outs: [out/flaky.txt]
""")


def _mini_repo(root: Path) -> Path:
    root.mkdir(parents=True)
    h.git(root, "init", "-q")
    assert run_dvc(["init", "-q"], root).returncode == 0
    (root / "tools.py").write_text(TOOLS)
    (root / "dvc.yaml").write_text(MINI_DVC)
    (root / "data").mkdir()
    (root / "data" / "corpus.txt").write_text("一张图片\n")
    assert run_dvc(["add", "data"], root).returncode == 0
    return root


def _cli(args: list[str], cwd: Path, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = h.env()
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return subprocess.run([sys.executable, "-m", "r2d2.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PREFECT_HOME for the module: its database is migrated once (slow on a busy 2-core machine)."""
    return tmp_path_factory.mktemp("prefect-home")


def test_stage_graph_expands_foreach() -> None:
    graph = stage_graph(h.REPO)
    assert list(graph)[:4] == ["ingest", "validate", "snapshot", "pretrain"]
    assert graph["finetune@demo-retrieval"].upstream == ["pretrain"]
    assert graph["evaluate@demo-matching"].upstream == ["finetune@demo-matching"]
    assert set(graph["report"].upstream) >= {"evaluate@demo-retrieval", "evaluate@demo-matching"}
    assert graph["promote"].upstream == ["register"]
    assert list(graph)[-1] == "promote"
    assert "artifacts/eval/demo-retrieval/metrics.json" in graph["evaluate@demo-retrieval"].outs


def test_targets_select_their_upstream() -> None:
    import importlib

    from r2d2.commands.pipeline import load_flow

    load_flow(h.REPO)
    selected = importlib.import_module("flows.pipeline")._selected
    graph = stage_graph(h.REPO)
    assert selected(graph, ["report"]) == [s for s in graph if s not in ("register", "promote")]
    assert selected(graph, ["finetune@demo-matching"]) == ["ingest", "validate", "snapshot", "pretrain",
                                                           "finetune@demo-matching"]
    with pytest.raises(ValueError, match="unknown stage"):
        selected(graph, ["nope"])


def test_retry_condition_only_retries_transient_failures() -> None:
    import importlib

    from prefect.states import Failed

    from r2d2.commands.pipeline import load_flow

    load_flow(h.REPO)  # flows/ is project code: on sys.path from the checkout
    _transient = importlib.import_module("flows.pipeline")._transient

    def state(exc: BaseException) -> object:
        return Failed(data=exc)

    assert _transient(None, None, state(StageFailed("x", 1, "Unable to acquire lock", True)))
    assert not _transient(None, None, state(StageFailed("validate", 1, "rejected share 80% > 50%", False)))
    assert not _transient(None, None, state(ValueError("bad param")))
    assert _transient(None, None, state(ConnectionRefusedError("remote away")))


def test_flow_fans_out_retries_and_keeps_dvc_lock_true(tmp_path: Path, prefect_home: Path) -> None:
    """Two independent stages run at once; a transient failure is retried; dvc.lock ends up complete."""
    root = _mini_repo(tmp_path / "mini")
    proc = _cli(["pipeline", "run", "--repo", str(root), "--retry-delay", "0.2"], root, prefect_home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    left = json.loads((root / "out" / "left.json").read_text())
    right = json.loads((root / "out" / "right.json").read_text())
    assert max(left["start"], right["start"]) < min(left["end"], right["end"]), "left and right did not overlap"
    assert (root / "attempts.txt").read_text() == "2"  # failed once (transient), retried once
    assert (root / "out" / "flaky.txt").read_text() == "ok after 2 attempts"
    assert "stages: 4 ran" in proc.stdout
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"first", "left", "right", "flaky"}
    assert run_dvc(["status", "--quiet"], root).returncode == 0  # nothing left to run: DVC agrees with the flow
    again = run_stage("flaky", root)
    assert again.status == "skipped"


def test_non_transient_failure_stops_at_once(tmp_path: Path) -> None:
    root = _mini_repo(tmp_path / "mini")
    (root / "dvc.yaml").write_text(MINI_DVC + "  broken:\n    cmd: python -c \"import sys; sys.exit('bad input: no rows')\"\n"
                                   "    deps: [out/first.txt]\n")
    with pytest.raises(StageFailed) as err:
        run_stage("broken", root)
    assert not err.value.transient and "bad input" in err.value.tail


def test_pipeline_run_cli_prints_champion_and_links(tmp_path_factory: pytest.TempPathFactory, prefect_home: Path) -> None:
    """The main job's command on the reproduced tiny checkout: only the stage whose param changed runs."""
    root = h.clone_template(tmp_path_factory, "flow-cli")
    h.write_params(root, {"promote": {"margin": 0.25}})
    home = prefect_home
    proc = _cli(["pipeline", "run"], root, home)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "stages: 1 ran" in out and "(ran: promote)" in out, out
    assert "champion: R2D2 version 1" in out
    assert "demo-retrieval: " in out and "mr " in out
    assert "MLflow UI:  http://127.0.0.1:5000/#/models/R2D2/versions/1" in out and "mlflow ui --backend-store-uri" in out
    assert "Prefect UI: http://127.0.0.1:4200/runs/flow-run/" in out
    assert "Data Docs:  file://" in out
    # Prefect recorded the run, one task per stage, and the artifacts
    db = sqlite3.connect(home / "prefect.db")
    try:
        (run_id, state), = db.execute("select id, state_type from flow_run order by created desc limit 1").fetchall()
        tasks = {r[0] for r in db.execute("select name from task_run where flow_run_id = ?", (run_id,)).fetchall()}
        artifacts = {r[0]: (r[1], json.loads(r[2]) if str(r[2]).startswith('"') else str(r[2]))
                     for r in db.execute("select key, type, data from artifact where flow_run_id = ?", (run_id,)).fetchall()}
    finally:
        db.close()
    assert state == "COMPLETED"
    assert {"ingest", "pretrain", "finetune@demo-retrieval", "finetune@demo-matching", "promote"} <= tasks
    kind, data = artifacts["r2d2-report"]
    assert kind == "markdown" and "| demo-retrieval | retrieval | T→I R@1 |" in data and "| promote | ran |" in data
    assert "http://127.0.0.1:5000/#/experiments/" in artifacts["mlflow-run"][1]  # link artifacts render as markdown
    assert "file://" in artifacts["data-docs"][1] and "data_docs" in artifacts["data-docs"][1]

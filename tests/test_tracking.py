"""MLflow tracking of `r2d2 pretrain` / `r2d2 evaluate`, embedded store and real server.

Embedded: the CLI commands run in-process in a tmp project (params.yaml there makes it the
project root) and must leave `mlflow.db` + `mlruns/` in it, with params, per-step losses at
the steps the trainer logged, system metrics, loss/recall/ROC plots and the evaluation JSON.
Server (marked `servers`): `r2d2 services` starts SeaweedFS + `mlflow server` on 127.0.0.1;
with only MLFLOW_TRACKING_URI set, training tracks by default, and a registered + promoted
version's weights land in the S3 bucket.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from r2d2.registry.tracking import (
    TrackingSettings,
    load_tracking_settings,
    resolve_tracking_uri,
    should_track,
)

PARAMS = """
model: {size: tiny}
pretrain: {batch_size: 16, max_steps: 4, warmup_steps: 1, log_every: 2, ckpt_every: 4, distill: {queue_size: 32}}
evaluate: {rerank_k: 4, batch_size: 32}
"""


def test_when_tracking_is_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert not should_track(None) and should_track(True)
    assert should_track(None, TrackingSettings(enabled=True)) and not should_track(False, TrackingSettings(enabled=True))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert should_track(None) and not should_track(None, TrackingSettings(enabled=False))
    monkeypatch.setenv("RANK", "1")  # torchrun worker: never, whatever the flags
    assert not should_track(True)
    assert resolve_tracking_uri() == "http://127.0.0.1:1" and resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(root=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    p = tmp_path / "params.yaml"
    p.write_text("tracking: {enabled: true, experiment: demo, system_metrics_interval: 2}\n")
    assert load_tracking_settings(p) == TrackingSettings(enabled=True, experiment="demo", system_metrics_interval=2)
    p.write_text("tracking: {enabeld: true}\n")
    from r2d2.errors import UserError

    with pytest.raises(UserError, match="enabeld"):
        load_tracking_settings(p)

    from r2d2.registry.tracking import NullRun, start_run

    assert type(start_run(False)) is NullRun
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="not answering"):  # a dead server: seconds, not MLflow's retries
        start_run(True, uri=f"http://127.0.0.1:{_closed_port()}")
    assert time.perf_counter() - t0 < 10


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from r2d2.cli import main

    work = tmp_path_factory.mktemp("tracked")
    (work / "params.yaml").write_text(PARAMS)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(["demo-data", "--out", "corpus", "--seed", "3", "--train-images", "48", "--eval-images", "16"]) == 0
    finally:
        os.chdir(cwd)
    return work


def _runs(uri: str, experiment: str = "r2d2") -> list:
    from r2d2.registry.tracking import client_for

    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_embedded_store_tracks_pretrain_and_evaluate(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from r2d2.cli import main
    from r2d2.registry.tracking import client_for

    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{project.resolve()}/mlflow.db"

    t0 = time.perf_counter()
    assert main(["pretrain", "--data", "corpus/train", "--out", "runs/pre2", "--no-progress", "--mlflow"]) == 0
    assert (project / "mlflow.db").is_file() and (project / "mlruns").is_dir()
    (run,) = _runs(uri)
    client = client_for(uri)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-pre2"
    assert run.data.params["model.vision.width"] == "64" and run.data.params["pretrain.batch_size"] == "16"
    assert run.data.tags["r2d2.stage"] == "pretrain" and run.data.tags["lineage.git_commit"]
    history = [json.loads(x) for x in (project / "runs/pre2/history.jsonl").read_text().splitlines()]
    logged = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, round(m.value, 6)) for m in logged] == [(h["step"], round(h["loss"], 6)) for h in history]
    assert [m.step for m in logged] == [2, 4]
    assert {"gcpr", "fgr", "mlm", "lr", "samples_per_s"} <= set(run.data.metrics)
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
    arts = _artifacts(client, run.info.run_id)
    assert {"train/loss.png", "train/history.jsonl", "train/train_metrics.json"} <= arts
    assert (project / "mlruns").resolve().as_uri() in run.info.artifact_uri  # next to the db, not ./mlruns of the cwd
    print(f"tracked pretrain: {time.perf_counter() - t0:.1f}s")

    evaluate = ["evaluate", "--model", "runs/pre2/model", "--retrieval", "corpus/eval/retrieval:valid",
                "--matching", "corpus/eval/matching/valid.jsonl", "--out", "eval/metrics.json"]
    assert main(evaluate) == 0  # neither --mlflow, tracking.enabled nor MLFLOW_TRACKING_URI: no run
    assert len(_runs(uri)) == 1
    assert main(["evaluate", "--model", "runs/pre2/model", "--retrieval", "corpus/eval/retrieval:valid",
                 "--matching", "corpus/eval/matching/valid.jsonl", "--out", "eval/metrics.json", "--mlflow",
                 "--run-name", "eval-demo"]) == 0
    metrics = json.loads((project / "eval/metrics.json").read_text())
    ev = [r for r in _runs(uri) if r.info.run_name == "eval-demo"][0]
    assert ev.data.metrics["retrieval.mr"] == pytest.approx(metrics["retrieval"]["mr"])
    assert ev.data.metrics["retrieval.t2i.r5"] == pytest.approx(metrics["retrieval"]["t2i"]["r5"])
    assert ev.data.metrics["matching.auc"] == pytest.approx(metrics["matching"]["auc"])
    arts = _artifacts(client, ev.info.run_id)
    assert {"evaluation/metrics.json", "plots/recall_at_k.png", "plots/matching_roc.png"} <= arts
    local = Path(client.download_artifacts(ev.info.run_id, "plots/matching_roc.png", str(project / "dl")))
    assert Image.open(local).size[0] > 300
    logged_json = json.loads(Path(client.download_artifacts(ev.info.run_id, "evaluation/metrics.json",
                                                            str(project / "dl"))).read_text())
    assert logged_json == metrics


@pytest.mark.servers
def test_server_mode_tracks_registers_and_promotes(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    from r2d2.cli import main
    from r2d2.registry import promote as promote_mod
    from r2d2.registry.register import register_model
    from r2d2.registry.tracking import client_for
    from r2d2.services import ServiceManager, ServicesConfig
    from r2d2.services.seaweedfs import s3_client

    manager = ServiceManager(ServicesConfig(), root=project / "srv")
    t0 = time.perf_counter()
    try:
        manager.up("mlflow", echo=lambda _m: None)
        started = time.perf_counter() - t0
        env = manager.exports()
        uri = env["MLFLOW_TRACKING_URI"]
        assert uri.startswith("http://127.0.0.1:")
        monkeypatch.chdir(project)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the only switch: tracking is on by default now
        assert main(["pretrain", "--data", "corpus/train", "--out", "runs/srv", "--no-progress", "--max-steps", "2",
                     "--run-name", "on-server"]) == 0
        (run,) = [r for r in _runs(uri) if r.info.run_name == "on-server"]
        client = client_for(uri)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [2]
        assert "train/loss.png" in _artifacts(client, run.info.run_id)

        capsys.readouterr()
        assert main(["register", "--model", "runs/srv/model", "--metrics", f"demo={_write(project / 'm.json', 30.0)}",
                     "--json"]) == 0
        first = json.loads(capsys.readouterr().out)["version"]  # stdout is pure JSON, even on a server
        assert promote_mod.promote("R2D2").champion_after == first

        # Two in-process promoters race (threads, one host: the lock file serialises them).
        best = register_model(project / "runs/srv/model", {"demo": _write(project / "best.json", 90.0)}, "R2D2",
                              repo=project).version
        worse = register_model(project / "runs/srv/model", {"demo": _write(project / "worse.json", 80.0)}, "R2D2",
                               repo=project).version
        decide = promote_mod.decide_promotion
        monkeypatch.setattr(promote_mod, "decide_promotion", lambda *a, **k: (time.sleep(1.0), decide(*a, **k))[1])
        results: dict[str, promote_mod.PromotionResult] = {}
        threads = [threading.Thread(target=lambda v=v: results.setdefault(v, promote_mod.promote("R2D2", version=v)))
                   for v in (best, worse)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert str(client.get_model_version_by_alias("R2D2", "champion").version) == best
        befores = sorted(r.champion_before for r in results.values())
        assert befores in (sorted([first, best]), sorted([first, worse]))  # the second saw the first's move

        s3 = s3_client(env["MLFLOW_S3_ENDPOINT_URL"], manager.credentials())
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="r2d2-mlflow").get("Contents", [])]
        assert any(k.endswith("artifacts/model.safetensors") or k.endswith("model/model.safetensors") for k in keys), keys[:20]
        assert any(k.endswith("train/loss.png") for k in keys)
        print(f"server mode: mlflow healthy after {started:.1f}s, test {time.perf_counter() - t0:.1f}s")
    finally:
        manager.down(echo=lambda _m: None)


def _write(path: Path, mr: float) -> Path:
    path.write_text(json.dumps({"retrieval": {"t2i": {"r1": mr, "r5": mr, "r10": mr}, "mr": mr}}))
    return path

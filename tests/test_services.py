"""`r2d2 services` and the DVC remotes, against real servers on 127.0.0.1.

One SeaweedFS, one MLflow server and one Prefect server per module. S3 starts first; MLflow
and Prefect start in a background thread while the S3/DVC tests run, because on a 2-core
machine their cold start (fresh SQLite schemas) is the longest part of this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from r2d2.errors import UserError
from r2d2.services import (
    ServiceManager,
    ServicesConfig,
    base,
    configure_local_remote,
    configure_s3_remote,
    default_remote,
    load_services_config,
)
from r2d2.services.config import parse_services_config
from r2d2.services.manager import SERVICES, parse_only, with_requirements

QUIET = lambda _msg: None  # noqa: E731
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("project")
    mgr = ServiceManager(ServicesConfig(), root=root)
    mgr.background = None
    yield mgr
    if mgr.background is not None:
        mgr.background.join(timeout=300)
    mgr.down(echo=QUIET)


@pytest.fixture(scope="module")
def s3(manager: ServiceManager):
    """SeaweedFS up and healthy; MLflow and Prefect start meanwhile in the background."""
    manager.up("s3", echo=QUIET)
    errors: list[BaseException] = []

    def start_rest() -> None:
        try:
            manager.up("mlflow,prefect", echo=QUIET)
        except BaseException as err:  # re-raised in the test that needs them
            errors.append(err)

    manager.background = threading.Thread(target=start_rest, daemon=True)
    manager.background.errors = errors
    manager.background.start()
    return manager.s3_endpoint(), manager.credentials()


@pytest.fixture(scope="module")
def servers(manager: ServiceManager, s3) -> ServiceManager:
    manager.background.join(timeout=300)
    if manager.background.errors:
        raise manager.background.errors[0]
    return manager


def _client(endpoint: str, access: str, secret: str, **kw):
    from r2d2.services.seaweedfs import s3_client

    return s3_client(endpoint, {"access_key_id": access, "secret_access_key": secret}, **kw)


def _sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- no server


def test_config_is_strict_and_adds_buckets(tmp_path: Path) -> None:
    cfg = parse_services_config({"s3": {"buckets": ["other-bucket"], "port": 18333}})
    assert cfg.s3.buckets == ["other-bucket", "r2d2-dvc", "r2d2-mlflow"]
    params = tmp_path / "params.yaml"
    params.write_text("services:\n  mlflow: {workers: 2}\n  state_dir: /tmp/x\n", encoding="utf-8")
    assert load_services_config(params).mlflow.workers == 2
    params.write_text("services:\n  mlflow: {wrokers: 2}\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"services: mlflow\.wrokers: unknown key"):
        load_services_config(params)
    with pytest.raises(UserError, match=r"s3\.prot: unknown key"):
        parse_services_config({"s3": {"prot": 1}})
    with pytest.raises(UserError, match="invalid bucket"):
        parse_services_config({"s3": {"buckets": ["No_Such"]}})
    with pytest.raises(UserError, match="unknown service"):
        parse_only("s3,minio")
    assert with_requirements(parse_only("prefect,mlflow")) == ["s3", "mlflow", "prefect"]


def test_failed_start_names_the_log_and_stops_the_process(tmp_path: Path, monkeypatch) -> None:
    """A server that never gets healthy is killed, and the error points at its log."""

    class Sleeper(type(SERVICES["prefect"])):
        def command(self, ctx, ports):
            return [sys.executable, "-c", "import time; print('booting', flush=True); time.sleep(60)"]

        def start_timeout(self, ctx):
            return 2.0

    class Crasher(Sleeper):
        def command(self, ctx, ports):
            return [sys.executable, "-c", "import sys; print('bad flag'); sys.exit(3)"]

    mgr = ServiceManager(ServicesConfig(), root=tmp_path)
    monkeypatch.setitem(SERVICES, "prefect", Sleeper())
    with pytest.raises(UserError, match=r"did not answer .* within 2s .*prefect\.log(.|\n)*booting") as err:
        mgr.up("prefect", echo=QUIET)
    pid = mgr.load_state()["services"]["prefect"]["pid"]
    assert pid is None and "start_timeout_s" in str(err.value)
    monkeypatch.setitem(SERVICES, "prefect", Crasher())
    with pytest.raises(UserError, match=r"exited with code 3 while starting(.|\n)*bad flag"):
        mgr.up("prefect", echo=QUIET)
    assert (tmp_path / ".r2d2/services/.gitignore").read_text().strip().endswith("*")
    assert oct((tmp_path / ".r2d2/services").stat().st_mode & 0o777) == "0o700"


# --------------------------------------------------------------------------- S3 + DVC


@pytest.mark.servers
def test_s3_accepts_only_the_generated_keys(s3, manager: ServiceManager) -> None:
    from botocore import UNSIGNED
    from botocore.exceptions import ClientError

    endpoint, creds = s3
    good = _client(endpoint, creds["access_key_id"], creds["secret_access_key"])
    names = {b["Name"] for b in good.list_buckets()["Buckets"]}
    assert {"r2d2-dvc", "r2d2-mlflow"} <= names
    for access, secret in [(creds["access_key_id"], "not-the-secret"), ("AKIAWRONGKEY", creds["secret_access_key"])]:
        with pytest.raises(ClientError) as err:
            _client(endpoint, access, secret).list_objects_v2(Bucket="r2d2-dvc")
        assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}
    with pytest.raises(ClientError):
        _client(endpoint, "x", "y", signature_version=UNSIGNED).put_object(Bucket="r2d2-dvc", Key="k", Body=b"1")
    sd = manager.state_dir
    for private in (sd / "credentials.json", sd / "s3/identities.json"):
        assert private.stat().st_mode & 0o077 == 0, private
    assert creds["secret_access_key"] not in (sd / "state.json").read_text()


def _dvc(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["DVC_NO_ANALYTICS"] = "1"
    proc = subprocess.run([base.executable("dvc"), *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{out}"
    return out


@pytest.mark.servers
def test_dvc_push_wipe_pull_roundtrip(s3, tmp_path: Path) -> None:
    endpoint, creds = s3
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    outputs = [_dvc(repo, "init", "-q")]
    data = repo / "corpus"
    (data / "sub").mkdir(parents=True)
    for i in range(5):
        (data / f"img_{i}.bin").write_bytes(os.urandom(2048 + i))
    (data / "sub" / "captions.jsonl").write_text('{"text": "一只红色的圆形"}\n', encoding="utf-8")
    before = _sha(data)

    folder = configure_local_remote(repo, "storage/dvc")
    assert folder == (repo / "storage/dvc").resolve() and (folder / ".gitignore").exists()
    url = configure_s3_remote(repo, endpoint, "r2d2-dvc", prefix=f"t/{tmp_path.name}", credentials=creds,
                              default=True)
    committed = (repo / ".dvc/config").read_text()
    local = (repo / ".dvc/config.local").read_text()
    assert "remote = local" in committed and "../storage/dvc" in committed and url in committed
    assert creds["secret_access_key"] not in committed and creds["access_key_id"] not in committed
    assert endpoint not in committed and endpoint in local and creds["secret_access_key"] in local
    assert (repo / ".dvc/config.local").stat().st_mode & 0o077 == 0
    assert default_remote(repo) == "s3"
    ignored = subprocess.run(["git", "check-ignore", ".dvc/config.local", "storage/dvc/x"], cwd=repo,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == [".dvc/config.local", "storage/dvc/x"]

    outputs += [_dvc(repo, "add", "corpus"), _dvc(repo, "push"), _dvc(repo, "push", "-r", "local")]
    keys = [o["Key"] for o in _client(endpoint, creds["access_key_id"], creds["secret_access_key"])
            .list_objects_v2(Bucket="r2d2-dvc", Prefix=f"t/{tmp_path.name}/")["Contents"]]
    assert len(keys) >= 7  # 6 files + the .dir listing
    assert len([p for p in folder.rglob("*") if p.is_file() and p.name != ".gitignore"]) >= 7

    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(data)
    outputs.append(_dvc(repo, "pull"))
    assert _sha(data) == before
    for out in outputs:
        assert creds["secret_access_key"] not in out and creds["access_key_id"] not in out


# --------------------------------------------------------------------------- MLflow + Prefect


def _http(method: str, url: str, body: bytes | dict | None = None) -> dict:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else {}


@pytest.mark.servers
def test_mlflow_server_stores_artifacts_in_s3(servers: ServiceManager) -> None:
    """Log a run and an artifact through the server's REST API (what MlflowClient does, minus
    its 7 s import); the artifact must land in the S3 bucket, not on the server's disk."""
    env = servers.exports()
    api = env["MLFLOW_TRACKING_URI"] + "/api/2.0"
    exp = _http("POST", f"{api}/mlflow/experiments/create", {"name": "services-test"})["experiment_id"]
    run = _http("POST", f"{api}/mlflow/runs/create", {"experiment_id": exp})["run"]["info"]
    _http("POST", f"{api}/mlflow/runs/log-parameter", {"run_id": run["run_id"], "key": "lr", "value": "0.001"})
    uri = run["artifact_uri"]
    assert uri.startswith("mlflow-artifacts:/"), uri
    path = uri.removeprefix("mlflow-artifacts:").lstrip("/") + "/report.txt"
    _http("PUT", f"{api}/mlflow-artifacts/artifacts/{path}", b"R@1 0.42\n")
    listed = _http("GET", f"{api}/mlflow/artifacts/list?run_id={run['run_id']}")
    assert [f["path"] for f in listed["files"]] == ["report.txt"]

    s3c = _client(env["MLFLOW_S3_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket="r2d2-mlflow").get("Contents", [])]
    assert keys == [path], keys
    assert s3c.get_object(Bucket="r2d2-mlflow", Key=path)["Body"].read() == b"R@1 0.42\n"
    assert not list((servers.state_dir / "mlflow").rglob("report.txt"))


@pytest.mark.servers
def test_prefect_flow_runs_against_the_server(servers: ServiceManager, tmp_path: Path) -> None:
    api = servers.exports()["PREFECT_API_URL"]
    script = (
        "from prefect import flow\n"
        "@flow(name='r2d2-services-smoke')\n"
        "def smoke(x: int) -> int:\n"
        "    return x + 1\n"
        "assert smoke(41) == 42\n"
    )
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "client-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    body = json.dumps({"flows": {"name": {"any_": ["r2d2-services-smoke"]}}}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=10) as resp:
        runs = json.load(resp)
    assert [r["state_type"] for r in runs] == ["COMPLETED"]


@pytest.mark.servers
def test_cli_status_env_and_loopback_only(servers: ServiceManager, monkeypatch, capsys) -> None:
    from r2d2.cli import main

    monkeypatch.chdir(servers.root)
    sd = str(servers.state_dir)
    secret = servers.credentials()["secret_access_key"]
    assert main(["services", "status", "--json", "--state-dir", sd]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {n: s["state"] for n, s in status["services"].items()} == dict.fromkeys(("s3", "mlflow", "prefect"), "healthy")
    assert all(s["url"].startswith("http://127.0.0.1:") and s["rss_mib"] > 0 for s in status["services"].values())
    assert main(["services", "status", "--state-dir", sd]) == 0
    table = capsys.readouterr().out
    assert secret not in json.dumps(status) and secret not in table and "secret hidden" in table
    assert main(["services", "env", "--state-dir", sd]) == 0
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", capsys.readouterr().out, re.M))
    assert exports["AWS_SECRET_ACCESS_KEY"] == secret
    assert exports["PREFECT_API_URL"] == status["services"]["prefect"]["url"] + "/api"
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"} <= set(exports)
    for log in servers.state_dir.rglob("*.log"):
        assert secret not in log.read_text(errors="replace"), log

    # Every listening socket of every server process (workers included) is on 127.0.0.1.
    pids = {p for s in status["services"].values() for p in base.group_pids(s["pid"])}
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ours = [line.split()[3] for line in ss.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert len(ours) >= 12  # weed: 5 HTTP + 5 gRPC; mlflow; prefect
    assert all(addr.startswith("127.0.0.1:") for addr in ours), ours


@pytest.mark.servers
def test_down_stops_everything_and_s3_data_survives_restart(servers: ServiceManager) -> None:
    creds = servers.credentials()
    c = _client(servers.s3_endpoint(), creds["access_key_id"], creds["secret_access_key"])
    c.put_object(Bucket="r2d2-dvc", Key="survivor.txt", Body=b"still here")
    before = {s.name: s for s in servers.status()}
    pids = [s.pid for s in before.values()]
    assert sorted(servers.down(echo=QUIET)) == ["mlflow", "prefect", "s3"]
    assert not any(base.group_pids(p) for p in pids)
    assert {s.state for s in servers.status()} == {"stopped"}
    assert all(base.port_is_free(s.ports[role]) for s in before.values() for role in s.ports)
    tmp = Path(os.environ.get("TMPDIR") or "/tmp")
    assert not [p for port in before["s3"].ports.values() for p in tmp.glob(f"seaweedfs-*-{port}.sock")]
    assert servers.exports() == {}

    servers.up("s3", echo=QUIET)  # same port again, same keys, the objects still there
    assert servers.s3_endpoint() == before["s3"].url
    c = _client(servers.s3_endpoint(), creds["access_key_id"], creds["secret_access_key"])
    assert c.get_object(Bucket="r2d2-dvc", Key="survivor.txt")["Body"].read() == b"still here"

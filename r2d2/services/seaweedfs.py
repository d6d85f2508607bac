"""SeaweedFS `weed mini` as the project's S3 store (DVC remote, MLflow artifacts).

`weed mini` runs master, volume, filer and S3 gateway in one process (~110 MiB, S3 ready
in ~1 s, stops in ~2 s) with real SigV4 authentication. Its defaults are wrong for a
laptop: it advertises the machine's address, binds 0.0.0.0, reports telemetry, and opens
WebDAV, Iceberg and Lance ports. We pass every port explicitly (ten of them: each HTTP
port p plus its gRPC port p + 10000, which its maintenance worker assumes whatever the
flags say) so two checkouts never collide, and keys come from a generated
`identities.json` in the state dir, never from the command line or the environment.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

from r2d2.services.base import Context, Service, child_env, executable, http_json, http_ok
from r2d2.services.config import LOOPBACK

CREDENTIALS_FILE = "credentials.json"
_ROLES = ("master", "volume", "filer", "admin")


def write_private(path: Path, text: str) -> None:
    """Write a file only the owner can read (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def load_or_create_credentials(state_dir: Path, region: str) -> dict[str, str]:
    """The S3 keys of this checkout: generated once, then kept (DVC's config.local uses them)."""
    path = state_dir / CREDENTIALS_FILE
    if path.exists():
        creds = json.loads(path.read_text(encoding="utf-8"))
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        creds.setdefault("region", region)
        return creds
    alphabet = string.ascii_uppercase + string.digits
    creds = {
        "access_key_id": "R2D2" + "".join(secrets.choice(alphabet) for _ in range(16)),
        "secret_access_key": secrets.token_urlsafe(30),
        "region": region,
    }
    write_private(path, json.dumps(creds, indent=2) + "\n")
    return creds


def identities_json(creds: dict[str, str]) -> str:
    """SeaweedFS `-s3.config` content: one identity with full rights on every bucket."""
    return json.dumps(
        {
            "identities": [
                {
                    "name": "r2d2",
                    "credentials": [{"accessKey": creds["access_key_id"], "secretKey": creds["secret_access_key"]}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        },
        indent=2,
    )


def mask(value: str, keep: int = 4) -> str:
    """Show only the start of an access key id; secrets are never shown at all."""
    return value[:keep] + "*" * max(4, len(value) - keep) if value else ""


def s3_client(endpoint: str, creds: dict[str, str], **config: Any) -> Any:
    """A boto3 S3 client for the local store (path-style addressing, SigV4, no proxies)."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4", "proxies": {},
                               "retries": {"max_attempts": 2}}
    options.update(config)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        region_name=creds.get("region", "us-east-1"),
        config=Config(**options),
    )


class SeaweedFS(Service):
    name = "s3"
    port_roles = ("s3", *_ROLES)
    grpc_offset = 10000

    def fixed_port(self, ctx: Context) -> int | None:
        return ctx.config.s3.port

    def log_path(self, ctx: Context) -> Path:
        return self.workdir(ctx) / "weed.log"

    def prepare(self, ctx: Context) -> None:
        super().prepare(ctx)
        (self.workdir(ctx) / "data").mkdir(exist_ok=True)
        write_private(self.workdir(ctx) / "identities.json", identities_json(ctx.credentials))

    def command(self, ctx: Context, ports: dict[str, int]) -> list[str]:
        work = self.workdir(ctx)
        cmd = [
            executable("weed"),
            "-logtostderr",  # glog would otherwise drop weed.* files into /tmp
            "mini",
            f"-dir={work / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={work / 'identities.json'}",
            f"-bucket={','.join(ctx.config.s3.buckets)}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
        ]
        for role in _ROLES:
            cmd += [f"-{role}.port={ports[role]}", f"-{role}.port.grpc={ports[role + '_grpc']}"]
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and outlive the server; keep them
        # in the state dir when the path fits in sun_path (108 bytes).
        if len(str(work / "filer.sock")) < 100:
            cmd += [f"-s3.localSocket={work / 's3.sock'}", f"-filer.localSocket={work / 'filer.sock'}"]
        return cmd

    def environment(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        # weed mini creates an admin user from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and
        # buckets from S3_BUCKET: strip them so only identities.json counts.
        return child_env({}, drop_prefixes=("AWS_", "S3_"))

    def health_url(self, ports: dict[str, int]) -> str:
        return f"{self.url(ports)}/healthz"

    def is_ready(self, ctx: Context, ports: dict[str, int]) -> bool:
        """S3 answers and the master knows every volume on disk.

        After a restart the S3 gateway says healthy ~1.5 s before the volume server has
        re-registered its volumes with the master; reads of existing objects fail with
        InternalError ("volume 1 not found") in that window.
        """
        if not self.is_healthy(ctx, ports):
            return False
        status = http_json(f"http://{LOOPBACK}:{ports['master']}/dir/status")
        try:
            nodes = [n for dc in status["Topology"]["DataCenters"] or [] for r in dc["Racks"] for n in r["DataNodes"]]
        except (TypeError, KeyError):
            return False
        on_disk = len(list((self.workdir(ctx) / "data").glob("*.dat")))
        return bool(nodes) and sum(int(n.get("Volumes", 0)) for n in nodes) >= on_disk

    def start_timeout(self, ctx: Context) -> float:
        return ctx.config.s3.start_timeout_s

    def after_healthy(self, ctx: Context, ports: dict[str, int]) -> None:
        ensure_buckets(self.url(ports), ctx.credentials, ctx.config.s3.buckets)

    def after_stop(self, ctx: Context, ports: dict[str, int]) -> None:
        """Remove the gRPC unix sockets weed leaves in $TMPDIR (their paths are not settable)."""
        tmp = Path(os.environ.get("TMPDIR") or "/tmp")
        for role, port in ports.items():
            if role.endswith("_grpc"):
                for sock in tmp.glob(f"seaweedfs-*-grpc-{port}.sock"):
                    if sock.is_socket() and sock.stat().st_uid == os.getuid():
                        sock.unlink(missing_ok=True)

    def exports(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        endpoint = self.url(ports)
        return {
            "AWS_ACCESS_KEY_ID": ctx.credentials["access_key_id"],
            "AWS_SECRET_ACCESS_KEY": ctx.credentials["secret_access_key"],
            "AWS_DEFAULT_REGION": ctx.credentials.get("region", "us-east-1"),
            "AWS_ENDPOINT_URL_S3": endpoint,
            "MLFLOW_S3_ENDPOINT_URL": endpoint,
        }


def ensure_buckets(endpoint: str, creds: dict[str, str], buckets: list[str], timeout: float = 20.0) -> None:
    """Create missing buckets with the generated keys (also proves the keys are accepted).

    `-bucket=` normally pre-creates them; the S3 gateway may answer /healthz a moment before
    the filer behind it accepts writes, so errors are retried until `timeout`.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(endpoint, creds)
    deadline = time.monotonic() + timeout
    while True:
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            for bucket in buckets:
                if bucket not in existing:
                    client.create_bucket(Bucket=bucket)
            return
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() > deadline:
                from r2d2.errors import UserError

                raise UserError(f"S3 store at {endpoint} did not accept the generated keys: {err}") from None
            if not http_ok(f"{endpoint}/healthz"):
                time.sleep(0.5)
            time.sleep(0.3)

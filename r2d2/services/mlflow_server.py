"""`mlflow server` on 127.0.0.1: SQLite backend in the state dir, artifacts on the S3 store.

The server proxies artifacts (`--artifacts-destination s3://<bucket>/`), so clients need
only MLFLOW_TRACKING_URI; the S3 keys stay with the server. With its defaults MLflow 3
spawns ~10 processes (~1.8 GB) for its job runner; `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`
and one uvicorn worker bring it to 2 processes, ~0.5 GB, healthy in 5-15 s.
"""

from __future__ import annotations

from r2d2.services.base import Context, Service, child_env, executable
from r2d2.services.config import LOOPBACK


class MlflowServer(Service):
    name = "mlflow"
    requires = ("s3",)

    def fixed_port(self, ctx: Context) -> int | None:
        return ctx.config.mlflow.port

    def db_uri(self, ctx: Context) -> str:
        return f"sqlite:///{(self.workdir(ctx) / 'mlflow.db').resolve()}"

    def command(self, ctx: Context, ports: dict[str, int]) -> list[str]:
        return [
            executable("mlflow"),
            "server",
            "--host",
            LOOPBACK,
            "--port",
            str(ports["http"]),
            "--workers",
            str(ctx.config.mlflow.workers),
            "--backend-store-uri",
            self.db_uri(ctx),
            "--serve-artifacts",
            "--artifacts-destination",
            f"s3://{ctx.config.s3.mlflow_bucket}/",
        ]

    def environment(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        s3_port = ctx.ports["s3"]["s3"]
        return child_env(
            {
                "MLFLOW_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{s3_port}",
                "AWS_ACCESS_KEY_ID": ctx.credentials["access_key_id"],
                "AWS_SECRET_ACCESS_KEY": ctx.credentials["secret_access_key"],
                "AWS_DEFAULT_REGION": ctx.credentials.get("region", "us-east-1"),
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            # the user's own AWS profile/session must not mix with the local keys
            drop_prefixes=("AWS_", "MLFLOW_TRACKING_", "MLFLOW_S3_"),
        )

    def health_url(self, ports: dict[str, int]) -> str:
        return f"{self.url(ports)}/health"

    def start_timeout(self, ctx: Context) -> float:
        return ctx.config.mlflow.start_timeout_s

    def exports(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.url(ports)}

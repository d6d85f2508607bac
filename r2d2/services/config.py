"""The `services:` section of params.yaml: which local servers `r2d2 services` runs, and where.

Everything binds to 127.0.0.1 and that is not configurable on purpose: these servers carry
no TLS and (MLflow, Prefect) no authentication, so they must never face a network. Ports
default to free ones picked at the first start and then reused, so the DVC remote's
`endpointurl` and the exported URLs stay valid across restarts; set a port to pin it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from r2d2.errors import UserError

LOOPBACK = "127.0.0.1"
SERVICE_NAMES = ("s3", "mlflow", "prefect")
# S3 bucket names: 3-63 chars, lowercase letters, digits, dots and hyphens (SeaweedFS enforces the length).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

Port = int | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class S3Settings(_Strict):
    """SeaweedFS `weed mini`: one process with master, volume, filer and S3 gateway."""

    # S3 API port (its gRPC port is port + 10000); None = a free port, then reused.
    port: Port = Field(None, ge=1, le=55535)
    buckets: list[str] = Field(default_factory=lambda: ["r2d2-dvc", "r2d2-mlflow"])
    dvc_bucket: str = "r2d2-dvc"
    mlflow_bucket: str = "r2d2-mlflow"
    region: str = "us-east-1"
    start_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> S3Settings:
        for name in (self.dvc_bucket, self.mlflow_bucket):
            if name not in self.buckets:
                self.buckets.append(name)
        bad = [b for b in self.buckets if not _BUCKET_RE.match(b)]
        if bad:
            raise ValueError(f"invalid bucket name(s) {bad}: use 3-63 lowercase letters, digits, '.' or '-'")
        return self


class MlflowSettings(_Strict):
    """`mlflow server`: SQLite backend in the state dir, artifacts proxied to the S3 store."""

    port: Port = Field(None, ge=1, le=65535)
    # One uvicorn worker: ~0.5 GB instead of ~1.8 GB with the defaults (see STACK.md).
    workers: int = Field(1, ge=1)
    start_timeout_s: float = Field(120.0, gt=0)


class PrefectSettings(_Strict):
    """`prefect server start` with its own PREFECT_HOME (SQLite database) in the state dir."""

    port: Port = Field(None, ge=1, le=65535)
    start_timeout_s: float = Field(120.0, gt=0)


class DvcSettings(_Strict):
    """Names and locations of the DVC remotes `r2d2 services` configures."""

    local_remote_name: str = "local"
    # Relative paths are relative to the project root; the folder gets its own `.gitignore`.
    local_remote_path: str = ".r2d2/dvc-remote"
    s3_remote_name: str = "s3"
    # Key prefix inside the DVC bucket (empty = the bucket root).
    s3_prefix: str = ""


class ServicesConfig(_Strict):
    """The whole `services:` section."""

    # Relative paths are relative to the project root (the folder holding .git/.dvc/params.yaml).
    state_dir: str = ".r2d2/services"
    # SIGTERM, then SIGKILL after this long. weed mini usually stops in ~2 s, but ~12 s when
    # its admin server is in a maintenance scan (it waits 10 s for it).
    stop_timeout_s: float = Field(30.0, gt=0)
    s3: S3Settings = S3Settings()
    mlflow: MlflowSettings = MlflowSettings()
    prefect: PrefectSettings = PrefectSettings()
    dvc: DvcSettings = DvcSettings()


def parse_services_config(raw: dict[str, Any] | None, where: str = "params.yaml services") -> ServicesConfig:
    """Validate a `services:` mapping; unknown keys fail with their full path."""
    try:
        return ServicesConfig.model_validate(raw or {})
    except ValidationError as err:
        from r2d2.config import format_validation_error

        raise UserError(format_validation_error(err, where, docs="docs/services.md")) from None


def load_services_config(params_path: str | Path = "params.yaml") -> ServicesConfig:
    """Read `services:` from params.yaml (kept verbatim by r2d2.config in `Params.extra`)."""
    from r2d2.config import load_params

    params = load_params(params_path)
    return parse_services_config(params.extra.get("services"), where=f"{params_path}: services")


def find_project_root(start: str | Path | None = None) -> Path:
    """The nearest folder upwards holding .git, .dvc, dvc.yaml or params.yaml; else `start`.

    So `r2d2 services status` run from a sub-folder finds the same state as from the root.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in (".dvc", ".git", "dvc.yaml", "params.yaml")):
            return folder
    return here

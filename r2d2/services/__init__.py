"""Local servers for the pipeline, all on 127.0.0.1: an S3 store, MLflow and Prefect.

`r2d2 services up|down|status|env` is the CLI; the same is available as a library:

    from r2d2.services import ServiceManager, configure_local_remote, configure_s3_remote
    mgr = ServiceManager()                 # state in <project>/.r2d2/services/
    mgr.up(only="s3")                      # SeaweedFS with generated keys
    configure_s3_remote(".", mgr.s3_endpoint(), "r2d2-dvc", credentials=mgr.credentials())

Importing this package is cheap (no boto3, mlflow, prefect or dvc until they are used).
"""

from r2d2.services.config import (
    LOOPBACK,
    SERVICE_NAMES,
    ServicesConfig,
    load_services_config,
    parse_services_config,
)
from r2d2.services.dvc_remote import configure_local_remote, configure_s3_remote, default_remote
from r2d2.services.manager import ServiceManager, ServiceStatus

__all__ = [
    "LOOPBACK",
    "SERVICE_NAMES",
    "ServiceManager",
    "ServiceStatus",
    "ServicesConfig",
    "configure_local_remote",
    "configure_s3_remote",
    "default_remote",
    "load_services_config",
    "parse_services_config",
]

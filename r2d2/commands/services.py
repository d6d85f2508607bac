"""`r2d2 services`: local S3 store (SeaweedFS), MLflow server and Prefect server on 127.0.0.1.

    r2d2 services up [--only s3,mlflow,prefect] [--dvc-remote]
    r2d2 services status [--json]
    eval "$(r2d2 services env)"     # MLFLOW_TRACKING_URI, PREFECT_API_URL, AWS_*, MLFLOW_S3_ENDPOINT_URL
    r2d2 services down [--only ...]
    r2d2 services dvc-remote {local,s3,reset}

State (generated keys, databases, logs, pids, ports) lives in `.r2d2/services/` under the
project root, git-ignored; see docs/services.md. Keys are printed only by `env`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ORDER = 90


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file; its `services:` section configures ports etc.")
    common.add_argument("--state-dir", type=Path, help="state folder (default: services.state_dir, .r2d2/services)")
    p = subparsers.add_parser(
        "services",
        help="start/stop the local S3 store, MLflow and Prefect servers (127.0.0.1 only)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    only = "comma-separated subset of s3,mlflow,prefect (mlflow also starts s3)"

    up = sub.add_parser("up", parents=[common], help="start the servers and wait until they are healthy")
    up.add_argument("--only", help=only)
    up.add_argument("--dvc-remote", action="store_true",
                    help="also configure the `s3` DVC remote (endpoint + keys in .dvc/config.local) "
                         "and make it the default for this checkout")
    up.set_defaults(func=run_up)

    down = sub.add_parser("down", parents=[common], help="stop the servers (SIGTERM, then SIGKILL)")
    down.add_argument("--only", help=only)
    down.set_defaults(func=run_down)

    status = sub.add_parser("status", parents=[common], help="URL, pid, memory and health of each server")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=run_status)

    env = sub.add_parser("env", parents=[common], help="print `export` lines for clients (includes the S3 keys)")
    env.set_defaults(func=run_env)

    dvc = sub.add_parser("dvc-remote", parents=[common], help="configure DVC remotes of this project")
    dvc.add_argument("kind", choices=["local", "s3", "reset"],
                     help="local: folder remote as the committed default; s3: the local S3 store as this "
                          "checkout's default (needs `up`); reset: back to the committed default")
    dvc.add_argument("--path", help="folder for the local remote (default: services.dvc.local_remote_path)")
    dvc.set_defaults(func=run_dvc_remote)


def _manager(args: argparse.Namespace):  # -> ServiceManager (lazy import keeps --help fast)
    from r2d2.services import ServiceManager, load_services_config

    return ServiceManager(load_services_config(args.params), state_dir=args.state_dir)


def run_up(args: argparse.Namespace) -> int:
    from r2d2.services.manager import parse_only

    mgr = _manager(args)
    names = parse_only(args.only)
    statuses = mgr.up(names)
    _print_table(statuses)
    if args.dvc_remote:
        _configure_s3(mgr)
    print('\nfor clients: eval "$(r2d2 services env)"   (stop with: r2d2 services down)')
    return 0


def _configure_s3(mgr) -> None:
    from r2d2.errors import UserError
    from r2d2.services.dvc_remote import configure_s3_remote

    endpoint = mgr.s3_endpoint()
    if endpoint is None:
        raise UserError("the S3 store is not running; start it with `r2d2 services up --only s3`")
    d = mgr.config.dvc
    url = configure_s3_remote(mgr.root, endpoint, mgr.config.s3.dvc_bucket, prefix=d.s3_prefix,
                              credentials=mgr.credentials(), name=d.s3_remote_name, default=True)
    print(f"dvc: remote `{d.s3_remote_name}` = {url} at {endpoint} is now this checkout's default "
          f"(keys in .dvc/config.local; undo with `r2d2 services dvc-remote reset`)")


def run_down(args: argparse.Namespace) -> int:
    _manager(args).down(args.only)
    return 0


def run_status(args: argparse.Namespace) -> int:
    mgr = _manager(args)
    statuses = mgr.status()
    if args.json:
        print(json.dumps({"state_dir": str(mgr.state_dir), "credentials": mgr.masked_credentials(),
                          "services": {s.name: s.to_dict() for s in statuses}}, indent=2))
    else:
        print(f"state: {mgr.display_path(mgr.state_dir)}")
        _print_table(statuses)
        creds = mgr.masked_credentials()
        if creds:
            print(f"S3 keys: {creds['file']} (access key {creds['access_key_id']}, secret hidden; "
                  f"`r2d2 services env` prints them)")
    return 0 if all(s.state in ("healthy", "stopped", "never started") for s in statuses) else 1


def run_env(args: argparse.Namespace) -> int:
    env = _manager(args).exports()
    if not env:
        print("# no service is running; start them with `r2d2 services up`", file=sys.stderr)
        return 1
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def run_dvc_remote(args: argparse.Namespace) -> int:
    from r2d2.services.dvc_remote import configure_local_remote, default_remote, unset_local_default

    mgr = _manager(args)
    d = mgr.config.dvc
    if args.kind == "local":
        folder = configure_local_remote(mgr.root, args.path or d.local_remote_path, name=d.local_remote_name)
        print(f"dvc: remote `{d.local_remote_name}` = {folder} is the default (committed in .dvc/config)")
    elif args.kind == "s3":
        _configure_s3(mgr)
    else:
        unset_local_default(mgr.root)
        print(f"dvc: default remote is now {default_remote(mgr.root) or '(none)'}")
    return 0


def _print_table(statuses) -> None:
    rows = [("SERVICE", "STATE", "PID", "URL", "RSS", "LOG")]
    for s in statuses:
        rss = f"{s.rss_mib:.0f} MiB" if s.rss_mib is not None else "-"
        rows.append((s.name, s.state, str(s.pid or "-"), s.url or "-", rss, s.log or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

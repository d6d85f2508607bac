"""`r2d2 schedule --cron "…"`: retrain on a schedule (a Prefect cron deployment, served by this process).

    r2d2 schedule --cron "0 3 * * *"                 # every night at 03:00 UTC
    r2d2 schedule --cron "0 3 * * 1" --timezone Asia/Shanghai --data-update none

Creates the deployment `r2d2-pipeline/scheduled-retraining` with the cron schedule and a
concurrency limit of 1, then runs its scheduled runs until stopped (Ctrl-C pauses the
schedule). Each run pulls the latest data version, runs the pipeline (DVC re-runs only what
changed: unchanged data and params retrain nothing), registers, promotes and `dvc push`es.
Needs a Prefect server: PREFECT_API_URL if set, else the one of `r2d2 services`
(started on 127.0.0.1 if it is not running). See docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import os
import sys

ORDER = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "schedule",
        help="serve a cron deployment of the pipeline flow (concurrency 1): pull data, retrain if needed, promote",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *" (minute hour day month weekday)')
    p.add_argument("--timezone", default=None, help="time zone of the cron expression (default UTC), e.g. Asia/Shanghai")
    p.add_argument("--name", default=None, help="deployment name (default scheduled-retraining)")
    p.add_argument("--repo", default=".", help="pipeline checkout to run in (default: here or a parent)")
    p.add_argument("--data-update", choices=["pull", "none", "add"], default="pull",
                   help="pull (default): `git pull --ff-only` then data/ as data.dvc says; none: data.dvc as is; "
                   "add: record whatever is in data/ as a new data version")
    p.add_argument("--no-push", action="store_true", help="do not `dvc push` after each run")
    p.add_argument("--params", default="params.yaml", help="params file with the `services:` section")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from r2d2.errors import UserError
    from r2d2.pipeline.dvc import project_root

    root = project_root(args.repo)
    try:
        from croniter import croniter

        if not croniter.is_valid(args.cron):
            raise UserError(f"--cron {args.cron!r} is not a valid cron expression")
    except ImportError:  # prefect validates it anyway
        pass
    if not os.environ.get("PREFECT_API_URL"):
        from r2d2.commands.pipeline import _use_server

        _use_server(args.params, root)
        print(f"using the Prefect server of `r2d2 services` at {os.environ['PREFECT_API_URL']}", file=sys.stderr)
    if (root / "r2d2" / "__init__.py").is_file():  # runs execute this checkout's code, as the stages do
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
    from r2d2.commands.pipeline import load_flow

    load_flow(root)  # puts the checkout on sys.path for `flows`
    from flows.schedule import DEPLOYMENT, serve_pipeline

    serve_pipeline(root, args.cron, name=args.name or DEPLOYMENT, timezone=args.timezone,
                   data_update=args.data_update, push=not args.no_push)
    return 0

"""The `r2d2` command line: a thin dispatcher over library functions.

Each sub-command lives in its own module under `r2d2.commands` and exposes
`register(subparsers)`; this keeps heavy imports (torch, mlflow, prefect) out of
`r2d2 --help` and lets a command be added without touching this file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import r2d2.commands as commands_pkg
from r2d2.errors import UserError

# Nothing in this project may reach the internet at run time (hubs, telemetry).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r2d2",
        description=(
            "Pre-train, fine-tune, evaluate and ship R2D2 Chinese image-text models. "
            "Every command reads its hyperparameters from params.yaml (see `--params`) and "
            "never downloads anything: weights and data come from local paths."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `r2d2 COMMAND --help` for the options of one command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = []
    for info in pkgutil.iter_modules(commands_pkg.__path__):
        if info.name.startswith("_"):
            continue
        modules.append(importlib.import_module(f"{commands_pkg.__name__}.{info.name}"))
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as err:  # a clear message, no traceback
        print(f"r2d2 {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

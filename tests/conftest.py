"""Shared test setup: offline and quiet, exactly like the CLI (nothing may reach the internet)."""

from r2d2.cli import set_offline_env

set_offline_env()

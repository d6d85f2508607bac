"""`prefect server start` on 127.0.0.1 with its own PREFECT_HOME under the state dir.

Its SQLite database, profiles and memo store stay next to the other services' state, not in
the user's ~/.prefect. The server runs its scheduler and other services, so cron
deployments create runs. Healthy in ~4 s with an existing database, ~12-25 s fresh.
"""

from __future__ import annotations

from r2d2.services.base import Context, Service, child_env, executable
from r2d2.services.config import LOOPBACK


class PrefectServer(Service):
    name = "prefect"

    def fixed_port(self, ctx: Context) -> int | None:
        return ctx.config.prefect.port

    def command(self, ctx: Context, ports: dict[str, int]) -> list[str]:
        return [executable("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(ports["http"])]

    def environment(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        home = (self.workdir(ctx) / "home").resolve()
        return child_env(
            {
                "PREFECT_HOME": str(home),
                "PREFECT_SERVER_API_HOST": LOOPBACK,
                "PREFECT_SERVER_API_PORT": str(ports["http"]),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            },
            # a PREFECT_API_URL pointing elsewhere, or another profile, must not leak in
            drop_prefixes=("PREFECT_API_", "PREFECT_PROFILES", "PREFECT_HOME", "PREFECT_UI_", "PREFECT_SERVER_"),
        )

    def health_url(self, ports: dict[str, int]) -> str:
        return f"{self.url(ports)}/api/health"

    def start_timeout(self, ctx: Context) -> float:
        return ctx.config.prefect.start_timeout_s

    def exports(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        return {"PREFECT_API_URL": f"{self.url(ports)}/api"}

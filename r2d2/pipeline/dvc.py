"""Run DVC stages from Python and read the stage graph of `dvc.yaml`.

Every driver executes a stage the same way: `dvc repro --single-item <stage>` in a subprocess.
DVC then decides whether the stage runs (its deps, params or command changed), is restored
from the run cache, or is skipped, and records the result in `dvc.lock`: the DVC cache and
`dvc.lock` stay the single truth whichever driver ran the stage.

Two stages can run at once (the Prefect flow fans the per-dataset stages out): DVC releases its
repository lock while a stage's command runs and guards the stage's deps/outs with read/write
locks, and `--wait-for-lock` makes the short locked phases (collecting the stage, saving its
outputs, writing dvc.lock) queue instead of failing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2d2.errors import UserError

Echo = Callable[[str], None]

# Failures worth retrying: lock contention between concurrent DVC processes, a remote or a
# server that is briefly unavailable, SQLite busy under concurrent writers. Anything else (a
# validation that rejected the data, a bad parameter, a crash in the trainer) fails at once:
# retrying would only burn compute.
TRANSIENT_PATTERNS = (
    r"Unable to acquire lock",
    r"is busy",  # DVC read/write lock held by a concurrent stage
    r"database is locked",
    r"Connection (refused|reset|aborted)",
    r"Temporary failure in name resolution",
    r"Read timed out|ConnectTimeout|timed out",
    r"Service Unavailable|\b503\b|\b502\b|\b504\b",
    r"Resource temporarily unavailable",
    r"Broken pipe",
)
_TRANSIENT = re.compile("|".join(TRANSIENT_PATTERNS), re.IGNORECASE)
_RUNNING = re.compile(r"Running stage '([^']+)'")
_CACHED = re.compile(r"Stage '([^']+)' is cached - skipping run")
_SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")


class StageFailed(RuntimeError):
    """A stage's `dvc repro` exited non-zero; `transient` says whether a retry may help."""

    def __init__(self, stage: str, returncode: int, tail: str, transient: bool) -> None:
        self.stage, self.returncode, self.tail, self.transient = stage, returncode, tail, transient
        kind = "transient failure" if transient else "failed"
        super().__init__(f"stage {stage} {kind} (exit {returncode}):\n{tail}")

    def __reduce__(self) -> tuple[type, tuple[str, int, str, bool]]:  # picklable for Prefect's result store
        return (StageFailed, (self.stage, self.returncode, self.tail, self.transient))


@dataclass
class StageRun:
    """What `dvc repro --single-item STAGE` did."""

    stage: str
    status: str  # "ran" | "restored" (from DVC's run cache) | "skipped" (up to date)
    seconds: float
    tail: str = ""

    @property
    def ran(self) -> bool:
        return self.status == "ran"

    def to_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "status": self.status, "seconds": round(self.seconds, 2)}


@dataclass
class DvcResult:
    returncode: int
    output: str
    seconds: float
    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder upwards holding `dvc.yaml` (the pipeline's root)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    raise UserError(f"no dvc.yaml in {here} or any parent: run this from a checkout of the pipeline")


def tool_env(root: str | Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `dvc` and the stage commands it spawns.

    The stage commands are plain `r2d2 ...`: the folder of this interpreter (the venv's bin/)
    goes first on PATH so they resolve to this installation even when the venv is not
    activated. `root` goes first on PYTHONPATH, so a checkout that carries its own `r2d2/`
    (a git worktree of an older commit, a copy) runs that code, the code its dvc.yaml deps
    name, rather than whatever is installed. Telemetry and hub access stay off.
    """
    from r2d2.cli import OFFLINE_ENV

    env = dict(os.environ)
    if root is not None and (Path(root) / "r2d2" / "__init__.py").is_file():
        paths = [str(Path(root).resolve()), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    bindir = str(Path(sys.executable).parent)
    parts = env.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        env["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p]])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def dvc_argv(*args: str) -> list[str]:
    """`dvc ARGS` with this interpreter's DVC (no PATH lookup)."""
    return [sys.executable, "-m", "dvc", *args]


def run_dvc(args: Sequence[str], root: str | Path, *, echo: Echo | None = None, timeout: float | None = None,
            env: dict[str, str] | None = None, tail_lines: int = 60) -> DvcResult:
    """Run `dvc ARGS` in `root`, streaming its output lines to `echo`; never raises on exit codes."""
    start = time.perf_counter()
    proc = subprocess.Popen(dvc_argv(*args), cwd=root, env=env or tool_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                            bufsize=1)
    lines: deque[str] = deque(maxlen=tail_lines)
    events: list[str] = []
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if _RUNNING.search(line) or _CACHED.search(line) or _SKIPPED.search(line):
                events.append(line)
            if echo is not None:
                echo(line)
        rc = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "\n".join(lines)
    result = DvcResult(rc, out, time.perf_counter() - start)
    for line in events:
        for rx, bucket in ((_CACHED, result.restored), (_RUNNING, result.ran), (_SKIPPED, result.skipped)):
            m = rx.search(line)
            if m:
                bucket.append(m.group(1))
                break
    # a stage restored from the run cache was not run, whatever else was printed
    result.ran = [s for s in result.ran if s not in result.restored]
    return result


def is_transient(output: str) -> bool:
    return bool(_TRANSIENT.search(output))


def run_stage(stage: str, root: str | Path, *, force: bool = False, echo: Echo | None = None,
              timeout: float | None = None, env: dict[str, str] | None = None) -> StageRun:
    """`dvc --wait-for-lock repro --single-item STAGE`; raises StageFailed on a non-zero exit."""
    args = ["--wait-for-lock", "repro", "--single-item", stage]
    if force:
        args.append("--force")
    res = run_dvc(args, root, echo=echo, timeout=timeout, env=env)
    if res.returncode != 0:
        raise StageFailed(stage, res.returncode, res.output, is_transient(res.output))
    if stage in res.ran:
        status = "ran"
    elif stage in res.restored:
        status = "restored"
    else:
        status = "skipped"
    return StageRun(stage, status, res.seconds, res.output)


@dataclass
class StageInfo:
    name: str  # DVC addressing: "pretrain", "finetune@demo-retrieval"
    upstream: list[str]  # stages (not .dvc files) whose outputs it reads
    group: str  # "finetune" for "finetune@demo-retrieval"
    item: str | None  # "demo-retrieval"
    cmd: str
    outs: list[str] = field(default_factory=list)  # paths relative to the root (metrics and plots included)


def stage_graph(root: str | Path) -> dict[str, StageInfo]:
    """The stages of `root/dvc.yaml`, in topological order (upstream first), foreach expanded.

    `.dvc` files (data.dvc) are sources, not stages: their consumers list no upstream for them.
    """
    import networkx as nx
    from dvc.repo import Repo

    root = Path(root).resolve()

    def address(stage: Any) -> str:  # as `dvc repro` takes it from `root` (stage.addressing is cwd-relative)
        rel = Path(os.path.relpath(stage.path, root)).as_posix()
        return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges: stage -> a stage it depends on
        stages = {}
        for stage in reversed(list(nx.topological_sort(graph))):
            if not stage.cmd:  # a .dvc file
                continue
            upstream = sorted(address(s) for s in graph.successors(stage) if s.cmd)
            name = address(stage)
            group, _, item = name.partition("@")
            cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
            outs = [Path(os.path.relpath(o.fs_path, root)).as_posix() for o in stage.outs]
            stages[name] = StageInfo(name, upstream, group, item or None, cmd, outs)
    return stages

"""Rebuild a registered model from its lineage and compare its metrics with the registered ones.

`r2d2 reproduce NAME@ALIAS` (or NAME/VERSION):

1. read the version's lineage tags (`lineage.git_commit`, `lineage.data_dvc_md5`,
   `lineage.params_sha256`, written by `r2d2 register`) and its metrics (`metric.*` tags);
2. check the commit out into a separate `git worktree` (under .r2d2/reproduce/, ignored by git
   and DVC), sharing this checkout's DVC cache and pointing at its default remote;
3. restore `data/` as that commit's data.dvc says (cache, remote, or regenerated demo corpus)
   and check its md5 and the params hash against the lineage;
4. `dvc repro --force` the stages the register stage depends on (everything up to the
   evaluations), running the commit's own code (its r2d2/ goes first on PYTHONPATH);
5. compare each registered metric with the reproduced one: bit-identical on the CPU demo
   (`--tolerance` for hardware where kernels are not deterministic).

`--use-run-cache` skips step 4's `--force`: DVC then restores any stage it has run before with
the same inputs from its run cache instead of executing it. That checks the lineage and the
bookkeeping in seconds, not the computation.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2d2.errors import UserError
from r2d2.pipeline.dvc import Echo, project_root, run_dvc, stage_graph, tool_env

WORKTREES = Path(".r2d2") / "reproduce"
REGISTER_STAGE = "register"


@dataclass
class Row:
    metric: str
    registered: float | None
    reproduced: float | None

    @property
    def delta(self) -> float | None:
        if self.registered is None or self.reproduced is None:
            return None
        return self.reproduced - self.registered


@dataclass
class Reproduction:
    name: str
    version: str
    commit: str
    worktree: Path
    rows: list[Row] = field(default_factory=list)
    tolerance: float = 0.0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stages_ran: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return bool(self.rows) and all(r.registered == r.reproduced for r in self.rows)

    @property
    def matches(self) -> bool:
        return bool(self.rows) and all(r.delta is not None and abs(r.delta) <= self.tolerance for r in self.rows)

    def table(self) -> str:
        def f(v: float | None) -> str:
            return "-" if v is None else repr(v)

        header = ["metric", "registered", "reproduced", "delta", ""]
        body = []
        for r in self.rows:
            ok = r.delta is not None and abs(r.delta) <= self.tolerance
            body.append([r.metric, f(r.registered), f(r.reproduced), "-" if r.delta is None else f"{r.delta:+.3g}",
                         ("identical" if r.delta == 0 else "within tolerance") if ok else "MISMATCH"])
        widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "commit": self.commit, "worktree": str(self.worktree),
                "identical": self.identical, "matches": self.matches, "tolerance": self.tolerance,
                "warnings": self.warnings, "seconds": round(self.seconds, 1), "stages_ran": self.stages_ran,
                "rows": [{"metric": r.metric, "registered": r.registered, "reproduced": r.reproduced} for r in self.rows]}


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`NAME@ALIAS`, `NAME/VERSION` or `models:/...` -> (name, alias, version)."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if name and alias:
            return name, alias, None
    elif "/" in ref:
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return name, None, version
    raise UserError(f"{ref!r}: expected NAME@ALIAS (e.g. R2D2@champion) or NAME/VERSION (e.g. R2D2/3)")


def registered_version(ref: str, root: str | Path, tracking_uri: str | None = None) -> tuple[str, str, dict[str, str]]:
    """(name, version, tags) of the registered version `ref`."""
    from r2d2.registry.tracking import client_for, resolve_tracking_uri

    name, alias, version = parse_model_ref(ref)
    uri = resolve_tracking_uri(tracking_uri, root)
    client = client_for(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as err:  # noqa: BLE001 - MlflowException: no such model/alias/version
        raise UserError(f"{ref}: not found in the registry at {uri} ({str(err).splitlines()[0][:200]})") from None
    return name, str(mv.version), dict(mv.tags)


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {root}:\n{(res.stderr or res.stdout).strip()}")
    return res


def make_worktree(root: Path, commit: str, path: Path) -> Path:
    """A fresh detached `git worktree` of `commit` at `path` (a previous one there is removed)."""
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        raise UserError(f"commit {commit} is not in the git repository at {root}: fetch it first "
                        "(the version was registered from a commit that is not here)")
    if path.exists():
        _git(root, "worktree", "remove", "--force", str(path), check=False)
        if path.exists():
            shutil.rmtree(path)
    _git(root, "worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(root, "worktree", "add", "--detach", str(path), commit)
    return path


def remove_worktree(root: Path, path: Path) -> None:
    _git(root, "worktree", "remove", "--force", str(path), check=False)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
    _git(root, "worktree", "prune", check=False)


def share_dvc_storage(root: Path, wt: Path) -> None:
    """The worktree uses this checkout's DVC cache, and its remotes resolve as they do here."""
    res = run_dvc(["config", "--local", "cache.dir", str((root / ".dvc" / "cache").resolve())], wt)
    if res.returncode != 0:
        raise UserError(f"dvc config cache.dir in {wt} failed:\n{res.output}")
    from dvc.config import Config

    here = Config(dvc_dir=str(root / ".dvc"))
    for name, conf in (here.get("remote") or {}).items():
        url = str(conf.get("url", ""))
        if url and "://" not in url and not Path(url).is_absolute():
            abs_url = str((root / ".dvc" / url).resolve())
            run_dvc(["remote", "modify", "--local", name, "url", abs_url], wt)


def metrics_files(wt: Path) -> tuple[dict[str, Path], list[str]]:
    """From the worktree's dvc.yaml: the register stage's `--metrics NAME=PATH` and the stages writing them."""
    graph = stage_graph(wt)
    if REGISTER_STAGE not in graph:
        raise UserError(f"{wt}/dvc.yaml has no `{REGISTER_STAGE}` stage: cannot tell which metrics were registered")
    info = graph[REGISTER_STAGE]
    args = info.cmd.split()
    files: dict[str, Path] = {}
    if "--metrics" in args:
        for tok in args[args.index("--metrics") + 1:]:
            if tok.startswith("-") or tok == ">":
                break
            from r2d2.registry.register import parse_metrics_spec

            dataset, path = parse_metrics_spec(tok)
            files[dataset] = path
    if not files:
        raise UserError(f"the `{REGISTER_STAGE}` stage of {wt}/dvc.yaml names no --metrics files")
    wanted = {Path(p).as_posix() for p in files.values()}
    producers = [name for name, st in graph.items() if wanted & set(st.outs)]
    missing = wanted - {o for name in producers for o in graph[name].outs}
    if missing:
        raise UserError(f"no stage of {wt}/dvc.yaml writes {', '.join(sorted(missing))}")
    return files, producers


def compare(tags: dict[str, str], reproduced: dict[str, float]) -> list[Row]:
    from r2d2.registry.promote import metrics_from_tags

    registered = metrics_from_tags(tags)
    if not registered:
        raise UserError("the registered version has no `metric.*` tags to compare with")
    return [Row(k, registered.get(k), reproduced.get(k)) for k in sorted(set(registered) | set(reproduced))]


def reproduce(ref: str, repo: str | Path = ".", *, use_run_cache: bool = False, tolerance: float = 0.0,
              worktree: str | Path | None = None, tracking_uri: str | None = None,
              echo: Echo = print) -> Reproduction:
    """See the module docs. Leaves the worktree in place (remove it with `remove_worktree`)."""
    import time

    from r2d2.pipeline.data import ensure_data
    from r2d2.registry.lineage import dvc_md5, params_hash
    from r2d2.registry.register import load_metrics

    start = time.perf_counter()
    root = project_root(repo)
    name, version, tags = registered_version(ref, root, tracking_uri)
    commit = tags.get("lineage.git_commit", "none")
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise UserError(f"{name} version {version} has no git commit in its lineage (lineage.git_commit={commit!r})")
    result = Reproduction(name, version, commit, Path(), tolerance=tolerance)
    if tags.get("lineage.git_dirty") == "true":
        result.warnings.append("the version was registered from a work tree with uncommitted changes: the commit "
                               "holds the code and params as committed, which may differ from what ran")
    wt = Path(worktree) if worktree else root / WORKTREES / f"{name}-v{version}-{commit[:10]}"
    echo(f"{name} version {version}: commit {commit[:12]}, data.dvc {tags.get('lineage.data_dvc_md5', '-')}; "
         f"worktree {wt}")
    make_worktree(root, commit, wt)
    result.worktree = wt
    share_dvc_storage(root, wt)

    state = ensure_data(wt, echo=echo)
    echo(state.line())
    want_md5 = tags.get("lineage.data_dvc_md5")
    if want_md5 and want_md5 != "none" and dvc_md5(wt / "data.dvc") != want_md5:
        result.warnings.append(f"data.dvc at {commit[:12]} is {dvc_md5(wt / 'data.dvc')}, the lineage says {want_md5}")
    want_params = tags.get("lineage.params_sha256")
    if want_params and want_params != "none" and params_hash(wt / "params.yaml") != want_params:
        result.warnings.append(f"params.yaml at {commit[:12]} hashes differently from the lineage's params_sha256")

    files, targets = metrics_files(wt)
    env = tool_env(wt)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # a reproduction must not log into the real registry
        env.pop(key, None)
    args = ["repro", *([] if use_run_cache else ["--force"]), *targets]
    echo(f"dvc {' '.join(args)}  (in {wt})")
    res = run_dvc(args, wt, env=env, echo=echo)
    if res.returncode != 0:
        raise UserError(f"dvc repro failed in {wt} (exit {res.returncode}); the worktree is kept for inspection")
    result.stages_ran = res.ran
    reproduced, _ = load_metrics({ds: wt / p for ds, p in files.items()})
    result.rows = compare(tags, reproduced)
    result.seconds = time.perf_counter() - start
    return result


def write_json(result: Reproduction, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")

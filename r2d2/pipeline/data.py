"""The raw corpus: `data/`, tracked by the top-level `data.dvc`.

`data.dvc` records the md5 of the whole `data/` folder and, under `meta:`, how the demo corpus
in it was generated (`r2d2 demo-data`'s settings). The corpus reaches a checkout one of three
ways, tried in this order by `ensure_data`:

1. DVC's cache (`dvc checkout data.dvc`): this checkout has seen that version before;
2. the default DVC remote (`dvc pull data.dvc`): another checkout pushed it;
3. regeneration: the demo generator is deterministic for its settings, so
   `r2d2 demo-data` with the settings in `meta` writes byte-identical files; the md5 is then
   verified against `data.dvc` and the files are committed to the cache. A corpus that is not
   the demo (no generator in `meta`) must come from a remote.

A new data version is recorded with `add_data_version` (`dvc add data`, keeping `meta`), or
`regenerate_demo` for the demo corpus with the current `demo_data` params.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from r2d2.errors import UserError
from r2d2.pipeline.dvc import Echo, run_dvc

DATA_DVC = "data.dvc"
DATA_DIR = "data"
DEMO_SUBDIR = "demo"  # the demo corpus lives in data/demo
GENERATOR = "r2d2 demo-data"


@dataclass
class DataState:
    md5: str
    action: str  # up-to-date | checkout | pull | regenerated | added | unchanged
    detail: str = ""

    def line(self) -> str:
        return f"data/ {self.md5}: {self.action}" + (f" ({self.detail})" if self.detail else "")


def read_data_dvc(root: str | Path) -> dict[str, Any]:
    path = Path(root) / DATA_DVC
    if not path.is_file():
        raise UserError(f"{path} is missing: record the raw corpus with `r2d2 pipeline data --regenerate` "
                        "(demo corpus) or `dvc add data`")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    outs = doc.get("outs") or []
    if len(outs) != 1 or outs[0].get("path") != DATA_DIR:
        raise UserError(f"{path}: expected exactly one tracked output `data`")
    return doc


def data_md5(root: str | Path) -> str:
    return str(read_data_dvc(root)["outs"][0].get("md5", ""))


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120)


def git_pull(root: str | Path, echo: Echo = print) -> bool:
    """`git pull --ff-only` when the current branch tracks an upstream; True if data.dvc changed."""
    root = Path(root)
    upstream = _git(root, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}")
    if upstream.returncode != 0:
        echo("git: no upstream branch, nothing to pull")
        return False
    before = (root / DATA_DVC).read_text(encoding="utf-8") if (root / DATA_DVC).is_file() else ""
    res = _git(root, "pull", "--ff-only")
    if res.returncode != 0:
        raise UserError(f"git pull --ff-only failed in {root}:\n{res.stderr.strip() or res.stdout.strip()}")
    echo(f"git pull: {res.stdout.strip().splitlines()[-1] if res.stdout.strip() else 'done'}")
    after = (root / DATA_DVC).read_text(encoding="utf-8") if (root / DATA_DVC).is_file() else ""
    return before != after


def _demo_settings(doc: dict[str, Any]) -> dict[str, Any] | None:
    meta = doc.get("meta") or {}
    if meta.get("generator") != GENERATOR or not isinstance(meta.get("demo_data"), dict):
        return None
    return dict(meta["demo_data"])


def _generate(root: Path, settings: dict[str, Any]) -> None:
    from r2d2.config import DemoDataConfig
    from r2d2.data.demo import generate_demo_corpus

    try:
        cfg = DemoDataConfig.model_validate(settings)
    except Exception as err:  # pydantic.ValidationError: the meta was edited by hand
        raise UserError(f"{DATA_DVC}: meta.demo_data is not valid demo settings: {err}") from None
    data = root / DATA_DIR
    if data.exists():
        shutil.rmtree(data)
    generate_demo_corpus(data / DEMO_SUBDIR, cfg)


def data_state(root: str | Path) -> tuple[str, str | None, bool]:
    """(md5 recorded in data.dvc, md5 of the data/ in the workspace or None, recorded version in the cache).

    Hashes the workspace the way DVC does (its state database makes a second call cheap);
    `dvc status` cannot tell this when the cache lacks the version (it then only says "not in cache").
    """
    from dvc.repo import Repo

    read_data_dvc(root)
    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        (stage,) = repo.stage.collect(str(root / DATA_DVC))  # a relative target would be read from the cwd
        out = stage.outs[0]
        recorded = str(out.hash_info.value or "")
        current = str(out.get_hash().value) if out.exists else None
        cached = bool(recorded) and bool(out.cache.exists(recorded))
    return recorded, current, cached


def _commit(root: Path) -> None:
    """Put the (matching) data/ into the DVC cache, so `dvc push` and later checkouts work."""
    res = run_dvc(["commit", "--force", DATA_DVC], root)
    if res.returncode != 0:
        raise UserError(f"dvc commit {DATA_DVC} failed:\n{res.output}")


def ensure_data(root: str | Path, *, update: str = "none", echo: Echo = print) -> DataState:
    """Make `data/` match `data.dvc` (see the module docs); `update="pull"` first runs `git pull`.

    A `data/` that exists but differs from `data.dvc` (files were dropped in, or edited) is
    never overwritten: that raises, pointing at `add_data_version` or `dvc checkout --force`.
    Only a `git pull` that moved `data.dvc` replaces it.
    """
    root = Path(root)
    if update not in ("none", "pull"):
        raise UserError(f"unknown data update mode {update!r} (none, pull)")
    moved = git_pull(root, echo) if update == "pull" else False
    doc = read_data_dvc(root)
    md5, current, cached = data_state(root)
    data = root / DATA_DIR
    if current == md5:
        if not cached:
            _commit(root)
        return DataState(md5, "up-to-date")
    if current is not None and not moved:
        raise UserError(
            f"{data} ({current}) differs from {DATA_DVC} ({md5}). To record it as a new data version run "
            "`r2d2 pipeline data --add`; to discard the changes run `dvc checkout --force data.dvc`."
        )
    last = ""
    for args, action, detail in ((["checkout", "--force", DATA_DVC], "checkout", "from the DVC cache"),
                                 (["pull", "--force", DATA_DVC], "pull", "from the default DVC remote")):
        if action == "checkout" and not cached:
            continue
        res = run_dvc(args, root)
        last = res.output
        if res.returncode == 0 and data_state(root)[1] == md5:
            return DataState(md5, action, detail)
    settings = _demo_settings(doc)
    if settings is None:
        raise UserError(f"{data} ({md5}) is neither in the DVC cache nor on the default remote, and {DATA_DVC} "
                        f"names no generator to rebuild it. Last DVC output:\n{last.strip()[-2000:]}")
    echo(f"data/ {md5}: not in the cache or the remote; regenerating the demo corpus with {settings}")
    _generate(root, settings)
    got = data_state(root)[1]
    if got != md5:
        raise UserError(
            f"the regenerated demo corpus hashes to {got}, not {md5} as {DATA_DVC} says: the generator or an "
            "image library changed. Record the new version with `r2d2 pipeline data --regenerate`."
        )
    _commit(root)
    return DataState(md5, "regenerated", "md5 verified")


def _write_meta(root: Path, meta: dict[str, Any] | None) -> None:
    path = root / DATA_DVC
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if meta is None:
        doc.pop("meta", None)
    else:
        doc["meta"] = meta
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def add_data_version(root: str | Path, *, meta: dict[str, Any] | None | str = "keep", push: bool = False,
                     echo: Echo = print) -> DataState:
    """`dvc add data` (a new version when anything in data/ changed), then optionally `dvc push`."""
    root = Path(root)
    path = root / DATA_DVC
    old = data_md5(root) if path.is_file() else ""
    old_meta = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("meta") if path.is_file() else None
    res = run_dvc(["add", DATA_DIR], root)
    if res.returncode != 0:
        raise UserError(f"dvc add data failed:\n{res.output}")
    new_meta = old_meta if meta == "keep" else meta
    _write_meta(root, new_meta if isinstance(new_meta, dict) else None)
    md5 = data_md5(root)
    if push:
        pushed = run_dvc(["push", DATA_DVC], root)
        if pushed.returncode != 0:
            raise UserError(f"dvc push data.dvc failed:\n{pushed.output}")
    state = DataState(md5, "unchanged" if md5 == old else "added", f"previous {old}" if old and md5 != old else "")
    echo(state.line())
    return state


def regenerate_demo(root: str | Path, params_path: str | Path = "params.yaml", *, push: bool = False,
                    echo: Echo = print) -> DataState:
    """Write the demo corpus from params.yaml `demo_data` into data/demo and record it in data.dvc."""
    from r2d2.config import load_params

    root = Path(root)
    params = Path(params_path) if Path(params_path).is_absolute() else root / params_path
    settings = load_params(params).demo_data.model_dump()
    _generate(root, settings)
    return add_data_version(root, meta={"generator": GENERATOR, "out": f"{DATA_DIR}/{DEMO_SUBDIR}",
                                        "demo_data": settings}, push=push, echo=echo)

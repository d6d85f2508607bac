"""Lineage: what a registered model was built from, as flat string tags.

A registered version must say exactly how to rebuild it (`r2d2 reproduce` checks this out):
the code (git commit + whether the work tree was dirty), the raw data (`data.dvc` md5), the
snapshot the model trained on (sha256 of its manifest), whether that data passed Great
Expectations, the hyperparameters (sha256 of the params.yaml sections that shape the model)
and the library versions. Nothing here imports MLflow: the tags are plain dicts, so they can
be computed and tested without a tracking store.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

NONE = "none"
PREFIX = "lineage."
# params.yaml sections that do not change the model (where it is logged, served or promoted):
# left out of the params hash so moving the MLflow server does not look like a new recipe.
NON_MODEL_SECTIONS = frozenset({"services", "tracking", "register", "promote"})
PACKAGES = {"torch": "torch", "transformers": "transformers", "mlflow": "mlflow", "r2d2": "r2d2-pipeline"}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_state(repo: str | Path = ".") -> dict[str, str]:
    """`{git_commit, git_dirty}`; "none" outside a git work tree (e.g. an sdist install).

    Dirty means `git status --porcelain` lists anything (untracked, not ignored files count:
    a new source file changes what `dvc repro` would run).
    """
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": NONE, "git_dirty": NONE}
    status = git("status", "--porcelain")
    return {"git_commit": commit, "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def dvc_md5(dvc_file: str | Path) -> str:
    """The md5 DVC recorded for the tracked output(s) of a `.dvc` file ("none" if absent).

    Several outs are joined with ","; a folder's md5 ends in `.dir`, as DVC writes it.
    """
    path = Path(dvc_file)
    if not path.is_file():
        return NONE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return "unreadable"
    md5s = [str(o.get("md5") or o.get("etag") or NONE) for o in doc.get("outs", []) if isinstance(o, dict)]
    return ",".join(md5s) or NONE


def validation_result(path: str | Path | None) -> str:
    """`"true"`/`"false"` from a validation JSON, or "none" when no file was given.

    Accepts a Great Expectations checkpoint result (`success`), and `r2d2 validate`'s
    validate.json (`gx.success`, else its `status`: passed/failed).
    """
    if path is None:
        return NONE
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(doc.get("success"), bool):
        return str(doc["success"]).lower()
    gx = doc.get("gx")
    if isinstance(gx, dict) and isinstance(gx.get("success"), bool):
        return str(gx["success"]).lower()
    if doc.get("status") in ("passed", "failed"):
        return str(doc["status"] == "passed").lower()
    raise ValueError(f"{path}: no `success`, `gx.success` or `status` field: not a validation result")


def params_hash(params_path: str | Path) -> str:
    """sha256 of the model-shaping sections of params.yaml, canonical JSON (comments, key order
    and whitespace do not change it); "none" if the file does not exist."""
    path = Path(params_path)
    if not path.is_file():
        return NONE
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    relevant = {k: v for k, v in raw.items() if k not in NON_MODEL_SECTIONS}
    canon = json.dumps(relevant, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str]:
    out = {}
    for short, dist in PACKAGES.items():
        try:
            out[short] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[short] = NONE
    return out


def lineage_tags(
    repo: str | Path = ".",
    *,
    snapshot_manifest: str | Path | None = None,
    validation: str | Path | None = None,
    params_path: str | Path | None = None,
    dvc_file: str | Path | None = None,
) -> dict[str, str]:
    """Every lineage tag, keyed `lineage.*`. Relative paths are relative to `repo`."""
    repo = Path(repo)

    def at(p: str | Path | None, default: str | None = None) -> Path | None:
        p = p if p is not None else default
        if p is None:
            return None
        return Path(p) if Path(p).is_absolute() else repo / p

    tags: dict[str, Any] = dict(git_state(repo))
    tags["data_dvc_md5"] = dvc_md5(at(dvc_file, "data.dvc"))
    manifest = at(snapshot_manifest)
    tags["snapshot_manifest_sha256"] = file_sha256(manifest) if manifest is not None else NONE
    if manifest is not None and manifest.suffix == ".json":
        try:
            inner = json.loads(manifest.read_text(encoding="utf-8")).get("snapshot_hash")
        except (ValueError, AttributeError):
            inner = None
        if inner:
            tags["snapshot_hash"] = str(inner)
    tags["gx_success"] = validation_result(at(validation))
    tags["params_sha256"] = params_hash(at(params_path, "params.yaml"))
    for name, version in package_versions().items():
        tags[f"version.{name}"] = version
    return {PREFIX + k: str(v) for k, v in tags.items()}

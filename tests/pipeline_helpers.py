"""Throwaway copies of the pipeline checkout with tiny params, for the DVC / Prefect / reproduce tests.

`tiny_repo_template()` builds one copy per test session (git repo, tiny demo corpus in data.dvc,
one full `dvc repro`) and every test takes its own `clone_template()` of it, so the expensive
first reproduction is paid once.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough that a whole `dvc repro` takes well under two minutes on 2 busy cores.
TINY: dict[str, Any] = {
    "demo_data": {"seed": 0, "image_size": 32, "train_images": 24, "eval_images": 8, "captions_per_image": 2},
    "pretrain": {"batch_size": 8, "max_steps": 3, "lr": 0.001, "warmup_steps": 1, "log_every": 1, "ckpt_every": 3,
                 "distill": {"queue_size": 16}},
    "finetune": {"task": "retrieval", "batch_size": 8, "max_steps": 2, "lr": 0.0005, "warmup_steps": 1, "log_every": 1,
                 "ckpt_every": 2},
    "evaluate": {"rerank_k": 4, "batch_size": 32},
    "snapshot": {"shard_rows": 64, "max_side": 32},
}
COPY = ["dvc.yaml", ".dvcignore", ".gitignore", "r2d2", "flows", "great_expectations"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "uncommitted", ".r2d2")

_TEMPLATE: dict[str, Any] = {}


def env(root: Path | None = None) -> dict[str, str]:
    """The environment stage commands see (venv first on PATH, the copy's r2d2 on PYTHONPATH)."""
    from r2d2.pipeline.dvc import tool_env

    e = tool_env(root)
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MLFLOW_S3_ENDPOINT_URL"):
        e.pop(key, None)
    return e


def git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_params(root: Path, override: dict[str, Any]) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump(deep_merge(params, override), sort_keys=False, allow_unicode=True), encoding="utf-8")


def make_repo(dest: Path, override: dict[str, Any] | None = None) -> Path:
    """A git + DVC checkout of this project at `dest` with tiny params and a tiny demo corpus (committed)."""
    from r2d2.pipeline.data import regenerate_demo

    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        else:
            shutil.copy2(src, dest / name)
    (dest / ".dvc").mkdir()
    shutil.copy2(REPO / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copy2(REPO / ".dvc" / ".gitignore", dest / ".dvc" / ".gitignore")
    shutil.copy2(REPO / "params.yaml", dest / "params.yaml")
    write_params(dest, deep_merge(TINY, override or {}))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "config", "user.email", "test@example.invalid")
    git(dest, "config", "user.name", "test")
    regenerate_demo(dest, echo=lambda _: None)
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "tiny pipeline")
    return dest


def repro(root: Path, *args: str) -> tuple[Any, float]:
    """`dvc repro ARGS` in root; returns (DvcResult, seconds); asserts success."""
    from r2d2.pipeline.dvc import run_dvc

    start = time.perf_counter()
    res = run_dvc(["repro", *args], root, env=env(root))
    assert res.returncode == 0, res.output
    return res, time.perf_counter() - start


def tiny_repo_template(factory: Any) -> dict[str, Any]:
    """Build (once per session) a tiny checkout and reproduce it fully; returns its path and timings."""
    if not _TEMPLATE:
        root = make_repo(factory.mktemp("tiny-template") / "repo")
        res, seconds = repro(root)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "reproduced")
        _TEMPLATE.update(root=root, first=res, first_seconds=seconds)
    return _TEMPLATE


def clone_template(factory: Any, name: str) -> Path:
    """A private copy of the reproduced template (workspace, .git, DVC cache and MLflow store)."""
    src = tiny_repo_template(factory)["root"]
    dest = factory.mktemp(name) / "repo"
    shutil.copytree(src, dest, symlinks=True)
    return dest

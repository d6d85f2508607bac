"""Atomic, resumable checkpoints (open_clip style `--resume latest`).

A checkpoint is written to a temp file and renamed into place, and `latest` is a small
pointer file replaced the same way, so a run killed at any moment leaves either the old or
the new checkpoint, never a torn one. Loading uses `weights_only=True`: no arbitrary unpickling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from r2d2.errors import UserError

LATEST = "latest"


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(ckpt_dir: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    _atomic_write_bytes(path, lambda fh: torch.save(state, fh))
    _atomic_write_bytes(ckpt_dir / LATEST, lambda fh: fh.write(path.name.encode()))
    # Keep the newest `keep` checkpoints.
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def resolve_resume(resume: str | None, ckpt_dir: str | Path) -> Path | None:
    """`latest` -> the checkpoint `latest` points to (None if the run has none yet); else a path."""
    if not resume:
        return None
    if resume == LATEST:
        pointer = Path(ckpt_dir) / LATEST
        if not pointer.is_file():
            return None
        path = Path(ckpt_dir) / pointer.read_text().strip()
    else:
        path = Path(resume)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file cannot be trusted or read
        raise UserError(f"cannot load checkpoint {path}: {err}") from None

"""Our model format: `model.safetensors` + `config.json` + `vocab.txt` in one folder.

safetensors never executes code on load, unlike a pickled `.pth`; the config is the
validated `ModelConfig`, so a folder fully describes the model it holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from r2d2.config import ModelConfig
from r2d2.errors import UserError
from r2d2.model.r2d2 import R2D2Model, build_model
from r2d2.tokenizer import default_vocab_path

WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.txt"


def save_pretrained(model: R2D2Model, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write the folder atomically (a temp folder renamed into place)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model = getattr(model, "module", model)
    save_model(model, str(tmp / WEIGHTS))  # handles the tied MLM decoder / word embeddings
    meta = {"model": model.cfg.model_dump(mode="json"), "format": "r2d2/1"}
    if extra:
        meta["extra"] = extra
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(default_vocab_path(), tmp / VOCAB)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def read_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{model_dir}: no {CONFIG}; expected a folder written by `r2d2 pretrain/finetune/import-checkpoint`")
    meta = json.loads(path.read_text(encoding="utf-8"))
    return ModelConfig.model_validate(meta["model"])


def load_pretrained(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[R2D2Model, ModelConfig]:
    cfg = read_config(model_dir)
    weights = Path(model_dir) / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{model_dir}: no {WEIGHTS}")
    model = build_model(cfg)
    missing, unexpected = load_model(model, str(weights), strict=False)
    # Non-persistent buffers are not saved; anything else missing is an error.
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not match config: missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}")
    model.to(device).eval()
    return model, cfg

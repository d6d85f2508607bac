"""Typed configuration, loaded from `params.yaml`.

Every model size and training recipe is a pydantic model with `extra="forbid"`, so a
typo in `params.yaml` fails loudly with the key's full path instead of being ignored.
Model sizes are presets (`r2d2/configs/{tiny,base,large}.yaml`); `model.size` picks one
and any other key under `model:` overrides it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from r2d2.errors import UserError

SIZES = ("tiny", "base", "large")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VisionConfig(Strict):
    """CLIP-style ViT (CLIPVisionModel layout, as in the official `visual_encoder`)."""

    image_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    width: int = Field(768, gt=0)
    layers: int = Field(12, gt=0)
    heads: int = Field(12, gt=0)
    mlp_dim: int = Field(3072, gt=0)
    # Fixed 2-D sin-cos position embeddings: position is learned much earlier on short budgets.
    sincos_pos: bool = False

    @model_validator(mode="after")
    def _check(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class TextConfig(Strict):
    """BERT text encoder with the chinese-roberta-wwm-ext shape."""

    vocab_size: int = Field(21128, gt=0)
    width: int = Field(768, gt=0)
    layers: int = Field(12, gt=0)
    heads: int = Field(12, gt=0)
    mlp_dim: int = Field(3072, gt=0)
    max_len: int = Field(64, gt=4)

    @model_validator(mode="after")
    def _check(self) -> TextConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class CrossConfig(Strict):
    """The two cross encoders (text->image, image->text); their width is the text width."""

    layers: int = Field(6, gt=0)
    heads: int = Field(12, gt=0)
    mlp_dim: int = Field(3072, gt=0)


class ModelConfig(Strict):
    size: Literal["tiny", "base", "large"] = "tiny"
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    cross: CrossConfig = CrossConfig()
    embed_dim: int = Field(768, gt=0)
    temp_init: float = Field(0.07, gt=0.001, lt=0.5)
    # PRD2: the dual encoder alone, without cross encoders.
    prd2: bool = False
    # Wukong options.
    locked_image: bool = False
    similarity: Literal["global", "token_wise"] = "global"
    token_reduction: Literal[0, 12, 24] = 0

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.text.width % self.cross.heads:
            raise ValueError(f"text width {self.text.width} is not divisible by cross.heads {self.cross.heads}")
        return self


class LossWeights(Strict):
    """Weight of each objective; 0 switches a term off (and skips its compute)."""

    gcpr: float = Field(1.0, ge=0)
    fgr: float = Field(1.0, ge=0)
    mlm: float = Field(1.0, ge=0)
    tgd: float = Field(1.0, ge=0)
    fgd: float = Field(1.0, ge=0)


class DistillConfig(Strict):
    momentum: float = Field(0.995, ge=0, le=1)
    queue_size: int = Field(4096, ge=0)
    alpha: float = Field(0.4, ge=0, le=1)
    # alpha ramps linearly from 0 over this many steps (default: the first epoch)
    alpha_ramp_steps: int | None = Field(None, ge=0)
    fgd_loss: Literal["smooth_l1", "cosine"] = "smooth_l1"
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    fgr_class_weights: tuple[float, float] = (1.0, 2.0)
    # FGR samples hard negatives from softmax(cosine / T). None: T = the model's temperature (as in
    # the paper). A larger T gives easier negatives, which a small model needs to get a foothold.
    fgr_sample_temp: float | None = Field(None, gt=0)


class TrainConfig(Strict):
    task: Literal["pretrain", "retrieval", "matching"] = "pretrain"
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(128, gt=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.02, ge=0)
    warmup_steps: int = Field(50, ge=0)
    # cosine decays to lr * min_lr_ratio; a short demo budget must not decay to zero
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Same inputs, same bits: torch's deterministic kernels (see train()). Off trades that for speed on GPU.
    deterministic: bool = True
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, gt=0)
    ckpt_every: int = Field(100, gt=0)
    freeze_image: bool = False
    losses: LossWeights = LossWeights()
    distill: DistillConfig = DistillConfig()


class DemoDataConfig(Strict):
    """The embedded synthetic corpus (see `r2d2 demo-data --help`)."""

    seed: int = 0
    image_size: int = Field(32, gt=7)
    train_images: int = Field(4000, gt=0)
    eval_images: int = Field(200, gt=0)
    captions_per_image: int = Field(3, gt=0)


class EvalConfig(Strict):
    rerank_k: int = Field(16, ge=0)
    batch_size: int = Field(256, gt=0)


class Params(Strict):
    """The whole of `params.yaml`. Sections other stages own are kept as plain dicts."""

    model: ModelConfig = ModelConfig()
    demo_data: DemoDataConfig = DemoDataConfig()
    pretrain: TrainConfig = TrainConfig()
    finetune: TrainConfig = TrainConfig(task="retrieval")
    evaluate: EvalConfig = EvalConfig()
    extra: dict[str, Any] = Field(default_factory=dict)


def size_preset(size: str) -> dict[str, Any]:
    if size not in SIZES:
        raise UserError(f"model.size: unknown size {size!r}; choose one of {', '.join(SIZES)}")
    text = resources.files("r2d2.configs").joinpath(f"{size}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(err: ValidationError, where: str, docs: str = "params.yaml's docs", section: str = "") -> str:
    """One line per bad key, naming its full path (`where: section.a.b: problem`); shared by every section's parser."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in ((section,) if section else ()) + tuple(e["loc"])) or "(root)"
        msg = f"unknown key (check the spelling; see {docs})" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def model_config(raw: dict[str, Any] | None = None, size: str | None = None) -> ModelConfig:
    """Resolve `model:` (a size preset plus overrides) into a validated ModelConfig."""
    raw = dict(raw or {})
    size = size or raw.get("size", "tiny")
    merged = _deep_merge(size_preset(size), raw)
    merged["size"] = size
    try:
        return ModelConfig.model_validate(merged)
    except ValidationError as err:
        raise UserError(format_validation_error(err, "params model")) from None


def parse_params(raw: dict[str, Any], where: str = "params.yaml") -> Params:
    raw = dict(raw or {})
    model = model_config(raw.pop("model", None))
    try:
        params = Params.model_validate({**raw, "model": model.model_dump()})
    except ValidationError as err:
        raise UserError(format_validation_error(err, where)) from None
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate params.yaml; a missing file means all defaults (tiny model)."""
    path = Path(path)
    if not path.exists():
        return parse_params({}, where=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    # Sections owned by other parts of the pipeline (data layer, registry, flows) are kept verbatim.
    known = set(Params.model_fields) - {"extra"}
    extra = {k: raw.pop(k) for k in list(raw) if k not in known and k in EXTERNAL_SECTIONS}
    params = parse_params(raw, where=str(path))
    params.extra = extra
    return params


# Top-level params.yaml sections validated by the modules that own them.
EXTERNAL_SECTIONS: set[str] = {"ingest", "snapshot", "validate", "register", "promote", "datasets", "services", "tracking"}

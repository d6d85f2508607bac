"""Import released R2D2 / PRD2 checkpoints: every official state-dict key mapped explicitly onto ours.

Where the official names come from (read from github.com/yuxie11/R2D2, not recalled):
- `models/r2d2.py` and `models/prd2.py`: `visual_encoder = transformers.CLIPModel(config).vision_model`
  (transformers 4.15, `requirements.txt`), `text_encoder = transformers.BertModel(config)` with the default
  pooler, `vision_proj`, `text_proj`, `temp` (a 0-d parameter), `text_joint_layer`/`img_joint_layer` (the
  BLIP-style `models/bert.py` `BertModel(add_pooling_layer=False)`, 6 layers, `add_cross_attention: true`,
  `encoder_width` = vision width for text->image and text width for image->text), `img_joint_proj`,
  `itm_head`, `itm_head_i`; sizes from `checkpoints/r2d2_config/*.json` and `checkpoints/hfl_roberta/config.json`.
- The image tower is therefore transformers' CLIP layout (separate `q_proj`/`k_proj`/`v_proj`), not OpenAI's
  `transformer.resblocks.N.attn.in_proj_weight`: no fused-qkv split and no shape transform is needed. Every
  tensor is copied as is (floating point cast to float32).
- transformers 4.15 saved `position_ids` buffers (persistent then, non-persistent in v5): they are optional
  here and must hold `arange` (anything else would mean positions we would not reproduce).
- The released loader (`load_checkpoint`) deletes mis-shaped keys and loads with `strict=False`, i.e. drops
  problems silently. Here any missing, unexpected or mis-shaped key refuses the import, with the full list.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from r2d2.config import ModelConfig, model_config
from r2d2.errors import UserError
from r2d2.model.r2d2 import R2D2Model, build_model

ARCHS = ("base", "large")
# Official text/cross encoder constants (hfl_roberta/config.json, r2d2_config/bert_config.json).
MAX_POSITIONS, TYPE_VOCAB = 512, 2

# Official top-level module -> ours. Our dual encoder lives under `dual.` (it is what PRD2 and the teacher copy).
DUAL_MODULES = {
    "visual_encoder": "dual.visual_encoder",
    "text_encoder": "dual.text_encoder",
    "vision_proj": "dual.vision_proj",
    "text_proj": "dual.text_proj",
    "temp": "dual.temp",
}
CROSS_MODULES = {
    "text_joint_layer": "text_joint_layer",
    "img_joint_layer": "img_joint_layer",
    "img_joint_proj": "img_joint_proj",
    "itm_head": "itm_head",
    "itm_head_i": "itm_head_i",
}
# Our keys that no official checkpoint has: kept as built, and recorded in the output's config.json.
FRESH = {
    "mlm_head.": "MLM head on the text->image cross encoder: absent from the released code and checkpoints, "
    "so freshly initialised (its decoder weight is tied to the imported text word embeddings)",
}
POOLER_REASON = "BERT pooler: the official forward takes the CLS of last_hidden_state and never calls it"
BUFFER_REASON = "index buffer saved by transformers 4.15; recomputed by our modules"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Slot:
    """What one official key must look like and where it goes."""

    ours: str | None  # our key, or None for a key known to be unused (see `reason`)
    shape: Shape
    reason: str = ""
    buffer: str | None = None  # "arange" / "zeros": an optional saved index buffer whose value is checked


def _lin(name: str, out_f: int, in_f: int) -> list[tuple[str, Shape]]:
    return [(f"{name}.weight", (out_f, in_f)), (f"{name}.bias", (out_f,))]


def _ln(name: str, width: int) -> list[tuple[str, Shape]]:
    return [(f"{name}.weight", (width,)), (f"{name}.bias", (width,))]


def _clip_vision(cfg: ModelConfig) -> list[tuple[str, Shape]]:
    """transformers `CLIPVisionTransformer` (4.15 and v5 alike): `visual_encoder.*`."""
    v, w = cfg.vision, cfg.vision.width
    out = [
        ("embeddings.class_embedding", (w,)),
        ("embeddings.patch_embedding.weight", (w, 3, v.patch_size, v.patch_size)),  # conv, bias=False
        ("embeddings.position_embedding.weight", (v.num_patches + 1, w)),
        *_ln("pre_layrnorm", w),  # sic: transformers' spelling
    ]
    for i in range(v.layers):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += _lin(f"{p}self_attn.{proj}", w, w)
        out += _ln(f"{p}layer_norm1", w) + _lin(f"{p}mlp.fc1", v.mlp_dim, w)
        out += _lin(f"{p}mlp.fc2", w, v.mlp_dim) + _ln(f"{p}layer_norm2", w)
    return out + _ln("post_layernorm", w)


def _bert_layers(n: int, width: int, mlp: int, cross_width: int | None) -> list[tuple[str, Shape]]:
    """`encoder.layer.N.*` of a BERT encoder; with `crossattention` (keys/values `cross_width` wide) if given."""
    out: list[tuple[str, Shape]] = []
    blocks = [("attention", width)] + ([("crossattention", cross_width)] if cross_width else [])
    for i in range(n):
        p = f"encoder.layer.{i}."
        for block, kv_width in blocks:
            out += _lin(f"{p}{block}.self.query", width, width)
            out += _lin(f"{p}{block}.self.key", width, kv_width) + _lin(f"{p}{block}.self.value", width, kv_width)
            out += _lin(f"{p}{block}.output.dense", width, width) + _ln(f"{p}{block}.output.LayerNorm", width)
        out += _lin(f"{p}intermediate.dense", mlp, width)
        out += _lin(f"{p}output.dense", width, mlp) + _ln(f"{p}output.LayerNorm", width)
    return out


def _text_encoder(cfg: ModelConfig) -> list[tuple[str, Shape]]:
    """transformers `BertModel`: `text_encoder.*` (its pooler is listed separately as unused)."""
    t, w = cfg.text, cfg.text.width
    emb = [
        ("embeddings.word_embeddings.weight", (t.vocab_size, w)),
        ("embeddings.position_embeddings.weight", (MAX_POSITIONS, w)),
        ("embeddings.token_type_embeddings.weight", (TYPE_VOCAB, w)),
        *_ln("embeddings.LayerNorm", w),
    ]
    return emb + _bert_layers(t.layers, w, t.mlp_dim, None)


def _cross_encoder(cfg: ModelConfig, encoder_width: int) -> list[tuple[str, Shape]]:
    """R2D2 `models/bert.py` `BertModel`: embeddings without token types, then self-, cross-attention, FFN."""
    w = cfg.text.width
    emb = [
        ("embeddings.word_embeddings.weight", (cfg.text.vocab_size, w)),
        ("embeddings.position_embeddings.weight", (MAX_POSITIONS, w)),
        *_ln("embeddings.LayerNorm", w),
    ]
    return emb + _bert_layers(cfg.cross.layers, w, cfg.cross.mlp_dim, encoder_width)


def official_layout(cfg: ModelConfig) -> dict[str, Slot]:
    """Every key an official checkpoint for `cfg` holds (or may hold), with its shape and our key."""
    wv, wt, e = cfg.vision.width, cfg.text.width, cfg.embed_dim
    blocks: dict[str, list[tuple[str, Shape]]] = {
        "visual_encoder": _clip_vision(cfg),
        "text_encoder": _text_encoder(cfg),
        "vision_proj": _lin("", e, wv),
        "text_proj": _lin("", e, wt),
        "temp": [("", ())],
    }
    if not cfg.prd2:
        blocks |= {
            "text_joint_layer": _cross_encoder(cfg, encoder_width=wv),
            "img_joint_layer": _cross_encoder(cfg, encoder_width=wt),
            "img_joint_proj": _lin("", wt, wv),
            "itm_head": _lin("", 2, wt),
            "itm_head_i": _lin("", 2, wt),
        }
    modules = DUAL_MODULES | CROSS_MODULES
    layout: dict[str, Slot] = {}
    for module, entries in blocks.items():
        for suffix, shape in entries:
            suffix = suffix.lstrip(".")
            official = f"{module}.{suffix}" if suffix else module
            ours = f"{modules[module]}.{suffix}" if suffix else modules[module]
            layout[official] = Slot(ours, shape)
    layout["text_encoder.pooler.dense.weight"] = Slot(None, (wt, wt), POOLER_REASON)
    layout["text_encoder.pooler.dense.bias"] = Slot(None, (wt,), POOLER_REASON)
    buffers = {"visual_encoder.embeddings.position_ids": (cfg.vision.num_patches + 1, "arange")}
    buffers["text_encoder.embeddings.position_ids"] = (MAX_POSITIONS, "arange")
    buffers["text_encoder.embeddings.token_type_ids"] = (MAX_POSITIONS, "zeros")
    if not cfg.prd2:
        buffers["text_joint_layer.embeddings.position_ids"] = (MAX_POSITIONS, "arange")
        buffers["img_joint_layer.embeddings.position_ids"] = (MAX_POSITIONS, "arange")
    for key, (n, kind) in buffers.items():
        layout[key] = Slot(None, (1, n), BUFFER_REASON, buffer=kind)
    return layout


@dataclass
class Problems:
    """Everything wrong with a checkpoint, so one run shows the whole picture."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshaped: list[str] = field(default_factory=list)
    bad_values: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped or self.bad_values)

    def format(self) -> str:
        lines = []
        for title, items in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("mis-shaped", self.misshaped),
            ("bad values", self.bad_values),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {item}" for item in items]
        return "\n".join(lines + [f"hint: {h}" for h in self.hints])


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def check_state_dict(sd: dict[str, object], cfg: ModelConfig) -> Problems:
    """Compare a (prefix-stripped) official state dict with the layout for `cfg`; never modifies it."""
    layout, probs = official_layout(cfg), Problems()
    for key, slot in layout.items():
        if key not in sd:
            if slot.ours is not None:  # unused pooler and index buffers may be absent
                probs.missing.append(f"{key} {list(slot.shape)}")
            continue
        t = sd[key]
        if not isinstance(t, torch.Tensor):
            probs.bad_values.append(f"{key}: a {type(t).__name__}, not a tensor")
        elif tuple(t.shape) != slot.shape:
            probs.misshaped.append(f"{key}: checkpoint {_shape(t)}, expected {list(slot.shape)}")
        elif slot.buffer is None and not t.is_floating_point():
            probs.bad_values.append(f"{key}: dtype {t.dtype}, expected floating point")
        elif slot.buffer and not t.is_meta:
            want = torch.arange(slot.shape[1])[None] if slot.buffer == "arange" else torch.zeros(slot.shape)
            if t.is_floating_point() or not torch.equal(t.long(), want.long()):
                probs.bad_values.append(f"{key}: expected {slot.buffer} ({BUFFER_REASON})")
    for key in sd:
        if key not in layout:
            t = sd[key]
            probs.unexpected.append(f"{key} {_shape(t) if isinstance(t, torch.Tensor) else type(t).__name__}")
    probs.hints = _hints(sd, cfg, probs)
    return probs


def _hints(sd: dict[str, object], cfg: ModelConfig, probs: Problems) -> list[str]:
    """Name the likely cause when the checkpoint is a valid one for another --arch / --prd2."""
    hints = []
    cross = tuple(f"{m}." for m in CROSS_MODULES)
    if cfg.prd2 and probs.unexpected and all(u.startswith(cross) for u in probs.unexpected):
        hints.append("the checkpoint has cross encoders, i.e. it is a full R2D2 checkpoint: drop --prd2")
    if not cfg.prd2 and probs.missing and all(m.startswith(cross) for m in probs.missing):
        hints.append("only the cross encoders are missing, i.e. it looks like a PRD2 checkpoint: add --prd2")
    patch = sd.get("visual_encoder.embeddings.patch_embedding.weight")
    if isinstance(patch, torch.Tensor):
        for arch in ARCHS:
            other = model_config(size=arch).vision
            if arch != cfg.size and tuple(patch.shape) == (other.width, 3, other.patch_size, other.patch_size):
                hints.append(f"the image tower has the ViT shape of --arch {arch}")
    return hints


def check_model_coverage(model: R2D2Model, cfg: ModelConfig) -> list[str]:
    """Our side of the table: every target exists with the same shape and every other key of ours is FRESH.

    An empty list means the mapping is total; anything else is a bug in this module or in the model.
    """
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    errors, targeted = [], set()
    for key, slot in official_layout(cfg).items():
        if slot.ours is None:
            continue
        targeted.add(slot.ours)
        if slot.ours not in ours:
            errors.append(f"{key} -> {slot.ours}: no such key in our model")
        elif ours[slot.ours] != slot.shape:
            errors.append(f"{key} -> {slot.ours}: ours {list(ours[slot.ours])}, official {list(slot.shape)}")
    for key in ours:
        if key not in targeted and not key.startswith(tuple(FRESH)):
            errors.append(f"{key}: ours, but no official key maps to it and it is not in FRESH")
    return errors


def arch_config(arch: str, prd2: bool) -> ModelConfig:
    """Our config for an official architecture (the released checkpoints are base/large only)."""
    if arch not in ARCHS:
        raise UserError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return model_config({"prd2": prd2}, size=arch)


def import_state_dict(sd: dict[str, object], cfg: ModelConfig, source: str = "checkpoint") -> R2D2Model:
    """Check `sd` (official names) completely, then build our model and copy every mapped tensor."""
    probs = check_state_dict(sd, cfg)
    if not probs.ok:
        kind = "PRD2" if cfg.prd2 else "R2D2"
        raise UserError(f"{source} does not match the official {kind} layout for --arch {cfg.size}; nothing was imported.\n{probs.format()}")
    model = build_model(cfg)
    errors = check_model_coverage(model, cfg)
    if errors:
        raise RuntimeError("the official key table does not cover our model (a bug):\n" + "\n".join(errors))
    mapped = {
        slot.ours: cast(torch.Tensor, sd[key]).to(torch.float32)
        for key, slot in official_layout(cfg).items()
        if slot.ours is not None
    }
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    stray = [k for k in missing if not k.startswith(tuple(FRESH))]
    if stray or unexpected:
        raise RuntimeError(f"loading the mapped tensors failed: missing {stray}, unexpected {unexpected}")
    return model.eval()


_UNSAFE = re.compile(r"GLOBAL (\S+)")
_REASON = re.compile(r"(Unsupported [^\n]+)")


def read_checkpoint(path: str | Path) -> dict[str, object]:
    """Load a `.pth` with restricted unpickling (`weights_only=True`) and return its state dict.

    Accepts `{'model': state_dict, ...}` (the released format) or a bare state dict; strips the
    `module.` prefix DistributedDataParallel adds. A file that needs any non-tensor Python object
    (a class, a function) is refused: unpickling it could run arbitrary code.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # legacy or raw pickle: fall back to what torch's message names
            names = _UNSAFE.findall(str(err)) or _REASON.findall(str(err))
        raise UserError(
            f"{path}: refusing to load: the file needs arbitrary Python objects to unpickle "
            f"({', '.join(names) or 'unsupported pickle content'}), and only tensors and plain containers are allowed "
            "(restricted loading). Re-save just the state dict (`torch.save({'model': sd}, ...)`) from a trusted copy."
        ) from None
    except Exception as err:
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        top = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: expected checkpoint['model'] (a state dict) or a bare state dict; found {top}")
    out: dict[str, object] = {}
    for key, value in sd.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in out:
            raise UserError(f"{path}: key {name!r} appears both with and without the 'module.' prefix")
        out[name] = value
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def import_checkpoint(path: str | Path, arch: str, prd2: bool, out_dir: str | Path) -> dict[str, object]:
    """`r2d2 import-checkpoint`: read, check, map, and write our format; returns what was done."""
    from r2d2.model.io import save_pretrained

    path = Path(path)
    cfg = arch_config(arch, prd2)
    sd = read_checkpoint(path)
    model = import_state_dict(sd, cfg, source=str(path))
    layout = official_layout(cfg)
    skipped = {k: layout[k].reason for k in sd if layout[k].ours is None}
    fresh = sorted(k for k in model.state_dict() if k.startswith(tuple(FRESH)))
    info: dict[str, object] = {
        "imported_from": {"file": path.name, "sha256": sha256(path), "arch": arch, "prd2": prd2},
        "tensors_imported": sum(1 for k in sd if layout[k].ours is not None),
        "official_keys_not_used": skipped,
        "fresh": {"keys": fresh, "reason": list(FRESH.values())} if fresh else {},
    }
    save_pretrained(model, out_dir, extra=info)
    return info

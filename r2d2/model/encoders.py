"""Builders for R2D2's towers, all `transformers` modules made from configs (never from a hub).

The module layouts match the official R2D2 checkpoints: `CLIPVisionModel` (v5, flat) is the
official `visual_encoder`, `BertModel` the `text_encoder`, and `BlipTextModel` (BLIP's text
encoder, of which the official cross encoder is a copy) the `text_joint_layer`/`img_joint_layer`.
Plain `BertLayer` cross-attention assumes the keys/values are as wide as the hidden size, which
breaks ViT-L (1024) -> text (768); BLIP's config has `encoder_hidden_size` for exactly that.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, BlipTextConfig, CLIPVisionConfig, CLIPVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextModel

from r2d2.config import ModelConfig, TextConfig, VisionConfig

# The Chinese BERT vocab's special ids (see r2d2/assets/vocab.txt).
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103


def build_vision_encoder(cfg: VisionConfig) -> nn.Module:
    config = CLIPVisionConfig(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act="quick_gelu",
    )
    vision = CLIPVisionModel(config)  # v5: the flat ViT (embeddings, pre_layrnorm, encoder, post_layernorm)
    if cfg.sincos_pos:
        grid = cfg.image_size // cfg.patch_size
        table = torch.zeros(1 + grid * grid, cfg.width)
        table[1:] = sincos_2d(grid, cfg.width)
        emb = vision.embeddings.position_embedding
        emb.weight.data.copy_(table)
        emb.weight.requires_grad_(False)
    return vision


def sincos_2d(grid: int, width: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (MAE/MoCo v3 style), one row per patch, row-major."""
    if width % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {width}")
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    dim = width // 4
    omega = 1.0 / temperature ** (torch.arange(dim, dtype=torch.float32) / dim)
    out_x = xs.flatten()[:, None] * omega[None]
    out_y = ys.flatten()[:, None] * omega[None]
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)


def bert_config(cfg: TextConfig) -> BertConfig:
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.mlp_dim,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=PAD_ID,
    )


def build_text_encoder(cfg: TextConfig) -> BertModel:
    return BertModel(bert_config(cfg), add_pooling_layer=False)


def build_cross_encoder(cfg: ModelConfig, encoder_width: int) -> BlipTextModel:
    """A cross encoder whose queries are text-width tokens and whose keys/values are `encoder_width` wide."""
    config = BlipTextConfig(
        vocab_size=cfg.text.vocab_size,
        hidden_size=cfg.text.width,
        encoder_hidden_size=encoder_width,
        intermediate_size=cfg.cross.mlp_dim,
        num_hidden_layers=cfg.cross.layers,
        num_attention_heads=cfg.cross.heads,
        max_position_embeddings=512,
        pad_token_id=PAD_ID,
        bos_token_id=CLS_ID,
        sep_token_id=SEP_ID,
        eos_token_id=SEP_ID,
        is_decoder=True,  # BLIP creates the cross-attention blocks only in "decoder" configs
    )
    model = BlipTextModel(config, add_pooling_layer=False)
    for layer in model.encoder.layer:
        layer.crossattention.self.register_forward_pre_hook(_pass_cross_attention_mask, with_kwargs=True)
    return model


def _pass_cross_attention_mask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Work around a transformers 5.23 bug: `BlipTextAttention` hands the cross-attention mask to
    `BlipTextSelfAttention` as `attention_mask`, which then reads `encoder_attention_mask` (None)
    and masks nothing, so the image->text encoder would attend to text padding.
    `tests/test_model.py::test_cross_attention_ignores_text_padding` guards the fix."""
    if kwargs.get("encoder_hidden_states") is not None and kwargs.get("encoder_attention_mask") is None:
        kwargs["encoder_attention_mask"] = kwargs.get("attention_mask")
    return args, kwargs


class TokenLearner(nn.Module):
    """Wukong's token reduction: S learned soft-attention pools over the patch tokens.

    Written by hand because no maintained library ships a TokenLearner that works on a
    token sequence; it is a 2-layer MLP producing S spatial attention maps (Ryoo et al. 2021).
    """

    def __init__(self, width: int, num_tokens: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(width // 2, num_tokens)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, num_tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens [B, N, W] -> weights [B, S, N] (softmax over the N patch positions)
        weights = self.attn(self.norm(tokens)).transpose(1, 2).softmax(dim=-1)
        return weights @ tokens


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def init_temperature(value: float) -> nn.Parameter:
    if not 0.001 <= value <= 0.5:
        raise ValueError(f"temperature {value} outside [0.001, 0.5]")
    return nn.Parameter(torch.tensor(float(value)))

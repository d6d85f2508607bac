"""The R2D2 model: a dual encoder for global ranking and two cross encoders for fine ranking.

Attribute names follow the official checkpoints (`visual_encoder`, `text_encoder`,
`vision_proj`, `text_proj`, `temp`, `text_joint_layer`, `img_joint_layer`, `img_joint_proj`,
`itm_head`, `itm_head_i`) so released weights map one to one (see `r2d2.model.official`).
The model only computes representations and scores; every loss lives in `r2d2.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from r2d2.config import ModelConfig
from r2d2.model.encoders import (
    TokenLearner,
    bert_config,
    build_cross_encoder,
    build_text_encoder,
    build_vision_encoder,
    init_temperature,
)

TEMP_MIN, TEMP_MAX = 0.001, 0.5
# CLIP's pixel statistics (the official image encoder is CLIP's ViT).
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageEncoding:
    tokens: torch.Tensor  # [B, N, Wv] image states the cross encoders attend to (CLS first)
    feat: torch.Tensor  # [B, D] L2-normalised global feature
    token_feats: torch.Tensor | None = None  # [B, N', D] normalised patch features (token-wise similarity)


@dataclass
class TextEncoding:
    tokens: torch.Tensor  # [B, L, Wt]
    mask: torch.Tensor  # [B, L] 1 = real token
    feat: torch.Tensor  # [B, D]
    token_feats: torch.Tensor | None = None  # [B, L, D]


class DualEncoder(nn.Module):
    """Image and text towers with projections and temperature: PRD2, and the part the teacher copies."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = build_vision_encoder(cfg.vision)
        self.text_encoder = build_text_encoder(cfg.text)
        self.vision_proj = nn.Linear(cfg.vision.width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text.width, cfg.embed_dim)
        self.temp = init_temperature(cfg.temp_init)
        self.token_reducer = TokenLearner(cfg.vision.width, cfg.token_reduction) if cfg.token_reduction else None
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        # post_layernorm only feeds CLIP's pooler, which R2D2 never uses (kept for checkpoint keys).
        self.visual_encoder.post_layernorm.requires_grad_(False)
        if cfg.locked_image:
            self.visual_encoder.requires_grad_(False)

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] (or float in [0, 1]) -> normalised float pixels."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return (x - self.pixel_mean) / self.pixel_std

    def encode_image(self, images: torch.Tensor) -> ImageEncoding:
        pixels = self.pixel_values(images)
        if self.cfg.locked_image:
            with torch.no_grad():
                states = self._vision_states(pixels)
        else:
            states = self._vision_states(pixels)
        feat = F.normalize(self.vision_proj(states[:, 0]), dim=-1)
        if self.token_reducer is not None:
            states = torch.cat([states[:, :1], self.token_reducer(states[:, 1:])], dim=1)
        token_feats = None
        if self.cfg.similarity == "token_wise":
            token_feats = F.normalize(self.vision_proj(states[:, 1:]), dim=-1)
        return ImageEncoding(tokens=states, feat=feat, token_feats=token_feats)

    def _vision_states(self, pixels: torch.Tensor) -> torch.Tensor:
        # The official model feeds CLIP's last_hidden_state (before post_layernorm) to vision_proj
        # and to the cross encoders; imported weights only reproduce it if we do the same.
        return self.visual_encoder(pixel_values=pixels).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextEncoding:
        # attention_mask=None means no padding (transformers then skips building a mask).
        states = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feat = F.normalize(self.text_proj(states[:, 0]), dim=-1)
        token_feats = None
        if self.cfg.similarity == "token_wise":
            token_feats = F.normalize(self.text_proj(states), dim=-1)
        return TextEncoding(tokens=states, mask=attention_mask, feat=feat, token_feats=token_feats)

    def similarity(self, image: ImageEncoding, text: TextEncoding) -> torch.Tensor:
        """Cosine similarity [num_images, num_texts], global or token-wise (FILIP)."""
        if self.cfg.similarity == "global":
            return image.feat @ text.feat.t()
        return token_wise_similarity(image.token_feats, text.token_feats, text.mask)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        self.temp.clamp_(TEMP_MIN, TEMP_MAX)


def token_wise_similarity(img_tok: torch.Tensor, txt_tok: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
    """FILIP late interaction: each token takes its best match on the other side, then the mean.

    img_tok [I, N, D], txt_tok [T, L, D], txt_mask [T, L] -> [I, T]; padding never matches.
    """
    sim = torch.einsum("ind,tld->itnl", img_tok, txt_tok)  # [I, T, N, L]
    mask = txt_mask.bool()[None, :, None, :]
    i2t = sim.masked_fill(~mask, float("-inf")).amax(dim=-1).mean(dim=-1)  # per image token, best text token
    t2i = sim.amax(dim=2)  # [I, T, L]: per text token, best image token
    lengths = txt_mask.sum(-1).clamp(min=1).to(sim.dtype)
    t2i = (t2i * txt_mask[None].to(sim.dtype)).sum(-1) / lengths[None]
    return (i2t + t2i) / 2


class R2D2Model(nn.Module):
    """Dual encoder + text->image and image->text cross encoders with matching heads and MLM head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dual = DualEncoder(cfg)
        if not cfg.prd2:
            self.text_joint_layer = build_cross_encoder(cfg, encoder_width=cfg.vision.width)
            self.img_joint_layer = build_cross_encoder(cfg, encoder_width=cfg.text.width)
            self.img_joint_proj = nn.Linear(cfg.vision.width, cfg.text.width)
            self.itm_head = nn.Linear(cfg.text.width, 2)
            self.itm_head_i = nn.Linear(cfg.text.width, 2)
            # The cross encoders read token states (`encoder_embeds`), never ids: their word/position
            # embeddings exist only for key compatibility with the official checkpoints.
            self.text_joint_layer.embeddings.requires_grad_(False)
            self.img_joint_layer.embeddings.requires_grad_(False)
            self.mlm_head = BertOnlyMLMHead(bert_config(cfg.text))
            # Tie the MLM decoder to the input word embeddings (BERT/ALBEF convention).
            self.mlm_head.predictions.decoder.weight = self.dual.text_encoder.embeddings.word_embeddings.weight

    # The dual-encoder API, delegated so callers need not know about `dual`.
    def encode_image(self, images: torch.Tensor) -> ImageEncoding:
        return self.dual.encode_image(images)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextEncoding:
        return self.dual.encode_text(input_ids, attention_mask)

    def similarity(self, image: ImageEncoding, text: TextEncoding) -> torch.Tensor:
        return self.dual.similarity(image, text)

    @property
    def temp(self) -> nn.Parameter:
        return self.dual.temp

    @property
    def has_cross(self) -> bool:
        return not self.cfg.prd2

    def match_logits(
        self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matching logits [B, 2] of both cross encoders for B aligned (image, text) pairs."""
        if not self.has_cross:
            raise RuntimeError("PRD2 has no cross encoders: use the contrastive similarity instead")
        image_mask = torch.ones(image_tokens.shape[:2], dtype=text_mask.dtype, device=image_tokens.device)
        t2i = self._text_to_image_states(image_tokens, text_tokens, text_mask)[:, 0]
        i2t = self.img_joint_layer(
            encoder_embeds=self.img_joint_proj(image_tokens),
            attention_mask=image_mask,
            encoder_hidden_states=text_tokens,
            encoder_attention_mask=text_mask,
        ).last_hidden_state[:, 0]
        return self.itm_head(t2i), self.itm_head_i(i2t)

    def _text_to_image_states(
        self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Text tokens after the text->image cross encoder (every image token is attended to)."""
        image_mask = torch.ones(image_tokens.shape[:2], dtype=text_mask.dtype, device=image_tokens.device)
        return self.text_joint_layer(
            encoder_embeds=text_tokens,
            attention_mask=text_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=image_mask,
        ).last_hidden_state

    def match_score(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """P(match) averaged over the two cross encoders, [B]."""
        logits_t, logits_i = self.match_logits(image_tokens, text_tokens, text_mask)
        return (logits_t.softmax(-1)[:, 1] + logits_i.softmax(-1)[:, 1]) / 2

    def mlm_logits(
        self,
        image_tokens: torch.Tensor,
        masked_text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vocabulary logits for masked text read by the text->image cross encoder.

        [B, L, V], or [M, V] for the M positions where `select` is true: projecting only the
        masked positions onto the 21k vocabulary is most of the MLM cost saved.
        """
        states = self._text_to_image_states(image_tokens, masked_text_tokens, text_mask)
        if select is not None:
            states = states[select]
        return self.mlm_head(states)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> R2D2Model:
    with torch.device(device):
        return R2D2Model(cfg)

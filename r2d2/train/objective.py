"""The training objectives as one `nn.Module` that DDP wraps.

DDP only synchronises gradients of computations that go through the wrapped module's
`forward`, so the step (encoders -> teacher -> losses) lives here rather than in the trainer
loop. The model computes representations and scores; every formula is in `r2d2.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from r2d2.config import LossWeights, TrainConfig
from r2d2.losses import (
    FgDLoss,
    FGRLoss,
    GCPRLoss,
    MLMLoss,
    TgDLoss,
    all_gather_no_grad,
    all_gather_with_grad,
    mask_tokens,
    sample_hard_negatives,
)
from r2d2.model.encoders import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID
from r2d2.model.r2d2 import R2D2Model
from r2d2.model.teacher import MomentumTeacher

SPECIAL_IDS = [PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID]


@dataclass
class Batch:
    images: torch.Tensor  # uint8 [B, 3, H, W]
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    image_ids: torch.Tensor  # long [B]: texts of one image share its id (multi-positive)
    labels: torch.Tensor | None = None  # matching fine-tuning: 1 = the pair matches

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(*(move(getattr(self, f)) for f in ("images", "input_ids", "attention_mask", "image_ids", "labels")))


def effective_weights(cfg: TrainConfig, has_cross: bool) -> LossWeights:
    """The loss weights a run really uses: fine-tuning for retrieval is GCPR + FGR (official
    recipe), and PRD2 has no cross encoders for FGR or MLM."""
    w = cfg.losses
    if cfg.task != "pretrain":
        w = w.model_copy(update={"mlm": 0.0, "tgd": 0.0, "fgd": 0.0})
    if not has_cross:
        w = w.model_copy(update={"fgr": 0.0, "mlm": 0.0})
    return w


def needs_teacher(cfg: TrainConfig, has_cross: bool) -> bool:
    """A momentum teacher is built only when a distillation term (TgD, FgD) is on."""
    w = effective_weights(cfg, has_cross)
    return cfg.task == "pretrain" and (w.tgd > 0 or w.fgd > 0)


class R2D2Objective(nn.Module):
    """Pre-training (GCPR + FGR + MLM + TgD + FgD) and fine-tuning (retrieval, matching) losses."""

    def __init__(self, model: R2D2Model, cfg: TrainConfig, teacher: MomentumTeacher | None = None) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.weights = effective_weights(cfg, model.has_cross)
        # The teacher is not a submodule: DDP must not see it, and it is checkpointed on its own.
        self._teacher = [teacher]
        self.gcpr = GCPRLoss()
        self.fgr = FGRLoss(class_weights=cfg.distill.fgr_class_weights)
        self.mlm = MLMLoss()
        self.tgd = TgDLoss()
        self.fgd = FgDLoss(kind=cfg.distill.fgd_loss)
        self.match_ce = nn.CrossEntropyLoss()

    @property
    def teacher(self) -> MomentumTeacher | None:
        return self._teacher[0]

    @property
    def uses_teacher(self) -> bool:
        return needs_teacher(self.cfg, self.model.has_cross)

    def forward(self, batch: Batch, alpha: float = 0.0, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.cfg.task == "matching":
            return self._matching(batch)
        return self._contrastive(batch, alpha, generator)

    def _matching(self, batch: Batch) -> dict[str, torch.Tensor]:
        img = self.model.encode_image(batch.images)
        txt = self.model.encode_text(batch.input_ids, batch.attention_mask)
        logits_t, logits_i = self.model.match_logits(img.tokens, txt.tokens, txt.mask)
        match = (self.match_ce(logits_t, batch.labels) + self.match_ce(logits_i, batch.labels)) / 2
        return {"loss": match, "match": match.detach()}

    def _contrastive(self, batch: Batch, alpha: float, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        w, model = self.weights, self.model
        img = model.encode_image(batch.images)
        txt = model.encode_text(batch.input_ids, batch.attention_mask)
        temp = model.temp
        terms: dict[str, torch.Tensor] = {}

        t_img = t_txt = None
        soft_i2t = soft_t2i = None
        if self.uses_teacher:
            t_img, t_txt = self.teacher.encode(batch.images, batch.input_ids, batch.attention_mask)
        if w.tgd > 0:
            q = self.teacher.queue
            out = self.tgd(
                img.feat, txt.feat, batch.image_ids, temp, t_img.feat, t_txt.feat,
                q.image_queue, q.text_queue, q.id_queue, alpha,
            )
            terms["tgd"] = out["tgd"]
            soft_i2t, soft_t2i = out["soft_i2t"], out["soft_t2i"]

        gcpr = self.gcpr(img.feat, txt.feat, batch.image_ids, temp, soft_i2t=soft_i2t, soft_t2i=soft_t2i)
        if w.gcpr > 0:
            terms["gcpr"] = gcpr["gcpr"]
        if w.fgr > 0:
            sim_i2t, sim_t2i = gcpr["sim_i2t"], gcpr["sim_t2i"]
            sample_temp = self.cfg.distill.fgr_sample_temp
            if sample_temp is not None:  # re-scale cosine/temp logits to cosine/sample_temp
                scale = temp.detach().float() / sample_temp
                sim_i2t, sim_t2i = sim_i2t * scale, sim_t2i * scale
            terms["fgr"] = self._fgr(img.tokens, txt, batch.image_ids, sim_i2t, sim_t2i, generator)
        if w.mlm > 0 or w.fgd > 0:
            masked_ids, labels = mask_tokens(
                batch.input_ids, batch.attention_mask, model.cfg.text.vocab_size, MASK_ID, SPECIAL_IDS,
                probability=self.cfg.distill.mlm_probability, generator=generator,
            )
            masked = model.encode_text(masked_ids, batch.attention_mask)
            if w.mlm > 0:
                select = labels != -100
                logits = model.mlm_logits(img.tokens, masked.tokens, masked.mask, select=select)
                terms["mlm"] = self.mlm(logits, labels[select])["mlm"]
            if w.fgd > 0:
                # FgD: the student reads masked text and regresses the teacher's full-text features.
                terms["fgd"] = self.fgd(masked.tokens, t_txt.tokens, batch.attention_mask, masked.feat, t_txt.feat)["fgd"]

        loss = sum(getattr(w, name) * value for name, value in terms.items())
        out = {"loss": loss, **{k: v.detach() for k, v in terms.items()}, "temp": temp.detach()}
        if self.uses_teacher:
            out["_teacher_feats"] = (t_img.feat, t_txt.feat)
        return out

    def _fgr(self, image_tokens, txt, image_ids, sim_i2t, sim_t2i, generator) -> torch.Tensor:
        """Matching on B positives and 2B hard negatives sampled over the global batch."""
        g_img = all_gather_with_grad(image_tokens)
        g_txt = all_gather_with_grad(txt.tokens)
        g_mask = all_gather_no_grad(txt.mask)
        g_ids = all_gather_no_grad(image_ids)
        neg_img, neg_txt = sample_hard_negatives(sim_t2i, sim_i2t, image_ids, g_ids, generator=generator)
        images = torch.cat([image_tokens, g_img[neg_img], image_tokens])
        texts = torch.cat([txt.tokens, txt.tokens, g_txt[neg_txt]])
        masks = torch.cat([txt.mask, txt.mask, g_mask[neg_txt]])
        logits_t, logits_i = self.model.match_logits(images, texts, masks)
        return self.fgr(logits_t, logits_i)["fgr"]

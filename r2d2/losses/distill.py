"""TgD and FgD: distillation from a momentum (EMA) teacher.

Our formulation after ALBEF's momentum distillation (the R2D2 paper body was not
available): noisy web pairs make one-hot targets wrong for many near-duplicate
captions; a slowly moving teacher supplies soft targets that tolerate them.

- `TgDLoss` (target-guided): the student's contrastive rows are scored against the
  teacher's gathered batch features plus a queue of older teacher features, with
  targets ŷ = (1-α)·y + α·softmax(s_teacher/τ). It also hands back ŷ restricted to the
  GCPR columns so the trainer can feed them to `GCPRLoss`.
- `FgDLoss` (feature-guided): the student, reading masked text, regresses the
  teacher's features of the full text.
- `FeatureQueue` keeps the teacher features as buffers, so checkpoints carry them.
- `ema_update` moves the teacher towards the student.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from r2d2.losses.gather import all_gather_no_grad, gather_sizes, rank_scale
from r2d2.losses.gcpr import _as_temp, multi_positive_targets, soft_cross_entropy


def soft_targets(teacher_sim: Tensor, hard_targets: Tensor, temp: Tensor | float, alpha: float) -> Tensor:
    """(1-α)·hard_targets + α·softmax(teacher_sim / temp), computed without gradient.

    `teacher_sim` is the raw (cosine) similarity; `temp` divides it here. Rows sum to 1
    whenever `hard_targets` rows do.
    """
    with torch.no_grad():
        t = _as_temp(temp, teacher_sim).detach()
        teacher = F.softmax(teacher_sim.float() / t, dim=1)
        return (1.0 - alpha) * hard_targets.float() + alpha * teacher


class TgDLoss(nn.Module):
    """Target-guided distillation: ALBEF-style contrastive loss against a teacher queue.

    Columns are [teacher batch features gathered from every rank (no grad); queue].
    Queue slots whose id is -1 are empty: they are removed from both softmaxes and are
    never positives. Gradient reaches only the student's local rows (and `temp`); the
    per-rank loss follows the convention of `r2d2.losses.gather`.

    Returns `tgd`, and `soft_i2t` / `soft_t2i`: soft targets [B, N] over the GCPR
    columns (the global batch) built from the teacher, for `GCPRLoss(soft_i2t=...)`.
    """

    def forward(
        self,
        image_feat: Tensor,
        text_feat: Tensor,
        image_ids: Tensor,
        temp: Tensor | float,
        t_image_feat: Tensor,
        t_text_feat: Tensor,
        image_queue: Tensor,
        text_queue: Tensor,
        id_queue: Tensor,
        alpha: float,
    ) -> dict[str, Tensor]:
        sizes = gather_sizes(image_feat.shape[0], image_feat.device)
        t_image_all = all_gather_no_grad(t_image_feat, sizes)
        t_text_all = all_gather_no_grad(t_text_feat, sizes)
        ids_all = all_gather_no_grad(image_ids, sizes)
        n = ids_all.shape[0]

        col_image = torch.cat([t_image_all.float(), image_queue.detach().t().float()], dim=0)
        col_text = torch.cat([t_text_all.float(), text_queue.detach().t().float()], dim=0)
        queue_ids = id_queue.to(ids_all)
        valid = torch.cat([torch.ones_like(ids_all, dtype=torch.bool), queue_ids >= 0])
        col_ids = torch.cat([ids_all, queue_ids])

        t = _as_temp(temp, image_feat)
        t_nograd = t.detach()
        with torch.no_grad():
            # Empty slots are never positives, even for a (malformed) batch id of -1.
            pos = (image_ids.reshape(-1, 1) == col_ids.reshape(1, -1)) & valid
            hard = pos.float() / pos.sum(1, keepdim=True).clamp_min(1).float()
            neg_inf = float("-inf")
            t_i2t = (t_image_feat.float() @ col_text.t()).masked_fill(~valid, neg_inf)
            t_t2i = (t_text_feat.float() @ col_image.t()).masked_fill(~valid, neg_inf)
            tgt_i2t = soft_targets(t_i2t, hard, t_nograd, alpha)
            tgt_t2i = soft_targets(t_t2i, hard, t_nograd, alpha)
            # GCPR columns = the global batch only: renormalise over the first n columns.
            gcpr_hard = multi_positive_targets(image_ids, ids_all)
            soft_i2t = soft_targets(t_i2t[:, :n], gcpr_hard, t_nograd, alpha)
            soft_t2i = soft_targets(t_t2i[:, :n], gcpr_hard, t_nograd, alpha)

        s_i2t = image_feat.float() @ col_text.t() / t
        s_t2i = text_feat.float() @ col_image.t() / t
        loss = (soft_cross_entropy(s_i2t, tgt_i2t, valid) + soft_cross_entropy(s_t2i, tgt_t2i, valid)) / 2
        loss = loss * rank_scale(image_feat.shape[0], n)
        return {"tgd": loss, "soft_i2t": soft_i2t, "soft_t2i": soft_t2i}


class FeatureQueue(nn.Module):
    """FIFO ring of teacher features [D, K] and their image ids [K] (-1 = empty slot).

    Everything is a buffer so `state_dict()` (and so every checkpoint) carries the
    queue and its pointer; resuming does not restart distillation from an empty queue.
    `size == 0` gives an inert queue (TgD then uses the current global batch only).
    """

    image_queue: Tensor
    text_queue: Tensor
    id_queue: Tensor
    ptr: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim <= 0 or size < 0:
            raise ValueError(f"FeatureQueue needs dim > 0 and size >= 0, got dim={dim}, size={size}")
        self.size = size
        self.register_buffer("image_queue", torch.zeros(dim, size))
        self.register_buffer("text_queue", torch.zeros(dim, size))
        self.register_buffer("id_queue", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image_feat: Tensor, text_feat: Tensor, ids: Tensor) -> None:
        """Append the features of every rank (gathered, rank order) with wrap-around.

        Item i of the gathered batch goes to slot (ptr + i) % K, exactly as if written
        one by one: a batch that does not divide K writes its tail at the end and the
        rest at the start; a batch larger than K keeps only its last K items. No host
        sync: the pointer stays on the device.
        """
        if self.size == 0:
            return
        sizes = gather_sizes(image_feat.shape[0], image_feat.device)
        images = all_gather_no_grad(image_feat, sizes)
        texts = all_gather_no_grad(text_feat, sizes)
        all_ids = all_gather_no_grad(ids, sizes)
        n = images.shape[0]
        if n == 0:
            return
        k = self.size
        slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % k
        keep = min(n, k)
        slots = slots[n - keep :]
        self.image_queue.index_copy_(1, slots, images[n - keep :].t().to(self.image_queue))
        self.text_queue.index_copy_(1, slots, texts[n - keep :].t().to(self.text_queue))
        self.id_queue.index_copy_(0, slots, all_ids[n - keep :].to(self.id_queue))
        self.ptr.copy_((self.ptr + n) % k)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher_p = m·teacher_p + (1-m)·student_p for every parameter; buffers copied.

    Parameters are paired by name, so a teacher built from a different module tree
    fails loudly instead of averaging the wrong tensors together.
    """
    t_named = dict(teacher.named_parameters())
    s_named = dict(student.named_parameters())
    if t_named.keys() != s_named.keys():
        missing = sorted(set(s_named) ^ set(t_named))[:5]
        raise ValueError(f"ema_update: teacher and student parameters differ, e.g. {missing}")
    names = list(s_named)
    t_params = [t_named[k].data for k in names]
    s_params = [s_named[k].data.to(t_named[k].dtype) for k in names]
    if t_params:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    t_buffers = dict(teacher.named_buffers())
    for name, buf in student.named_buffers():
        if name in t_buffers:
            t_buffers[name].copy_(buf)


class FgDLoss(nn.Module):
    """Feature-guided distillation: student (masked text) regresses teacher (full text).

    `fgd = (token term + cls term) / 2`; the token term averages over the non-padding
    positions of `attention_mask` only. `kind="smooth_l1"` averages SmoothL1 (beta=1)
    over the feature dimension; `kind="cosine"` uses 1 - cos per vector and is
    independent of feature scale (the CLS features are L2-normalised, so under
    smooth_l1 their term is small). The teacher is always detached.
    """

    def __init__(self, kind: Literal["smooth_l1", "cosine"] = "smooth_l1") -> None:
        super().__init__()
        if kind not in ("smooth_l1", "cosine"):
            raise ValueError(f"FgDLoss: unknown kind {kind!r}; choose smooth_l1 or cosine")
        self.kind = kind

    def _per_vector(self, student: Tensor, teacher: Tensor) -> Tensor:
        student, teacher = student.float(), teacher.detach().float()
        if self.kind == "cosine":
            return 1.0 - F.cosine_similarity(student, teacher, dim=-1)
        return F.smooth_l1_loss(student, teacher, reduction="none").mean(dim=-1)

    def forward(
        self,
        student_tokens: Tensor,
        teacher_tokens: Tensor,
        attention_mask: Tensor,
        student_cls_feat: Tensor,
        teacher_cls_feat: Tensor,
    ) -> dict[str, Tensor]:
        mask = attention_mask.to(torch.float32)
        per_token = self._per_vector(student_tokens, teacher_tokens)
        tokens = (per_token * mask).sum() / mask.sum().clamp_min(1.0)
        cls = self._per_vector(student_cls_feat, teacher_cls_feat).mean()
        return {"fgd": (tokens + cls) / 2, "fgd_tokens": tokens.detach(), "fgd_cls": cls.detach()}

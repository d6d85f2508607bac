"""GCPR: global contrastive pre-ranking over the features of every rank.

Why this shape: each rank scores its *local* rows against the *global* columns
(gathered with gradient), like open_clip's `local_loss`. That costs B x N instead of
N x N per rank and, with the convention in `r2d2.losses.gather`, gives exactly the
gradient of the single-process loss over the global batch.

Targets are multi-positive: web corpora (Zero, Wukong) pair one image with several
texts, so two samples of the same image id in a batch are not negatives of each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from r2d2.losses.gather import all_gather_no_grad, all_gather_with_grad, gather_sizes, rank_scale


def multi_positive_targets(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """Row-stochastic targets [R, C]: 1/|positives| on every column with the row's id.

    A row without any positive (impossible when the row's own sample is among the
    columns) gets an all-zero target row instead of NaNs.
    """
    pos = (row_ids.reshape(-1, 1) == col_ids.reshape(1, -1)).float()
    return pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean over rows of -(targets * log_softmax(logits)).sum(1).

    `valid` [C] (bool) drops columns from the softmax entirely (empty queue slots);
    their targets must be zero. Computed so that 0 * log(0) never produces NaN.
    """
    logits = logits.float()
    if valid is not None:
        logits = logits.masked_fill(~valid.reshape(1, -1), float("-inf"))
    logp = F.log_softmax(logits, dim=1)
    if valid is not None:
        logp = logp.masked_fill(~valid.reshape(1, -1), 0.0)
    return -(targets.to(logp.dtype) * logp).sum(dim=1).mean()


def _as_temp(temp: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(temp, Tensor):
        return temp.float()
    return torch.tensor(float(temp), device=like.device)


class GCPRLoss(nn.Module):
    """Symmetric multi-positive InfoNCE over globally gathered features.

    `forward` returns `gcpr` (the loss of this rank, see the gradient convention in
    `r2d2.losses.gather`), `sim_i2t` / `sim_t2i` (detached logits = cosine / temp of
    local rows against global columns, used by FGR to sample hard negatives), and
    `targets` (the hard multi-positive targets [B, N], identical for both directions
    because image i and text i share `image_ids[i]`), and `col_ids` (the [N] image ids
    of the global columns, rank order: the `col_ids` of `sample_hard_negatives`).
    """

    def forward(
        self,
        image_feat: Tensor,
        text_feat: Tensor,
        image_ids: Tensor,
        temp: Tensor | float,
        soft_i2t: Tensor | None = None,
        soft_t2i: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if image_feat.shape != text_feat.shape or image_feat.shape[0] != image_ids.shape[0]:
            raise ValueError(
                f"GCPR expects paired [B, D] features and [B] ids, got {tuple(image_feat.shape)}, "
                f"{tuple(text_feat.shape)}, {tuple(image_ids.shape)}"
            )
        sizes = gather_sizes(image_feat.shape[0], image_feat.device)
        image_all = all_gather_with_grad(image_feat, sizes)
        text_all = all_gather_with_grad(text_feat, sizes)
        ids_all = all_gather_no_grad(image_ids, sizes)

        t = _as_temp(temp, image_feat)
        # fp32 logits: with bf16 features, cosine/0.01 would lose ~2 significant digits.
        sim_i2t = image_feat.float() @ text_all.float().t() / t
        sim_t2i = text_feat.float() @ image_all.float().t() / t

        targets = multi_positive_targets(image_ids, ids_all)
        tgt_i2t = targets if soft_i2t is None else soft_i2t.detach()
        tgt_t2i = targets if soft_t2i is None else soft_t2i.detach()
        for name, tgt in (("soft_i2t", tgt_i2t), ("soft_t2i", tgt_t2i)):
            if tgt.shape != sim_i2t.shape:
                raise ValueError(
                    f"GCPR: {name} has shape {tuple(tgt.shape)}, expected {tuple(sim_i2t.shape)}"
                )

        loss = (soft_cross_entropy(sim_i2t, tgt_i2t) + soft_cross_entropy(sim_t2i, tgt_t2i)) / 2
        loss = loss * rank_scale(image_feat.shape[0], image_all.shape[0])
        return {
            "gcpr": loss,
            "sim_i2t": sim_i2t.detach(),
            "sim_t2i": sim_t2i.detach(),
            "targets": targets,
            "col_ids": ids_all,
        }

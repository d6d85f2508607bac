"""FGR: fine-grained ranking with hard negatives mined from the GCPR similarities.

Why: the cross encoders see only pairs, so they learn little from random negatives.
Sampling one negative per sample with probability softmax(sim) (positives zeroed), as
in ALBEF/R2D2, concentrates their capacity on the confusable pairs. Sampling is one
vectorised `torch.multinomial` per direction with no host sync, so it does not stall
the GPU each step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _negative_weights(sim: Tensor, positive: Tensor) -> Tensor:
    """Unnormalised, finite, non-negative sampling weights; every row has some mass.

    softmax(sim) with positives zeroed, in float32 with the row max (over negatives)
    subtracted, so the largest negative weighs exactly 1 and nothing overflows.
    Fallbacks, per row, when no weight survives: uniform over the non-positive columns
    (e.g. their similarities were -inf/NaN), or, when every column is a positive (the
    whole global batch shows one image), uniform over all columns; such a pick is then
    not a true negative and cannot be, since no negative exists.
    """
    logits = sim.detach().float()
    logits = logits.masked_fill(positive | torch.isnan(logits), float("-inf"))
    row_max = logits.amax(dim=1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - row_max)
    weights = torch.where(torch.isfinite(weights), weights, torch.zeros_like(weights))

    negative = (~positive).float()
    empty = weights.sum(dim=1, keepdim=True) <= 0
    weights = torch.where(empty, negative, weights)
    still_empty = weights.sum(dim=1, keepdim=True) <= 0
    return torch.where(still_empty, torch.ones_like(weights), weights)


def _draw(weights: Tensor, generator: torch.Generator | None) -> Tensor:
    device = weights.device
    if generator is not None and generator.device != device:
        weights = weights.to(generator.device)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1).to(device)


def sample_hard_negatives(
    sim_t2i: Tensor,
    sim_i2t: Tensor,
    row_ids: Tensor,
    col_ids: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick one hard negative column per row, in each direction.

    Args:
        sim_t2i: [B, N] logits of the local texts against the global images.
        sim_i2t: [B, N] logits of the local images against the global texts.
        row_ids: [B] image ids of the local samples.
        col_ids: [N] image ids of the global columns.
        generator: optional RNG for reproducible draws (may live on another device).

    Returns:
        (neg_image_idx, neg_text_idx), each [B] long on the input device: the column of
        the global batch that is the hard negative image of each local text, and the
        hard negative text of each local image. Columns sharing the row's id are never
        chosen unless the row has no other column (see `_negative_weights`).
    """
    if sim_t2i.shape != sim_i2t.shape or sim_t2i.shape != (row_ids.shape[0], col_ids.shape[0]):
        raise ValueError(
            f"sample_hard_negatives: shapes {tuple(sim_t2i.shape)}, {tuple(sim_i2t.shape)} do not match "
            f"[{row_ids.shape[0]}, {col_ids.shape[0]}]"
        )
    positive = row_ids.reshape(-1, 1) == col_ids.reshape(1, -1)
    neg_image = _draw(_negative_weights(sim_t2i, positive), generator)
    neg_text = _draw(_negative_weights(sim_i2t, positive), generator)
    return neg_image, neg_text


def fgr_labels(b: int, device: torch.device | str | None = None) -> Tensor:
    """[3b] match labels for rows ordered [b positives, 2b negatives]: 1 = match."""
    return torch.cat(
        [torch.ones(b, dtype=torch.long, device=device), torch.zeros(2 * b, dtype=torch.long, device=device)]
    )


class FGRLoss(nn.Module):
    """Class-weighted 2-way CE of both cross encoders' match heads.

    Each encoder scores [B positives; B negatives from one direction; B from the other]
    (rows ordered positives first, then the 2B negatives). `class_weights[c]` weighs
    class c (0 = no match, 1 = match); the default (1, 2) is the official fine-tuning
    setting and balances the 1:2 positive:negative ratio. Reduction is PyTorch's
    weighted mean: sum_i w[y_i]·ce_i / sum_i w[y_i]. `fgr = (L_t + L_i) / 2`; the loss is
    local to the rank (the mean over its rows; DDP averages across ranks).
    """

    class_weights: Tensor

    def __init__(self, class_weights: Sequence[float] = (1.0, 2.0)) -> None:
        super().__init__()
        if len(class_weights) != 2 or min(class_weights) < 0:
            raise ValueError(f"FGRLoss: class_weights must be two non-negative numbers, got {class_weights}")
        self.register_buffer(
            "class_weights", torch.tensor([float(w) for w in class_weights]), persistent=False
        )

    def _ce(self, logits: Tensor) -> Tensor:
        if logits.ndim != 2 or logits.shape[1] != 2 or logits.shape[0] % 3:
            raise ValueError(f"FGRLoss expects [3B, 2] logits, got {tuple(logits.shape)}")
        labels = fgr_labels(logits.shape[0] // 3, logits.device)
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights.to(logits.device))

    def forward(self, logits_t2i: Tensor, logits_i2t: Tensor) -> dict[str, Tensor]:
        return {"fgr": (self._ce(logits_t2i) + self._ce(logits_i2t)) / 2}

"""The momentum teacher for target- and feature-guided distillation (TgD, FgD).

An EMA copy of the student's dual encoder (ALBEF-style momentum model) plus feature queues
kept as buffers, so both are saved and restored with checkpoints.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from r2d2.losses.distill import FeatureQueue, ema_update
from r2d2.model.r2d2 import DualEncoder, ImageEncoding, TextEncoding


class MomentumTeacher(nn.Module):
    def __init__(self, student: DualEncoder, momentum: float, queue_size: int) -> None:
        super().__init__()
        self.momentum = momentum
        self.encoder = copy.deepcopy(student)
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        self.queue = FeatureQueue(student.cfg.embed_dim, queue_size) if queue_size > 0 else None

    def train(self, mode: bool = True) -> MomentumTeacher:
        # The teacher never trains (no dropout): it only follows the student by EMA.
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, student: DualEncoder) -> None:
        ema_update(self.encoder, student, self.momentum)

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[ImageEncoding, TextEncoding]:
        return self.encoder.encode_image(images), self.encoder.encode_text(input_ids, attention_mask)

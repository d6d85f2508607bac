"""MLM on the text->image cross encoder (BERT masking; 15 % is our choice).

Why here and not via `transformers`' data collator: the masked ids also feed FgD (the
student reads the masked text, the teacher the full text), so masking is a plain
tensor function the trainer calls on the device, reproducible with a generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100


def _rand(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Sequence[int],
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT 80/10/10 masking of the non-special, non-padding tokens.

    Each candidate token is selected with `probability`; of the selected, 80 % become
    `mask_token_id`, 10 % a random non-special token, 10 % stay as they are. `labels`
    hold the original id at selected positions and -100 elsewhere. If the draw selects
    nothing in the whole batch, the candidate with the smallest draw is selected, so
    MLM always has a target (vectorised, no host sync); only a batch with no candidate
    at all (every token special or padding) stays unmasked, and `MLMLoss` then gives an
    exact zero. Returns (masked_ids, labels).
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mask_tokens: probability must be in (0, 1), got {probability}")
    device = input_ids.device
    specials = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=device)
    candidate = attention_mask.bool() & ~torch.isin(input_ids, specials)

    draw = _rand(input_ids.shape, device, generator)
    selected = (draw < probability) & candidate
    # Guarantee one target: the candidate with the smallest draw, used only if none was selected.
    first = torch.zeros_like(candidate).flatten()
    first[draw.masked_fill(~candidate, 2.0).flatten().argmin()] = True
    first = first.reshape(candidate.shape) & candidate
    selected = selected | (first & ~selected.any())

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    kind = _rand(input_ids.shape, device, generator)
    to_mask = selected & (kind < 0.8)
    to_random = selected & (kind >= 0.8) & (kind < 0.9)

    # Built on the host from the python list: only a host->device copy, never a sync.
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in set(special_ids) if 0 <= i < vocab_size]] = False
    allowed_ids = allowed.nonzero().flatten().to(device=device, dtype=input_ids.dtype)
    if allowed_ids.numel() == 0:
        raise ValueError("mask_tokens: every vocabulary id is special; nothing to draw random tokens from")
    pick = (_rand(input_ids.shape, device, generator) * allowed_ids.numel()).long()
    random_ids = allowed_ids[pick.clamp_max(allowed_ids.numel() - 1)]

    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


class MLMLoss(nn.Module):
    """Token CE over the masked positions (labels != -100).

    Computed as sum / max(count, 1), so a batch without targets gives an exact zero that
    is still attached to the graph (backward works, gradients are zero) and no host sync
    is needed to detect it.
    """

    def forward(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        if logits.shape[:-1] != labels.shape:
            raise ValueError(
                f"MLMLoss: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}"
            )
        flat_logits = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1)
        total = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (flat_labels != IGNORE_INDEX).sum().clamp_min(1)
        return {"mlm": total / count}

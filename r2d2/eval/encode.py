"""Batched feature extraction for evaluation: every image and text is encoded exactly once.

Retrieval ranks Q queries against G gallery items; encoding each side once and ranking the
stored features costs O(Q + G) encoder passes instead of O(Q x G). What is stored:
- global features (and token features for token-wise similarity) on the compute device,
  since ranking reads them for every query chunk;
- the encoder states the cross encoders attend to, only when re-ranking needs them, on a
  storage device (CPU by default): they are the largest thing kept (ViT-L: 257 x 1024 per
  image) and re-ranking gathers just the top-k of a chunk, so accelerator memory stays small.
Texts are tokenized per batch (padded to the batch's longest) and padded once more to the
longest of the whole set when stored; attention masks keep the padding inert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from r2d2.model.r2d2 import ImageEncoding, TextEncoding
from r2d2.tokenizer import tokenize

# An image gallery: a uint8 tensor [G, 3, H, W], or any sequence whose items are uint8
# [3, H, W] tensors or H x W x 3 arrays (decoded lazily, so raw pixels need not fit in memory).
Images = torch.Tensor | Sequence[torch.Tensor | np.ndarray]


@dataclass
class EncodedImages:
    feat: torch.Tensor  # [G, D] L2-normalised global features (compute device)
    token_feats: torch.Tensor | None  # [G, N', D] for token-wise similarity (compute device)
    tokens: torch.Tensor | None  # [G, N, W] states for the cross encoders (storage device)

    def __len__(self) -> int:
        return self.feat.shape[0]

    def encoding(self, index: slice | torch.Tensor, device: torch.device, with_tokens: bool = False) -> ImageEncoding:
        """The `ImageEncoding` of a subset, in the shape the model's `similarity` takes."""
        tokens = torch.empty(0, device=device)
        if with_tokens:
            if self.tokens is None:
                raise RuntimeError("image tokens were not kept: encode with keep_tokens=True")
            tokens = _take(self.tokens, index).to(device, non_blocking=True)
        token_feats = None if self.token_feats is None else _take(self.token_feats, index)
        return ImageEncoding(tokens=tokens, feat=_take(self.feat, index), token_feats=token_feats)


@dataclass
class EncodedTexts:
    feat: torch.Tensor  # [T, D] (compute device)
    mask: torch.Tensor  # [T, L] 1 = real token (compute device)
    token_feats: torch.Tensor | None  # [T, L, D] (compute device)
    tokens: torch.Tensor | None  # [T, L, W] (storage device)

    def __len__(self) -> int:
        return self.feat.shape[0]

    def encoding(self, index: slice | torch.Tensor, device: torch.device, with_tokens: bool = False) -> TextEncoding:
        """A subset, trimmed to its own longest text so cross-encoder cost follows real lengths."""
        mask = _take(self.mask, index)
        length = max(1, int(mask.sum(1).max())) if mask.numel() else 1
        mask = mask[:, :length]
        tokens = torch.empty(0, device=device)
        if with_tokens:
            if self.tokens is None:
                raise RuntimeError("text tokens were not kept: encode with keep_tokens=True")
            tokens = _take(self.tokens, index)[:, :length].to(device, non_blocking=True)
        token_feats = None if self.token_feats is None else _take(self.token_feats, index)[:, :length]
        return TextEncoding(tokens=tokens, mask=mask, feat=_take(self.feat, index), token_feats=token_feats)


def _on(index: slice | torch.Tensor, device: torch.device) -> slice | torch.Tensor:
    return index if isinstance(index, slice) else index.to(device)


def _take(t: torch.Tensor, index: slice | torch.Tensor) -> torch.Tensor:
    return t[_on(index, t.device)]


def image_batch(images: Images, start: int, stop: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] for items start..stop of a tensor or a lazily decoded sequence."""
    if isinstance(images, torch.Tensor):
        return images[start:stop]
    items = []
    for i in range(start, stop):
        item = images[i]
        t = torch.from_numpy(np.ascontiguousarray(item)).permute(2, 0, 1) if isinstance(item, np.ndarray) else item
        items.append(t)
    return torch.stack(items)


def _pad_cat(parts: list[torch.Tensor], length: int) -> torch.Tensor:
    """Concatenate [b, l_i, ...] batches along dim 0 after zero-padding dim 1 to `length`."""
    padded = [F.pad(p, (0, 0) * (p.dim() - 2) + (0, length - p.shape[1])) for p in parts]
    return torch.cat(padded)


@torch.inference_mode()
def encode_images(
    model: torch.nn.Module,
    images: Images,
    batch_size: int,
    device: torch.device,
    keep_tokens: bool = False,
    store_device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> EncodedImages:
    """Encode a gallery in batches (progress bar on a terminal; `progress=False` silences it)."""
    feats, token_feats, tokens = [], [], []
    n = len(images)
    with tqdm(total=n, desc="encode images", unit="img", disable=None if progress is None else not progress) as bar:
        for start in range(0, n, batch_size):
            batch = image_batch(images, start, min(start + batch_size, n)).to(device, non_blocking=True)
            enc = model.encode_image(batch)
            feats.append(enc.feat)
            if enc.token_feats is not None:
                token_feats.append(enc.token_feats)
            if keep_tokens:
                tokens.append(enc.tokens.to(store_device))
            bar.update(batch.shape[0])
    if not feats:
        raise ValueError("no images to encode")
    return EncodedImages(
        feat=torch.cat(feats),
        token_feats=torch.cat(token_feats) if token_feats else None,
        tokens=torch.cat(tokens) if keep_tokens else None,
    )


@torch.inference_mode()
def encode_texts(
    model: torch.nn.Module,
    texts: Sequence[str],
    max_len: int,
    batch_size: int,
    device: torch.device,
    keep_tokens: bool = False,
    store_device: torch.device | str = "cpu",
    tokenizer: object | None = None,
    progress: bool | None = None,
) -> EncodedTexts:
    """Tokenize and encode texts in batches; the stored set is padded to its longest text."""
    feats, masks, token_feats, tokens = [], [], [], []
    n = len(texts)
    with tqdm(total=n, desc="encode texts", unit="text", disable=None if progress is None else not progress) as bar:
        for start in range(0, n, batch_size):
            chunk = list(texts[start : start + batch_size])
            batch = tokenize(chunk, max_len, tokenizer=tokenizer)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            enc = model.encode_text(ids, mask)
            feats.append(enc.feat)
            masks.append(enc.mask)
            if enc.token_feats is not None:
                token_feats.append(enc.token_feats)
            if keep_tokens:
                tokens.append(enc.tokens.to(store_device))
            bar.update(len(chunk))
    if not feats:
        raise ValueError("no texts to encode")
    length = max(m.shape[1] for m in masks)
    return EncodedTexts(
        feat=torch.cat(feats),
        mask=torch.cat([F.pad(m, (0, length - m.shape[1])) for m in masks]),
        token_feats=_pad_cat(token_feats, length) if token_feats else None,
        tokens=_pad_cat(tokens, length) if keep_tokens else None,
    )


class LazyImages(Sequence[torch.Tensor]):
    """Encoded images (bytes, or paths to files) decoded to uint8 [3, size, size] only when a batch needs them.

    A 30k-image gallery at 224 px is 4.5 GB of raw pixels; decoding per batch keeps that out of memory.
    """

    def __init__(self, sources: Sequence[bytes | str | Path], size: int) -> None:
        self.sources = list(sources)
        self.size = size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        from r2d2.data.formats import decode_image

        src = self.sources[i]
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        return torch.from_numpy(decode_image(data, self.size)).permute(2, 0, 1)

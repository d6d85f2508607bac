"""Image-text pairs in memory, batched deterministically for training.

The demo and fine-tuning sets are small (thousands of 32-64 px images), so images are decoded
once into one uint8 tensor and texts tokenized once: a CPU step then costs only the model.
Batches are a pure function of (seed, epoch, step), which is what makes `--resume` exact.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from r2d2.errors import UserError
from r2d2.tokenizer import load_tokenizer
from r2d2.train.objective import Batch


def decode_to_array(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


@dataclass
class PairData:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    image_ids: torch.Tensor  # long [N], unique per image
    texts: list[str]
    text_image: torch.Tensor  # long [T]: index into images
    input_ids: torch.Tensor  # [T, Lmax] padded with 0
    lengths: torch.Tensor  # [T]
    labels: torch.Tensor | None = None  # [T] for matching data

    @property
    def num_texts(self) -> int:
        return len(self.texts)

    def steps_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        steps = self.num_texts // (batch_size * world_size)
        if steps == 0:
            raise UserError(
                f"{self.num_texts} texts cannot fill one batch of {batch_size} x {world_size} ranks: "
                "lower batch_size or use more data"
            )
        return steps

    def batch(self, epoch: int, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Batch:
        """The rank's slice of global batch `step` of `epoch`; the same on every call."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_texts, generator=g)
        start = (step * world_size + rank) * batch_size
        idx = order[start : start + batch_size]
        # Pad to the longest text of the batch (~1.5x faster than a fixed length); distributed runs
        # pad to the global maximum so token tensors can be all-gathered.
        length = int(self.lengths.max() if world_size > 1 else self.lengths[idx].max())
        ids = self.input_ids[idx, :length]
        img_idx = self.text_image[idx]
        return Batch(
            images=self.images[img_idx],
            input_ids=ids,
            attention_mask=(ids != 0).long(),
            image_ids=self.image_ids[img_idx],
            labels=None if self.labels is None else self.labels[idx],
        )

    def iter_texts(self, batch_size: int) -> Iterator[slice]:
        for start in range(0, self.num_texts, batch_size):
            yield slice(start, min(start + batch_size, self.num_texts))


def build_pairs(
    images: list[np.ndarray], image_ids: list[int], texts: list[str], text_image: list[int], max_len: int,
    labels: list[int] | None = None,
) -> PairData:
    if not texts:
        raise UserError("no texts to train on")
    tok = load_tokenizer()
    enc = tok(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    ids = enc["input_ids"]
    return PairData(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        image_ids=torch.tensor(image_ids, dtype=torch.long),
        texts=list(texts),
        text_image=torch.tensor(text_image, dtype=torch.long),
        input_ids=ids,
        lengths=enc["attention_mask"].sum(1),
        labels=None if labels is None else torch.tensor(labels, dtype=torch.long),
    )


def load_cnclip_pairs(split_dir: str | Path, split: str, image_size: int, max_len: int) -> PairData:
    """Pairs from a Chinese-CLIP style split (`{split}_imgs.tsv` + `{split}_texts.jsonl`)."""
    from r2d2.data.formats import read_cnclip_split

    images, records = read_cnclip_split(Path(split_dir), split)
    keys = sorted(images)
    pos = {k: i for i, k in enumerate(keys)}
    arrays = [decode_to_array(images[k], image_size) for k in keys]
    texts, text_image = [], []
    for rec in records:
        for image_id in rec["image_ids"][:1]:
            if image_id not in pos:
                raise UserError(f"{split_dir}: text {rec['text_id']} names image {image_id}, which is not in {split}_imgs.tsv")
            texts.append(rec["text"])
            text_image.append(pos[image_id])
    return build_pairs(arrays, [int(k) for k in keys], texts, text_image, max_len)


def load_matching_pairs(jsonl: str | Path, root: str | Path, image_size: int, max_len: int) -> PairData:
    """Labelled pairs from an ICM/IQM-style JSONL (`text`, `image_path`, `label`)."""
    from r2d2.data.formats import read_icm_jsonl

    rows = read_icm_jsonl(Path(jsonl))
    paths = sorted({r["image_path"] for r in rows})
    pos = {p: i for i, p in enumerate(paths)}
    arrays = [decode_to_array((Path(root) / p).read_bytes(), image_size) for p in paths]
    return build_pairs(
        arrays, list(range(len(paths))), [r["text"] for r in rows], [pos[r["image_path"]] for r in rows], max_len,
        labels=[int(r["label"]) for r in rows],
    )

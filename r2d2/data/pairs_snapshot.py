"""Training pairs from a validated WebDataset snapshot (`r2d2 snapshot` output).

Each snapshot sample is one unique image with all its texts; every text becomes a pair and
the texts of one image share its id, so GCPR treats them as positives of each other.
In-memory like `PairData`: right for the demo and fine-tuning sets; a corpus that does not fit
in memory streams its shards with webdataset instead (see docs/data.md).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from r2d2.data.pairs import PairData, build_pairs, decode_to_array
from r2d2.data.shards import iter_snapshot_samples, snapshot_summary
from r2d2.errors import UserError


def load_snapshot_pairs(snapshot_dir: str | Path, image_size: int, max_len: int, progress: bool = False) -> PairData:
    summary = snapshot_summary(snapshot_dir)
    images, image_ids, texts, text_image = [], [], [], []
    for sample in tqdm(iter_snapshot_samples(snapshot_dir), desc="loading snapshot", disable=not progress):
        index = len(images)
        images.append(decode_to_array(sample["image_bytes"], image_size))
        image_ids.append(index)
        for text in sample["texts"]:
            texts.append(text)
            text_image.append(index)
    if not images:
        raise UserError(f"{snapshot_dir}: the snapshot holds no images (unique images: {summary.get('unique_images')})")
    return build_pairs(images, image_ids, texts, text_image, max_len)

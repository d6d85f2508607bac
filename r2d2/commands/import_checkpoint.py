"""`r2d2 import-checkpoint`: convert a released R2D2 / PRD2 `.pth` into our format.

Reads `checkpoint['model']` (or a bare state dict) with restricted unpickling only, maps every
official key explicitly onto ours (see `r2d2/model/official.py` for the table and where the names
come from), and refuses with the full list of missing, unexpected and mis-shaped keys; the
official loader would drop those silently. Writes model.safetensors + config.json + vocab.txt.

Keys of the official checkpoints that we do not use (the text encoder's BERT pooler, index
buffers saved by transformers 4.15) are allowed by name and recorded in config.json. Our MLM
head has no official counterpart and stays freshly initialised.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 80


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-checkpoint",
        help="convert a released R2D2/PRD2 .pth checkpoint into our format (strict key mapping)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", type=Path, help="the official .pth file (e.g. r2d2_pretrain_250m.pth)")
    p.add_argument("--arch", required=True, choices=("base", "large"), help="ViT-B/16 (base) or ViT-L/14 (large) image tower")
    p.add_argument("--prd2", action="store_true", help="the checkpoint is PRD2: the dual encoder alone, no cross encoders")
    p.add_argument("--out", required=True, type=Path, help="output model folder (replaced if it exists)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from r2d2.model import official

    start = time.perf_counter()
    info = official.import_checkpoint(args.path, args.arch, args.prd2, args.out)
    skipped = info["official_keys_not_used"]
    fresh = info["fresh"]
    print(f"imported {info['tensors_imported']} tensors from {args.path} into {args.out} in {time.perf_counter() - start:.1f}s")
    if skipped:
        print(f"  {len(skipped)} official keys not used (allowed by name, listed in config.json): {', '.join(sorted(skipped))}")
    if fresh:
        print(f"  {len(fresh['keys'])} keys freshly initialised (no official counterpart): MLM head")
    return 0

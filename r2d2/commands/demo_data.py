"""`r2d2 demo-data`: write the embedded synthetic corpus, so the pipeline runs with no download.

Layout under --out (other stages read exactly these paths):

    images/<key>.png                     all images (keys demo-train-000000, demo-eval-000000)
    zero/zero_demo.json                  Zero (CCMB) records: Url, Title, Content, Keywords, ImageKey, ImageUrl, ImageQuery
    wukong/wukong_100m_{0,1}.csv         Wukong CSVs, header `url,caption`, url = images/<key>.png
    train/train_imgs.tsv, train_texts.jsonl          Chinese-CLIP style training split (captions + queries)
    eval/retrieval/valid_imgs.tsv, valid_texts.jsonl held-out retrieval split, unique attribute combinations
    eval/matching/valid.jsonl            ICM style matching pairs, balanced labels, hard negatives
    eval/matching/train.jsonl            the same for train images (matching fine-tuning)
    attributes.jsonl                     ground-truth attributes, captions and query of every image
    demo_info.json                       seed, counts, vocab, chance levels, sha256 of every file
"""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-data",
        help="write the synthetic demo corpus (coloured shapes + Chinese captions) in the real formats",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (empty, or a previous demo corpus)")
    p.add_argument("--params", default="params.yaml", help="params file; its demo_data section gives the defaults")
    p.add_argument("--seed", type=int, help="random seed (same seed -> byte-identical files)")
    p.add_argument("--train-images", type=int, help="number of training images")
    p.add_argument("--eval-images", type=int, help="number of held-out evaluation images")
    p.add_argument("--image-size", type=int, help="image side in pixels")
    p.add_argument("--captions-per-image", type=int, help="captions written per image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from pydantic import ValidationError

    from r2d2.config import DemoDataConfig, load_params
    from r2d2.data.demo import generate_demo_corpus
    from r2d2.errors import UserError

    base = load_params(args.params).demo_data.model_dump()
    overrides = {k: getattr(args, k) for k in base if getattr(args, k, None) is not None}
    try:
        cfg = DemoDataConfig.model_validate({**base, **overrides})
    except ValidationError as err:
        msgs = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in err.errors())
        raise UserError(msgs) from None
    start = time.perf_counter()
    info = generate_demo_corpus(args.out, cfg)
    n = info["counts"]
    print(
        f"wrote demo corpus to {args.out} in {time.perf_counter() - start:.1f}s: "
        f"{n['train_images']} train images ({n['train_texts']} texts), {n['eval_images']} eval images, "
        f"{n['matching_rows']} matching pairs; retrieval R@1 chance {info['chance']['retrieval_r1']:.2%}"
    )
    return 0

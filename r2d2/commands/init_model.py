"""`r2d2 init-model`: write the untrained initialisation as a model folder (the evaluation baseline)."""

from __future__ import annotations

import argparse

ORDER = 25


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init-model",
        help="write the untrained model (params.yaml `model`, seeded like pre-training) as a baseline to evaluate",
        description="Builds the model of params.yaml `model` with the seed of `pretrain.seed` - exactly the weights "
        "pre-training starts from - and saves it like a trained one, so `r2d2 evaluate` can report the "
        "untrained baseline next to the trained model.",
    )
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from r2d2.config import load_params
    from r2d2.model.io import save_pretrained
    from r2d2.model.r2d2 import build_model

    params = load_params(args.params)
    torch.manual_seed(params.pretrain.seed)
    save_pretrained(build_model(params.model), args.out, extra={"task": "untrained"})
    print(f"untrained {params.model.size} model written to {args.out}")
    return 0

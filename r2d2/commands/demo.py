"""`r2d2 demo`: the main job on the embedded corpus, on CPU, in minutes."""

from __future__ import annotations

import argparse

ORDER = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="generate the demo corpus, pre-train, fine-tune and evaluate a tiny R2D2; print trained vs untrained",
        description="Runs demo-data -> pretrain -> finetune (retrieval) -> evaluate on the embedded synthetic corpus "
        "with params.yaml (tiny model; a few minutes on 2 CPU cores) and prints a table of the trained model "
        "against the untrained one. Everything lands under --workdir.",
    )
    p.add_argument("--workdir", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from r2d2.config import load_params
    from r2d2.demo import MIN_X_CHANCE, MIN_X_UNTRAINED, format_demo_table, run_demo

    result = run_demo(load_params(args.params), args.workdir, progress=not args.no_progress)
    print()
    print("Retrieval on the held-out demo gallery (unseen attribute combinations), matching on held-out pairs (%):")
    print(format_demo_table(result))
    verdict = "PASS" if result.passed else "FAIL"
    print(f"\n{verdict}: fine-tuned T->I R@1 must be >= {MIN_X_CHANCE:g}x chance and >= {MIN_X_UNTRAINED:g}x untrained.")
    print(f"report: {result.report_path}")
    return 0 if result.passed else 1

"""`r2d2 evaluate`: retrieval (R@1/5/10, MR) and matching (AUC) of a saved model on local datasets.

    r2d2 evaluate --model MODEL_DIR --retrieval DIR[:SPLIT] --matching JSONL --out metrics.json

--retrieval reads a Chinese-CLIP style split: DIR/SPLIT_imgs.tsv + DIR/SPLIT_texts.jsonl (MUGE's
MR_SPLIT_imgs.tsv + MR_SPLIT_queries.jsonl too); SPLIT may be left out when DIR holds one split.
--matching reads ICM/IQM JSONL (`text`, `image_path`, `label`); image paths are relative to
--matching-root, by default the JSONL's folder or the nearest parent that holds them.
Retrieval ranks by the contrastive similarity and re-ranks each query's top k (evaluate.rerank_k)
by match + cosine. Chinese-CLIP-compatible top-10 predictions go to --predictions (default: a
`predictions` folder next to --out), so Chinese-CLIP's own scorer can check the numbers.
All metrics are in percent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ORDER = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="retrieval recall and matching AUC of a saved model; writes metrics JSON and Chinese-CLIP predictions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="model folder (model.safetensors + config.json)")
    p.add_argument("--retrieval", metavar="DIR[:SPLIT]", help="Chinese-CLIP style retrieval split")
    p.add_argument("--directions", default="t2i,i2t", help="retrieval directions, comma-separated (MUGE: t2i)")
    p.add_argument("--matching", metavar="JSONL", type=Path, help="ICM/IQM style labelled pairs")
    p.add_argument("--matching-root", type=Path, help="folder the matching image paths are relative to")
    p.add_argument("--out", required=True, type=Path, help="metrics JSON to write")
    p.add_argument("--predictions", type=Path, help="folder for prediction files (default: OUT's folder/predictions)")
    p.add_argument("--params", default="params.yaml", help="params file; its evaluate section gives the defaults")
    p.add_argument("--rerank-k", type=int, help="re-rank each query's top K with the cross encoders (0: off)")
    p.add_argument("--batch-size", type=int, help="images/texts per encoder batch and pairs per re-rank call")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    # --- MLflow tracking (r2d2.registry.tracking) ---
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=None,
                   help="log metrics, this JSON, recall@K and ROC plots to MLflow (default: on when params "
                   "`tracking.enabled` says so or MLFLOW_TRACKING_URI is set)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: tracking.experiment or r2d2)")
    p.add_argument("--run-name", default=None, help="MLflow run name (default: evaluate-<out file name>)")
    p.set_defaults(func=run)


def parse_split(spec: str) -> tuple[Path, str, str]:
    """`DIR[:SPLIT]` -> (dir, split, prefix); without SPLIT the folder must hold exactly one split."""
    from r2d2.errors import UserError

    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and not any(c in tail for c in "/\\"):
        folder, split = Path(head), tail
    else:
        folder, split = Path(spec), ""
    if not folder.is_dir():
        raise UserError(f"--retrieval: {folder} is not a folder")
    found = sorted(p.name[: -len("_imgs.tsv")] for p in folder.glob("*_imgs.tsv"))
    if not split:
        if len(found) != 1:
            raise UserError(f"--retrieval: {folder} holds splits {found or 'none'}; name one as {folder}:SPLIT")
        split = found[0]
    elif split not in found and f"MR_{split}" in found:
        split = f"MR_{split}"
    if split not in found:
        raise UserError(f"--retrieval: no {split}_imgs.tsv in {folder} (splits there: {found or 'none'})")
    prefix = "MR_" if split.startswith("MR_") else ""
    return folder, split[len(prefix) :], prefix


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    from pydantic import ValidationError

    from r2d2.config import EvalConfig, load_params
    from r2d2.errors import UserError

    if args.retrieval is None and args.matching is None:
        raise UserError("nothing to evaluate: give --retrieval DIR[:SPLIT] and/or --matching JSONL")
    directions = tuple(d.strip() for d in args.directions.split(",") if d.strip())
    if not directions or set(directions) - {"t2i", "i2t"}:
        raise UserError(f"--directions: expected t2i, i2t or both, got {args.directions!r}")
    base = load_params(args.params).evaluate.model_dump()
    overrides = {k: getattr(args, k) for k in base if getattr(args, k, None) is not None}
    try:
        cfg = EvalConfig.model_validate({**base, **overrides})
    except ValidationError as err:
        raise UserError("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in err.errors())) from None
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    split = parse_split(args.retrieval) if args.retrieval else None
    if args.matching is not None and not args.matching.is_file():
        raise UserError(f"--matching: {args.matching} is not a file")

    from r2d2.eval.matching import evaluate_icm
    from r2d2.eval.report import format_table, write_metrics
    from r2d2.eval.retrieval import evaluate_cnclip_split
    from r2d2.model.io import VOCAB, load_pretrained
    from r2d2.tokenizer import load_tokenizer

    start = time.perf_counter()
    model, mcfg = load_pretrained(args.model, device)
    vocab = args.model / VOCAB
    tokenizer = load_tokenizer(str(vocab)) if vocab.is_file() else None  # the vocab the model was trained with
    predictions = args.predictions or args.out.parent / "predictions"
    metrics: dict = {
        "model": str(args.model), "prd2": mcfg.prd2, "similarity": mcfg.similarity,
        "device": str(device), "evaluate": cfg.model_dump(),
    }
    if split is not None:
        folder, name, prefix = split
        try:
            metrics["retrieval"] = evaluate_cnclip_split(
                model, folder, name, cfg, mcfg.text.max_len, device, prefix=prefix, directions=directions,
                predictions_dir=predictions, tokenizer=tokenizer,
            )
        except (OSError, ValueError) as err:
            raise UserError(f"--retrieval {args.retrieval}: {err}") from None
    if args.matching is not None:
        metrics["matching"] = evaluate_icm(
            model, args.matching, args.matching_root, cfg, mcfg.text.max_len, device,
            tokenizer=tokenizer, predictions_path=predictions / "matching_scores.jsonl",
        )
    metrics["seconds"] = time.perf_counter() - start
    write_metrics(args.out, metrics)
    print(format_table(metrics))
    # --- MLflow tracking: one run per evaluation, logged once the JSON is written ---
    from r2d2.registry.tracking import (
        flatten,
        load_tracking_settings,
        log_evaluation,
        should_track,
        start_run,
    )

    settings = load_tracking_settings(args.params)
    if should_track(args.mlflow, settings):
        settings.system_metrics = False  # the run opens after the work: nothing left to sample
        with start_run(True, run_name=args.run_name or f"evaluate-{args.out.stem}", experiment=args.experiment,
                       settings=settings, tags={"r2d2.stage": "evaluate"},
                       params={"model": str(args.model), "retrieval": args.retrieval or "", "matching": str(args.matching or ""),
                               "directions": ",".join(directions), **flatten(cfg.model_dump(), "evaluate.")}) as tracker:
            log_evaluation(tracker, metrics, args.out, args.out.parent / "plots")
            print(f"logged to MLflow run {tracker.run_id}")
    # --- end MLflow tracking ---
    print(f"wrote {args.out} and predictions under {predictions} in {metrics['seconds']:.1f}s")
    return 0

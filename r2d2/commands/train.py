"""`r2d2 pretrain` and `r2d2 finetune`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 20
EXIT_STOPPED = 75  # EX_TEMPFAIL: interrupted, resumable

DATA_HELP = (
    "training data: a Chinese-CLIP style folder holding SPLIT_imgs.tsv + SPLIT_texts.jsonl "
    "(e.g. the demo corpus's train/ or eval/retrieval/), a snapshot folder from `r2d2 snapshot`, "
    "or for --task matching an ICM-style JSONL (text, image_path, label)"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--split", default="train", help="split name inside a Chinese-CLIP folder (default: train)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, model/, history.jsonl, loss.png")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml; all defaults if absent)")
    p.add_argument("--resume", default=None, help="'latest' (the run folder's newest checkpoint) or a checkpoint path")
    p.add_argument("--max-steps", type=int, default=None, help="override the section's max_steps")
    p.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and stop after this many steps, as if preempted (resume with --resume latest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # --- MLflow tracking (r2d2.registry.tracking) ---
    p.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=None,
                   help="log params, per-step metrics, system metrics and loss.png to MLflow (default: on when "
                   "params `tracking.enabled` says so or MLFLOW_TRACKING_URI is set; rank 0 only)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: tracking.experiment or r2d2)")
    p.add_argument("--run-name", default=None, help="MLflow run name (default: STAGE-<out folder name>)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pre-train R2D2 (GCPR + FGR + MLM + TgD + FgD) from params.yaml `model` and `pretrain`",
        description="Pre-train R2D2 from scratch. Reads params.yaml sections `model` and `pretrain`; runs on "
        "one CPU/GPU, or on many GPUs and nodes under torchrun (`torchrun --nproc-per-node N -m r2d2.cli pretrain ...`).",
    )
    _common(p)
    p.set_defaults(func=run_pretrain)

    f = subparsers.add_parser(
        "finetune",
        help="fine-tune a model for retrieval (GCPR + FGR) or matching (match-head CE)",
        description="Fine-tune from a model folder (`--init`). Reads params.yaml section `finetune`; "
        "`--task` overrides finetune.task.",
    )
    _common(f)
    f.add_argument("--init", required=True, help="model folder to start from (a run's model/ or an imported checkpoint)")
    f.add_argument("--task", choices=["retrieval", "matching"], default=None)
    f.add_argument("--images-root", default=None, help="for matching JSONL: folder image_path is relative to (default: its corpus root)")
    f.set_defaults(func=run_finetune)


def load_training_data(data: str, split: str, image_size: int, max_len: int, task: str, images_root: str | None = None):
    from r2d2.data.pairs import load_cnclip_pairs, load_matching_pairs
    from r2d2.errors import UserError

    path = Path(data)
    if task == "matching":
        if not path.is_file():
            raise UserError(f"--data {data}: matching fine-tuning needs an ICM-style JSONL file")
        root = Path(images_root) if images_root else _corpus_root(path)
        return load_matching_pairs(path, root, image_size, max_len)
    if (path / f"{split}_imgs.tsv").is_file():
        return load_cnclip_pairs(path, split, image_size, max_len)
    if path.is_dir() and (any(path.glob("*.tar")) or (path / "shards").is_dir()):
        from r2d2.data.pairs_snapshot import load_snapshot_pairs

        return load_snapshot_pairs(path, image_size, max_len)
    raise UserError(f"--data {data}: neither {split}_imgs.tsv (Chinese-CLIP) nor WebDataset shards found there")


def _corpus_root(jsonl: Path) -> Path:
    """The folder image paths are relative to: the nearest parent holding `images/`."""
    for parent in jsonl.parents:
        if (parent / "images").is_dir():
            return parent
    return jsonl.parent


def _run(args: argparse.Namespace, section: str, init: str | None, task: str | None) -> int:
    from r2d2.config import load_params
    from r2d2.train.trainer import train

    params = load_params(args.params)
    cfg = getattr(params, section)
    updates = {}
    if task:
        updates["task"] = task
    if args.max_steps:
        updates["max_steps"] = args.max_steps
    if updates:
        cfg = cfg.model_copy(update=updates)
    model_cfg = params.model
    if init:
        from r2d2.model.io import read_config

        model_cfg = read_config(init)
    data = load_training_data(args.data, args.split, model_cfg.vision.image_size, model_cfg.text.max_len, cfg.task,
                              getattr(args, "images_root", None))
    # --- MLflow tracking (r2d2.registry.tracking): a NullRun when off, so `train` never needs MLflow ---
    from r2d2.registry.tracking import flatten, load_tracking_settings, should_track, start_run

    settings = load_tracking_settings(args.params)
    tracker = start_run(
        should_track(args.mlflow, settings), run_name=args.run_name or f"{section}-{Path(args.out).name}",
        experiment=args.experiment, settings=settings, tags={"r2d2.stage": section},
        params={**flatten(model_cfg.model_dump(mode="json"), "model."), **flatten(cfg.model_dump(mode="json"), f"{section}."),
                "data": args.data, "init": init or "", "resume": args.resume or ""},
    )
    with tracker:
        result = train(model_cfg, cfg, data, args.out, init_from=init, resume=args.resume, stop_after=args.stop_after,
                       progress=not args.no_progress, on_log=tracker.on_log)
        tracker.set_tags({"r2d2.stopped_early": str(result.stopped_early).lower()})
        for name in ("loss.png", "history.jsonl", "train_metrics.json"):
            tracker.log_artifact(Path(args.out) / name, "train")
    # --- end MLflow tracking ---
    if result.stopped_early:
        # Not a success: DVC and Prefect must not record an unfinished run as done.
        print(f"stopped after step {result.steps}; resume with --resume latest")
        return EXIT_STOPPED
    else:
        summary = json.loads((Path(args.out) / "train_metrics.json").read_text())
        print(json.dumps(summary, indent=2))
        print(f"model written to {result.model_dir}")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    return _run(args, "pretrain", None, None)


def run_finetune(args: argparse.Namespace) -> int:
    return _run(args, "finetune", args.init, args.task)

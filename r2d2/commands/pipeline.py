"""`r2d2 pipeline`: drive the DVC stages of dvc.yaml with Prefect, and the pipeline's own stages.

    r2d2 pipeline run [--server] [--data-update none|pull|add] [--target STAGE] [--force] [--push]
    r2d2 pipeline data [--update pull | --add | --regenerate] [--push]
    r2d2 pipeline stages
    r2d2 pipeline report --out reports --eval NAME=metrics.json ... [--history RUN=history.jsonl ...]

`run` is the main job: it makes data/ match data.dvc, runs every stage as a Prefect task
(`dvc repro --single-item STAGE`: DVC skips what did not change), and ends by printing the
champion, its metrics, and how to open the MLflow UI, the Prefect UI and the Data Docs.
Without --server the flow runs in Prefect's no-server mode (or against PREFECT_API_URL when set);
--server starts the Prefect server of `r2d2 services` (127.0.0.1) and records the run there.
See docs/pipeline.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ORDER = 5


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pipeline",
        help="run the whole pipeline (Prefect flow over the DVC stages); data/ setup; the report stage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="run the pipeline flow: data -> ... -> register -> promote; print the champion")
    run.add_argument("--repo", default=".", help="pipeline checkout (folder with dvc.yaml; default: here or a parent)")
    run.add_argument("--server", action="store_true",
                     help="record the run on the local Prefect server (`r2d2 services up --only prefect`, started if needed)")
    run.add_argument("--data-update", choices=["none", "pull", "add"], default="none",
                     help="none: data/ as data.dvc says (default); pull: `git pull --ff-only` first; "
                     "add: record the current data/ as a new data version")
    run.add_argument("--target", action="append", metavar="STAGE",
                     help="stop at this stage (with everything upstream); repeatable; e.g. --target report")
    run.add_argument("--force", action="store_true", help="re-run every stage even if nothing changed")
    run.add_argument("--push", action="store_true", help="`dvc push` data and outputs to the default remote at the end")
    run.add_argument("--retries", type=int, default=2, help="retries of a stage after a transient failure (default 2)")
    run.add_argument("--retry-delay", type=float, default=10.0, help="first retry delay in seconds, doubling (default 10)")
    run.add_argument("--parallel", type=int, default=4, help="stages run at once at most (default 4)")
    run.add_argument("--params", default="params.yaml", help="params file with the `services:` section (for --server)")
    run.set_defaults(func=run_pipeline)

    data = sub.add_parser("data", help="make data/ match data.dvc (cache, remote, or regenerate the demo corpus)")
    data.add_argument("--repo", default=".", help="pipeline checkout (default: here or a parent)")
    mode = data.add_mutually_exclusive_group()
    mode.add_argument("--update", choices=["none", "pull"], default="none",
                      help="pull: `git pull --ff-only` first (the latest committed data version)")
    mode.add_argument("--add", action="store_true", help="record the current data/ as a new data version (dvc add)")
    mode.add_argument("--regenerate", action="store_true",
                      help="write the demo corpus from params.yaml `demo_data` into data/demo and record it")
    data.add_argument("--push", action="store_true", help="`dvc push data.dvc` after --add/--regenerate")
    data.add_argument("--params", default="params.yaml", help="params file (for --regenerate)")
    data.set_defaults(func=run_data)

    stages = sub.add_parser("stages", help="list the stages of dvc.yaml with their upstream stages")
    stages.add_argument("--repo", default=".", help="pipeline checkout (default: here or a parent)")
    stages.set_defaults(func=run_stages)

    rep = sub.add_parser("report", help="(the `report` stage) one JSON + a markdown table across datasets, plot data")
    rep.add_argument("--out", required=True, type=Path, help="output folder: metrics.json, report.md, plots/")
    rep.add_argument("--eval", action="append", required=True, metavar="NAME=PATH",
                     help="an `r2d2 evaluate` metrics JSON of dataset NAME; repeatable")
    rep.add_argument("--history", action="append", metavar="RUN=PATH",
                     help="a training run's history.jsonl (loss curves); repeatable")
    rep.add_argument("--reference", action="append", metavar="NAME=PAPER",
                     help="compare dataset NAME with the paper's numbers for PAPER (flickr30k-cn, coco-cn, muge, ...); "
                     "default: NAME itself")
    rep.add_argument("--baseline", action="append", metavar="NAME=PATH",
                     help="the untrained model's metrics JSON for dataset NAME (an `untrained` column); repeatable")
    rep.set_defaults(func=run_report)


def _use_server(params: str, root: Path) -> None:
    """Start (or find) the Prefect server of `r2d2 services` and point this process at it."""
    from r2d2.services.config import load_services_config
    from r2d2.services.manager import ServiceManager

    params_path = Path(params) if Path(params).is_absolute() else root / params
    mgr = ServiceManager(load_services_config(params_path), root=root)
    mgr.up("prefect", echo=lambda line: print(line, file=sys.stderr))
    api = mgr.exports().get("PREFECT_API_URL")
    if not api:
        from r2d2.errors import UserError

        raise UserError("the Prefect server did not come up; see `r2d2 services status`")
    os.environ["PREFECT_API_URL"] = api


def load_flow(root: Path):  # -> the r2d2_pipeline flow of this checkout
    """Import `flows.pipeline`: from the checkout when it has flows/ (project code, not part of the
    installed package), else from the source tree r2d2 is installed from (an editable install)."""
    import r2d2
    from r2d2.errors import UserError

    candidates = [Path(root), Path(r2d2.__file__).resolve().parents[1]]
    for base in candidates:
        if (base / "flows" / "pipeline.py").is_file():
            if str(base) not in sys.path:
                sys.path.insert(0, str(base))
            break
    else:
        raise UserError(f"no flows/pipeline.py in {root} or next to the r2d2 package; run from a checkout of r2d2-pipeline")
    from flows.pipeline import r2d2_pipeline

    return r2d2_pipeline


def run_pipeline(args: argparse.Namespace) -> int:
    from r2d2.pipeline.dvc import StageFailed, project_root

    root = project_root(args.repo)
    if args.server:
        _use_server(args.params, root)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # no-server mode starts a local API process; its first start migrates a database, slow on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    start = time.perf_counter()
    flow = load_flow(root)
    from prefect.task_runners import ThreadPoolTaskRunner

    from r2d2.pipeline import summary

    flow = flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=max(1, args.parallel)))
    try:
        result = flow(repo=str(root), data_update=args.data_update, targets=args.target, force=args.force,
                      push=args.push, retries=args.retries, retry_delay_s=args.retry_delay)
    except StageFailed as err:
        print(f"\npipeline failed at stage {err.stage} (exit {err.returncode}); last output:\n{err.tail[-3000:]}",
              file=sys.stderr)
        return 1
    print()
    print(f"pipeline finished in {time.perf_counter() - start:.1f}s")
    print(summary.format_summary(root, summary.champion(root), result.get("flow_run_id"), result.get("stages")))
    return 0


def run_data(args: argparse.Namespace) -> int:
    from r2d2.pipeline.data import add_data_version, ensure_data, regenerate_demo
    from r2d2.pipeline.dvc import project_root

    root = project_root(args.repo)
    if args.regenerate:
        regenerate_demo(root, args.params, push=args.push)
    elif args.add:
        add_data_version(root, push=args.push)
    else:
        print(ensure_data(root, update=args.update).line())
    return 0


def run_stages(args: argparse.Namespace) -> int:
    from r2d2.pipeline.dvc import project_root, stage_graph

    graph = stage_graph(project_root(args.repo))
    width = max(len(n) for n in graph)
    for name, info in graph.items():
        print(f"{name:<{width}}  <- {', '.join(info.upstream) or 'data.dvc'}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from r2d2.pipeline.report import parse_named, write_report

    report = write_report(args.out, parse_named(args.eval, "eval"), parse_named(args.history, "history"),
                          parse_named(args.reference, "reference"), parse_named(args.baseline, "baseline"))
    primary = report["primary"]["value"]
    print(f"wrote {args.out}/metrics.json, report.md and plots/ for {len(report['datasets'])} dataset(s); "
          f"primary (mean retrieval MR) {'-' if primary is None else f'{primary:.2f}'}")
    return 0

"""`r2d2 reproduce MODEL@ALIAS`: rebuild a registered model from its lineage and compare metrics.

    r2d2 reproduce R2D2@champion               # or R2D2/3 for a version number
    r2d2 reproduce R2D2@champion --use-run-cache --keep --json out.json

Reads the version's lineage tags (git commit, data.dvc md5, params hash), checks the commit
out into a git worktree under .r2d2/reproduce/ sharing this checkout's DVC cache, restores
data/ as that commit's data.dvc says, runs `dvc repro --force` on everything the register
stage depends on, and prints registered vs reproduced metrics. Exit code 0 when every
metric matches (bit-identical by default), 1 otherwise.
"""

from __future__ import annotations

import argparse

ORDER = 75


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="re-run the pipeline at a registered version's git commit and data; compare its metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL@ALIAS", help="registered model: NAME@ALIAS (R2D2@champion) or NAME/VERSION")
    p.add_argument("--repo", default=".", help="the pipeline checkout holding the git history (default: here)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="largest accepted |reproduced - registered| in metric points (default 0: bit-identical)")
    p.add_argument("--use-run-cache", action="store_true",
                   help="let DVC restore stages it ran before with identical inputs instead of re-executing them")
    p.add_argument("--worktree", default=None, help="where to check the commit out (default .r2d2/reproduce/NAME-vN-COMMIT)")
    p.add_argument("--keep", action="store_true", help="keep the worktree after a successful comparison")
    p.add_argument("--tracking-uri", default=None, help="registry to read (default: MLFLOW_TRACKING_URI or the embedded store)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the comparison as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from r2d2.pipeline.reproduce import remove_worktree, reproduce, write_json

    res = reproduce(args.model, args.repo, use_run_cache=args.use_run_cache, tolerance=args.tolerance,
                    worktree=args.worktree, tracking_uri=args.tracking_uri)
    print()
    print(f"{res.name} version {res.version} at commit {res.commit[:12]}: "
          f"reproduced in {res.seconds:.0f}s ({len(res.stages_ran)} stage(s) executed"
          f"{', the rest restored from the DVC run cache' if args.use_run_cache else ''})")
    print(res.table())
    for w in res.warnings:
        print(f"warning: {w}")
    verdict = ("IDENTICAL: every metric is bit-identical" if res.identical
               else f"MATCH within tolerance {args.tolerance:g}" if res.matches else "MISMATCH")
    print(verdict)
    if args.json:
        write_json(res, args.json)
    if res.matches and not args.keep:
        from pathlib import Path

        from r2d2.pipeline.dvc import project_root

        remove_worktree(project_root(args.repo), Path(res.worktree))
    else:
        print(f"worktree kept: {res.worktree}")
    return 0 if res.matches else 1

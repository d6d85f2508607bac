"""`r2d2 promote`: move the `champion` alias to the challenger only if it wins.

    r2d2 promote --name R2D2 [--margin 0.5] [--tolerance 1.0] [--dry-run]

Primary metric: the mean over datasets of the retrieval mean recall (MR, percent), over the
datasets both versions were evaluated on. The challenger wins if its primary is higher by at
least --margin points and no other metric both report is lower by more than --tolerance
points. Without a champion the challenger becomes champion. The decision and the comparison
are tagged on the challenger version (`promotion.*`, and `promoted_at`, `previous_champion`
when promoted). --dry-run prints the comparison and changes nothing. Concurrent promotions are
serialised by a lock file (see docs/registry.md). Defaults come from params.yaml `promote:`.
Exit code 0 whether or not the challenger was promoted; 3 with --fail-if-rejected.
"""

from __future__ import annotations

import argparse
import json

ORDER = 72


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "promote",
        help="compare `challenger` with `champion`; move `champion` if the challenger wins by a margin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", default=None, help="registered model name (default: register.name or R2D2)")
    p.add_argument("--margin", type=float, default=None, help="points the primary metric must improve by (default 0.5)")
    p.add_argument("--tolerance", type=float, default=None, help="points any other metric may drop by (default 1.0)")
    p.add_argument("--version", default=None, help="compare this version instead of the `challenger` alias")
    p.add_argument("--dry-run", action="store_true", help="print the decision, change nothing")
    p.add_argument("--params", default="params.yaml", help="params file with `promote:` defaults")
    p.add_argument("--tracking-uri", default=None, help="override MLFLOW_TRACKING_URI / the embedded store")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--fail-if-rejected", action="store_true", help="exit 3 when the challenger is not promoted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from r2d2.commands.register import section
    from r2d2.errors import UserError
    from r2d2.registry.promote import promote

    cfg = section(args.params, "promote")
    name = args.name or section(args.params, "register").get("name") or "R2D2"
    margin = args.margin if args.margin is not None else float(cfg.get("margin", 0.5))
    tolerance = args.tolerance if args.tolerance is not None else float(cfg.get("tolerance", 1.0))
    try:
        res = promote(name, margin=margin, tolerance=tolerance, dry_run=args.dry_run, version=args.version,
                      tracking_uri=args.tracking_uri)
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.json:
        print(json.dumps(asdict(res), indent=2, ensure_ascii=False))
    else:
        print(f"{name}: challenger version {res.challenger} vs champion {res.champion_before or '(none)'}"
              f"  (margin {margin:g}, tolerance {tolerance:g}{', dry run' if res.dry_run else ''})")
        print(res.decision.table())
        if res.note:
            print(f"note: {res.note}")
        state = "would become" if res.dry_run and res.decision.promote else "is now" if res.changed else "stays"
        who = res.challenger if res.decision.promote else res.champion_after
        print(f"champion {state}: version {who or '(none)'}")
    return 3 if args.fail_if_rejected and not res.decision.promote else 0

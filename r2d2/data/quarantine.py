"""Quarantine tables and the row-count invariant that proves nothing was lost.

Each stage writes its rejects next to its own output (`<ingest>/quarantine/ingest-*.parquet`,
`<validated>/quarantine/validate-*.parquet`, `<snapshot>/quarantine/image-*.parquet`), all with
QUARANTINE_SCHEMA: stage, failed rules, reason, and the row's source file and line. The failure
ledger (`<snapshot>/ledger/*.parquet`) holds rows whose image could not be fetched. Together:

    ingested rows = ingest quarantine + validate quarantine + image quarantine + ledger + snapshot rows
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from r2d2.data.manifest import QUARANTINE_SCHEMA, parquet_files, read_table
from r2d2.errors import UserError


class InvariantError(RuntimeError):
    """Rows were lost or double-counted between stages: a bug, never bad input."""


def read_quarantine(dirs: Iterable[str | Path]) -> pd.DataFrame:
    """All quarantine rows under the given stage output folders, as one DataFrame."""
    files = [f for d in dirs for f in parquet_files(Path(d) / "quarantine")]
    return read_table(files, QUARANTINE_SCHEMA).to_pandas()


def rule_counts(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{stage: {rule: rows}}; a row that broke two rules counts once under each."""
    out: dict[str, dict[str, int]] = {}
    for stage, rules in zip(df["stage"], df["rules"], strict=True):
        for rule in rules:
            out.setdefault(stage, {}).setdefault(rule, 0)
            out[stage][rule] += 1
    return {s: dict(sorted(r.items())) for s, r in sorted(out.items())}


def reconcile(validated: dict[str, Any] | None, snap: dict[str, int]) -> dict[str, Any]:
    """Check the snapshot's own balance and, given validate.json, the whole chain from ingest.

    `snap` has the snapshot totals: input_rows, rows, quarantine_rows, ledger_rows.
    """
    own = snap["rows"] + snap["quarantine_rows"] + snap["ledger_rows"]
    if own != snap["input_rows"]:
        raise InvariantError(
            f"snapshot rows {snap['rows']} + image quarantine {snap['quarantine_rows']} + ledger {snap['ledger_rows']}"
            f" = {own} != {snap['input_rows']} input rows"
        )
    out: dict[str, Any] = {
        "snapshot_input_rows": snap["input_rows"], "snapshot_rows": snap["rows"],
        "image_quarantine": snap["quarantine_rows"], "ledger": snap["ledger_rows"],
    }
    if validated is None:
        out["balanced"] = True
        out["note"] = "input was not a validate output folder: only the snapshot's own balance is checked"
        return out
    if validated["passed"] != snap["input_rows"]:
        raise UserError(
            f"validate.json says {validated['passed']} rows passed but the snapshot read {snap['input_rows']}:"
            " the manifest folder changed after validation; re-run `r2d2 validate`"
        )
    ingest = validated["ingest"]
    total = ingest["quarantine_rows"] + validated["quarantine_rows"] + own
    out.update(
        ingested_rows=ingest["ingested_rows"], ingest_quarantine=ingest["quarantine_rows"],
        validate_quarantine=validated["quarantine_rows"],
    )
    if total != ingest["ingested_rows"]:
        raise InvariantError(f"ingested {ingest['ingested_rows']} rows but accounted for {total}: {out}")
    out["balanced"] = True
    return out


def format_reconciliation(r: dict[str, Any]) -> str:
    """One line a user can check by eye."""
    if "ingested_rows" not in r:
        return (f"{r['snapshot_input_rows']} input rows = {r['snapshot_rows']} in shards + "
                f"{r['image_quarantine']} image quarantine + {r['ledger']} ledger")
    return (
        f"{r['ingested_rows']} ingested = {r['ingest_quarantine']} ingest quarantine + {r['validate_quarantine']} validate "
        f"quarantine + {r['image_quarantine']} image quarantine + {r['ledger']} ledger + {r['snapshot_rows']} in shards"
    )

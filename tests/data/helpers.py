"""Shared helpers for the data-layer tests: small demo corpus, configs, and output collection."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def small_demo(out: Path, train_images: int = 60) -> Path:
    from r2d2.config import DemoDataConfig
    from r2d2.data.demo import generate_demo_corpus

    generate_demo_corpus(out, DemoDataConfig(train_images=train_images, eval_images=8))
    return out


def gx_copy(dest: Path) -> Path:
    """A copy of the committed GX context (tests must not write into the repository)."""
    shutil.copytree(REPO / "great_expectations", dest, ignore=shutil.ignore_patterns("uncommitted"))
    return dest


def configs(gx_root: Path, **validate: Any) -> dict[str, Any]:
    from r2d2.data.ingest import IngestConfig
    from r2d2.data.snapshot import snapshot_config
    from r2d2.data.validation import validate_config

    return {
        "ingest_cfg": IngestConfig(progress=False),
        "validate_cfg": validate_config({"gx_root": str(gx_root), "progress": False, "data_docs": False, **validate}),
        "snapshot_cfg": snapshot_config({"progress": False, "shard_rows": 100}),
    }


def _read(files: list[Path]) -> pd.DataFrame:
    frames = [pq.read_table(f).to_pandas() for f in files]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect(work: Path) -> pd.DataFrame:
    """Every row of a pipeline run with where it ended: (source_file, source_line, place, rule, key)."""
    out = []
    for place, files in (
        ("ingest", sorted((work / "ingested" / "quarantine").glob("*.parquet"))),
        ("validate", sorted((work / "validated" / "quarantine").glob("*.parquet"))),
        ("image", sorted((work / "snapshot" / "quarantine").glob("*.parquet"))),
    ):
        df = _read(files)
        for r in df.to_dict("records"):
            for rule in r["rules"]:
                out.append({"file": r["source_file"], "line": r["source_line"], "place": place, "rule": rule, "key": None,
                            "sample_id": r["sample_id"]})
    for r in _read(sorted((work / "snapshot" / "ledger").glob("*.parquet"))).to_dict("records"):
        out.append({"file": r["source_file"], "line": r["source_line"], "place": "ledger", "rule": r["error_kind"],
                    "key": None, "sample_id": r["sample_id"], "attempts": r["attempts"]})
    for r in _read(sorted((work / "snapshot" / "shards").glob("*.parquet"))).to_dict("records"):
        out.append({"file": r["source_file"], "line": r["source_line"], "place": "snapshot", "rule": "ok", "key": r["key"],
                    "sample_id": r["sample_id"]})
    return pd.DataFrame(out)

"""Evaluation results: one JSON file (DVC metrics, MLflow, the promotion gate read it) and a short text table.

The JSON is the contract; the table is for people reading a log. Everything is in percent.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from r2d2.eval.metrics import KS


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a crashed run never leaves a half-written metrics file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _rows_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def format_table(metrics: dict[str, Any], reference: dict[str, float] | None = None) -> str:
    """A plain-text summary of `{"retrieval": ..., "matching": ...}`.

    reference: optional published numbers keyed like `t2i.r1`, `mr`, `auc`, shown in a `paper` column.
    """
    reference = reference or {}
    lines: list[str] = []
    ret = metrics.get("retrieval")
    if ret:
        where = ret.get("dataset", {})
        lines.append(
            f"retrieval {where.get('path', '')}{':' + where['split'] if 'split' in where else ''} "
            f"({ret['num_images']} images, {ret['num_texts']} texts, score {ret['score']}, re-rank k={ret['rerank_k']})"
        )
        header = ["direction", *(f"R@{k}" for k in KS), "queries"]
        if reference:
            header.append("paper R@1/5/10")
        rows = []
        for direction in ("t2i", "i2t"):
            if direction not in ret:
                continue
            d = ret[direction]
            row = [direction, *(_fmt(d[f"r{k}"]) for k in KS), str(d["num_queries"])]
            if reference:
                row.append("/".join(_fmt(reference.get(f"{direction}.r{k}")) for k in KS))
            rows.append(row)
        lines += _rows_table(header, rows)
        paper = f"  (paper {_fmt(reference['mr'])})" if "mr" in reference else ""
        lines.append(f"MR {_fmt(ret['mr'])}{paper}")
    match = metrics.get("matching")
    if match:
        if lines:
            lines.append("")
        lines.append(f"matching {match.get('dataset', {}).get('path', '')} ({match['num_pairs']} pairs, "
                     f"{match['num_positive']} positive, score {match['score']})")
        paper = f"  (paper {_fmt(reference['auc'])})" if "auc" in reference else ""
        lines.append(f"AUC {_fmt(match['auc'])}  accuracy@0.5 {_fmt(match['accuracy'])}{paper}")
    return "\n".join(lines)

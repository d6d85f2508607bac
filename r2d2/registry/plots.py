"""Evaluation pictures logged with each run: recall@K bars per direction, and the matching ROC curve.

A recall table says whether a number moved; the bars show at a glance whether a model is
weak at R@1 only (ranking) or everywhere (representation). The ROC curve is drawn from the
per-pair scores `r2d2 evaluate` writes next to its metrics, so the curve and the AUC in the
JSON come from the same numbers. Matplotlib's Agg backend: no display, works on servers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def recall_plot(retrieval: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: R@1/5/10 for each retrieval direction, MR in the title."""
    path = Path(path)
    directions = [d for d in ("t2i", "i2t") if d in retrieval]
    ks = sorted({int(k[1:]) for d in directions for k in retrieval[d] if k.startswith("r") and k[1:].isdigit()})
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(directions), 1)
    for i, d in enumerate(directions):
        values = [retrieval[d].get(f"r{k}") or 0.0 for k in ks]
        xs = [j + i * width for j in range(len(ks))]
        bars = ax.bar(xs, values, width, label={"t2i": "text→image", "i2t": "image→text"}[d])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([j + width * (len(directions) - 1) / 2 for j in range(len(ks))], [f"R@{k}" for k in ks])
    ax.set_ylim(0, 105)
    ax.set_ylabel("recall (%)")
    mr = retrieval.get("mr")
    ax.set_title(f"retrieval recall@K (MR {mr:.2f})" if mr is not None else "retrieval recall@K")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_plot(labels: list[int], scores: list[float], path: str | Path, title: str = "matching ROC") -> Path:
    """ROC curve with its AUC in the legend (sklearn's roc_curve, as the AUC metric uses)."""
    from sklearn.metrics import auc, roc_curve

    path = Path(path)
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {auc(fpr, tpr) * 100:.2f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_pair_scores(path: str | Path) -> tuple[list[int], list[float]]:
    """Labels and scores from `matching_scores.jsonl` (`{"index", "label", "score"}` per line)."""
    labels, scores = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                labels.append(int(row["label"]))
                scores.append(float(row["score"]))
    return labels, scores


def evaluation_plots(metrics: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Every plot an evaluation JSON supports: `recall_at_k.png`, `matching_roc.png`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    ret = metrics.get("retrieval")
    if ret and any(d in ret for d in ("t2i", "i2t")):
        made.append(recall_plot(ret, out / "recall_at_k.png"))
    match = metrics.get("matching") or {}
    pred = match.get("predictions")
    if pred and Path(pred).is_file():
        labels, scores = read_pair_scores(pred)
        if len(set(labels)) == 2:  # a ROC curve needs both classes
            made.append(roc_plot(labels, scores, out / "matching_roc.png"))
    return made

"""Retrieval and matching metrics.

Recall@K is plain torch rather than sklearn: sklearn's `top_k_accuracy_score` takes one true
label per sample and the full [queries x gallery] score matrix, while our ground truth is
multi-positive (a text may have several correct images, an image several correct texts) and
ranking keeps only each query's top candidates, never the whole matrix. Given ranked gallery
indices and a padded table of positives, recall@K is one broadcast comparison on the device.
AUC uses sklearn's `roc_auc_score`, which handles ties exactly as the literature does.

Every metric is in percent (0-100), as in the papers and in Chinese-CLIP's scorer output.
Metric names avoid `@` (`r1`, not `R@1`): MLflow rejects `@` in metric keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

KS = (1, 5, 10)


def positives_table(positives: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> torch.Tensor:
    """Ragged lists of positive gallery indices -> a [Q, P] long tensor padded with -1."""
    width = max((len(p) for p in positives), default=0) or 1
    table = torch.full((len(positives), width), -1, dtype=torch.long)
    for q, pos in enumerate(positives):
        if pos:
            table[q, : len(pos)] = torch.as_tensor(list(pos), dtype=torch.long)
    return table.to(device)


def hits(ranked: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """[Q, K] bool: whether the gallery item at each rank is a positive of its query.

    ranked: [Q, K] gallery indices, best first; positives: [Q, P] indices padded with -1
    (padding never matches since ranked indices are >= 0).
    """
    return (ranked.unsqueeze(-1) == positives.to(ranked.device).unsqueeze(1)).any(-1)


def recall_at_k(ranked: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Percent of queries with at least one positive in their top K, for each K in ks.

    Queries must each have a positive; a ranking shorter than K (a gallery smaller than K)
    counts what it holds, which is then the whole gallery.
    """
    if ranked.shape[0] == 0:
        raise ValueError("no queries to score")
    h = hits(ranked, positives)
    return {f"r{k}": float(h[:, :k].any(1).double().mean()) * 100.0 for k in ks}


def first_hit_rank(ranked: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """1-based rank of each query's first positive within `ranked`, or 0 when none is there."""
    h = hits(ranked, positives)
    rank = h.float().argmax(1) + 1
    return torch.where(h.any(1), rank, torch.zeros_like(rank))


def mean_recall(per_direction: dict[str, dict[str, float]], ks: Sequence[int] = KS) -> float | None:
    """MR: the mean of R@1/5/10 over the reported directions (six recalls for I<->T); None if none."""
    values = [d[f"r{k}"] for d in per_direction.values() for k in ks]
    return float(np.mean(values)) if values else None


def matching_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float | None = 0.5) -> dict:
    """AUC (percent) of scores against 0/1 labels, and accuracy at `threshold` (None: scores are not probabilities).

    AUC is undefined with a single class; it is then reported as None (JSON has no NaN).
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be equal-length vectors")
    auc = float(roc_auc_score(y, s)) * 100.0 if len(np.unique(y)) == 2 else None
    acc = float(((s >= threshold).astype(np.int64) == y).mean()) * 100.0 if threshold is not None and len(y) else None
    return {"auc": auc, "accuracy": acc, "num_pairs": int(len(y)), "num_positive": int(y.sum())}

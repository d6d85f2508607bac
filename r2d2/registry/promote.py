"""The champion gate: move the `champion` alias to a challenger only when it wins.

Rule (DESIGN §5): primary metric = mean over datasets of the retrieval mean recall (MR, in
percent). The challenger is promoted iff its primary beats the champion's by at least
`margin` points and no other metric both models report drops by more than `tolerance` points.
Run-to-run noise on the demo is about ±10 points of R@1 (DESIGN §4), which is why a margin
exists at all; the numbers here are the whole policy, so `decide_promotion` is pure and tested
on its own.

Metric names are flat: `<dataset>.<name>` (`flickr.t2i.r1`, `flickr.mr`, `icm.auc`), stored on
each registered version as tags `metric.<dataset>.<name>` by `r2d2.registry.register`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METRIC_TAG = "metric."
PRIMARY = "mr"  # the per-dataset metric the primary is the mean of
EPS = 1e-9  # "improves by >= margin" must hold for 0.5 exactly, whatever the float rounding


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def flatten_eval_metrics(metrics: Mapping[str, Any], dataset: str) -> dict[str, float]:
    """One `r2d2 evaluate` JSON -> `{<dataset>.<name>: percent}` (None values are left out)."""
    ds = re.sub(r"[^0-9A-Za-z_-]+", "_", dataset).strip("_") or "data"
    out: dict[str, Any] = {}
    ret = metrics.get("retrieval") or {}
    for direction in ("t2i", "i2t"):
        for k, v in (ret.get(direction) or {}).items():
            if re.fullmatch(r"r\d+", k):
                out[f"{ds}.{direction}.{k}"] = v
    out[f"{ds}.mr"] = ret.get("mr")
    match = metrics.get("matching") or {}
    out[f"{ds}.auc"] = match.get("auc")
    out[f"{ds}.accuracy"] = match.get("accuracy")
    return {k: n for k, v in out.items() if (n := _num(v)) is not None}


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """`metric.*` tags of a registered version -> flat metrics."""
    return {k[len(METRIC_TAG):]: n for k, v in tags.items() if k.startswith(METRIC_TAG) and (n := _num(v)) is not None}


def primary_metric(metrics: Mapping[str, float], datasets: list[str] | None = None) -> float | None:
    """Mean of `<dataset>.mr` over `datasets` (default: every dataset with retrieval)."""
    names = datasets if datasets is not None else retrieval_datasets(metrics)
    values = [metrics[f"{d}.{PRIMARY}"] for d in names if f"{d}.{PRIMARY}" in metrics]
    return sum(values) / len(values) if values else None


def retrieval_datasets(metrics: Mapping[str, float]) -> list[str]:
    return sorted(k[: -len(PRIMARY) - 1] for k in metrics if k.endswith(f".{PRIMARY}"))


@dataclass
class Row:
    """One line of the comparison table."""

    metric: str
    champion: float | None
    challenger: float | None
    delta: float | None
    status: str  # primary | better | same | worse | REGRESSION | new | missing


@dataclass
class Decision:
    promote: bool
    reason: str
    primary_champion: float | None = None
    primary_challenger: float | None = None
    primary_delta: float | None = None
    datasets: list[str] = field(default_factory=list)  # the datasets the primary was averaged over
    regressions: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    def table(self) -> str:
        """The comparison as aligned text (what `r2d2 promote` prints)."""
        def f(v: float | None, sign: bool = False) -> str:
            return "-" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")

        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        if not self.rows:
            return f"decision: {verdict}: {self.reason}"
        header = ["metric", "champion", "challenger", "delta", "status"]
        body = [[r.metric, f(r.champion), f(r.challenger), f(r.delta, True), r.status] for r in self.rows]
        widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]]
        return "\n".join([*lines, f"decision: {verdict}: {self.reason}"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    champion_metrics: Mapping[str, float] | None,
    challenger_metrics: Mapping[str, float],
    margin: float = 0.5,
    tolerance: float = 1.0,
) -> Decision:
    """Should the challenger replace the champion? Pure: no I/O, no MLflow.

    - no champion (None) -> promote, whatever the numbers;
    - the primary is averaged over the retrieval datasets *both* report (comparing means over
      different dataset sets would reward skipping a hard dataset);
    - promote iff primary delta >= margin and every shared metric (per-dataset MR included)
      drops by at most `tolerance`; metrics only one side reports are shown, never decisive.
    """
    if margin < 0 or tolerance < 0:
        raise ValueError(f"margin ({margin}) and tolerance ({tolerance}) must be >= 0")
    challenger = {k: float(v) for k, v in challenger_metrics.items()}
    if champion_metrics is None:
        rows = [Row(k, None, v, None, "new") for k, v in sorted(challenger.items())]
        return Decision(True, "no champion yet: the challenger becomes champion",
                        primary_challenger=primary_metric(challenger), datasets=retrieval_datasets(challenger), rows=rows)
    champion = {k: float(v) for k, v in champion_metrics.items()}
    datasets = sorted(set(retrieval_datasets(champion)) & set(retrieval_datasets(challenger)))
    p_old, p_new = primary_metric(champion, datasets), primary_metric(challenger, datasets)
    delta = None if p_old is None or p_new is None else p_new - p_old

    rows = [Row(f"primary (mean MR over {len(datasets)} datasets)", p_old, p_new, delta, "primary")]
    regressions = []
    for key in sorted(set(champion) | set(challenger)):
        old, new = champion.get(key), challenger.get(key)
        if old is None or new is None:
            rows.append(Row(key, old, new, None, "new" if old is None else "missing"))
            continue
        d = new - old
        if d < -tolerance - EPS:
            status = "REGRESSION"
            regressions.append(key)
        else:
            status = "better" if d > EPS else "same" if d >= -EPS else "worse"
        rows.append(Row(key, old, new, d, status))

    base = Decision(False, "", p_old, p_new, delta, datasets, regressions, rows)
    if delta is None:
        base.reason = "no retrieval dataset (MR) in common: the primary metric cannot be compared"
    elif delta < margin - EPS:
        base.reason = f"primary changed by {delta:+.2f} points, less than the margin of {margin:.2f}"
    elif regressions:
        worst = min(regressions, key=lambda k: challenger[k] - champion[k])
        base.reason = (f"{len(regressions)} metric(s) regressed by more than {tolerance:.2f} points "
                       f"(worst {worst}: {challenger[worst] - champion[worst]:+.2f})")
    else:
        base.promote = True
        base.reason = f"primary improved by {delta:+.2f} >= {margin:.2f} points, no regression beyond {tolerance:.2f}"
    return base


# --------------------------------------------------------------------------- registry side


@dataclass
class PromotionResult:
    name: str
    challenger: str  # version
    champion_before: str | None
    champion_after: str | None
    decision: Decision
    dry_run: bool
    changed: bool
    note: str = ""


def default_lock_path(tracking_uri: str, name: str) -> Path:
    """Where promoters of `name` in this store meet.

    Embedded SQLite: `.r2d2/locks/` next to the database (git-ignored in the project), so every
    process using that database file shares it. Server: a per-URI file in the temp folder, which
    serialises promoters on this host only (see `promote`).
    """
    import hashlib
    import tempfile

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):]).resolve()  # one lock however the path is spelled
        digest = hashlib.sha256(f"{db}|{name}".encode()).hexdigest()[:12]
        return db.parent / ".r2d2" / "locks" / f"promote-{_safe(name)}-{digest}.lock"
    digest = hashlib.sha256(f"{tracking_uri.rstrip('/')}|{name}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"r2d2-promote-{_safe(name)}-{digest}.lock"


def _safe(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name)


def promote(
    name: str,
    *,
    margin: float = 0.5,
    tolerance: float = 1.0,
    dry_run: bool = False,
    version: str | int | None = None,
    tracking_uri: str | None = None,
    lock_path: str | Path | None = None,
) -> PromotionResult:
    """Compare `version` (default: the `challenger` alias) with `champion`; move the alias if it wins.

    Safe against concurrent promoters: the read-decide-move happens under an exclusive file
    lock (see `default_lock_path`), so a second promoter decides against the first one's
    result. Against a remote server the lock only covers this host; there the champion is
    re-read just before the move (the decision is redone if it changed) and after it (a lost
    race is reported and tagged). The registry itself guarantees that an alias names exactly
    one version at any time.
    """
    from r2d2.registry.locking import file_lock
    from r2d2.registry.tracking import client_for, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = client_for(uri)
    with file_lock(lock_path or default_lock_path(uri, name)):
        return _promote_locked(client, name, margin, tolerance, dry_run, version)


def _champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _promote_locked(client: Any, name: str, margin: float, tolerance: float, dry_run: bool,
                    version: str | int | None) -> PromotionResult:
    import time

    from r2d2.errors import UserError

    if version is None:
        try:
            cand = client.get_model_version_by_alias(name, "challenger")
        except Exception as err:  # noqa: BLE001 - MLflow raises several types for "unknown model"
            raise UserError(f"{name}: no version has the alias `challenger` ({err}); run `r2d2 register` first") from None
    else:
        try:
            cand = client.get_model_version(name, str(version))
        except Exception as err:  # noqa: BLE001
            raise UserError(f"{name}: no version {version} ({err})") from None
    cand_version = str(cand.version)  # int in some stores, str in others
    cand_metrics = metrics_from_tags(cand.tags)
    for _attempt in range(3):
        champ = _champion(client, name)
        before = str(champ.version) if champ is not None else None
        if before == cand_version:
            decision = Decision(False, f"version {cand_version} is already the champion",
                                primary_metric(cand_metrics), primary_metric(cand_metrics), 0.0)
            return PromotionResult(name, cand_version, before, before, decision, dry_run, False, "already champion")
        decision = decide_promotion(metrics_from_tags(champ.tags) if champ else None, cand_metrics, margin, tolerance)
        if dry_run:
            return PromotionResult(name, cand_version, before, before, decision, True, False)
        now = _champion(client, name)  # optimistic check for promoters the lock does not cover
        if (str(now.version) if now else None) == before:
            break
    else:
        raise UserError(f"{name}: the champion kept moving while deciding; try again")

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {
        "promotion.decision": "promoted" if decision.promote else "rejected",
        "promotion.reason": decision.reason,
        "promotion.decided_at": stamp,
        "promotion.compared_with": before or "none",
        "promotion.margin": str(margin),
        "promotion.tolerance": str(tolerance),
        "promotion.primary": _s(decision.primary_challenger),
        "promotion.primary_champion": _s(decision.primary_champion),
        "promotion.primary_delta": _s(decision.primary_delta),
        "promotion.regressions": ",".join(decision.regressions) or "none",
        "promotion.comparison": json.dumps([asdict(r) for r in decision.rows], separators=(",", ":")),
    }
    after = before
    note = ""
    if decision.promote:
        client.set_registered_model_alias(name, "champion", cand_version)
        tags["promoted_at"] = stamp
        tags["previous_champion"] = before or "none"
        after = str((_champion(client, name) or cand).version)
        if after != cand_version:  # only possible when another host moved it in between
            tags["promotion.decision"] = "superseded"
            note = f"another promoter moved champion to version {after} right after this one"
        elif before is not None:
            client.set_model_version_tag(name, before, "superseded_by", cand_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, cand_version, key, value)
    return PromotionResult(name, cand_version, before, after, decision, False, after != before, note)


def _s(v: float | None) -> str:
    return "none" if v is None else f"{v:.4f}"

"""The `report` stage: every dataset's evaluation in one JSON, one markdown table and plot data.

Inputs are `r2d2 evaluate` JSONs (one per downstream dataset) and training histories
(`history.jsonl` of the pre-training and fine-tuning runs). Outputs, under `--out`:

    metrics.json            DVC metrics: primary metric + per-dataset numbers (+ paper numbers where they apply)
    report.md               a markdown table across datasets with a `paper` column
    plots/loss_<run>.csv    step, loss (+ the other loss terms)       -> `dvc plots show`
    plots/recall_<ds>.csv   k, t2i, i2t (recall@K, percent)
    plots/roc_<ds>.csv      fpr, tpr (matching datasets)
    plots/summary.png       the headline metric of each dataset against the paper's

The primary metric is the promotion gate's (`r2d2.registry.promote`): the mean over retrieval
datasets of the mean recall MR. Paper numbers (DESIGN.md section 4, R2D2 ViT-L, fine-tuned
unless noted) are attached by dataset name, or by `--reference NAME=PAPER_DATASET`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from r2d2.errors import UserError

KS = (1, 5, 10)

# R2D2 ViT-L in the paper (DESIGN.md section 4). Keys as in the evaluate JSON: `t2i.r1`, `mr`, `auc`.
PAPER: dict[str, dict[str, Any]] = {
    "flickr30k-cn": {"t2i.r1": 84.4, "t2i.r5": 96.7, "t2i.r10": 98.4, "i2t.r1": 95.6, "i2t.r5": 99.8, "i2t.r10": 100.0,
                     "note": "R2D2 ViT-L, fine-tuned"},
    "coco-cn": {"t2i.r1": 79.1, "t2i.r5": 96.5, "t2i.r10": 98.9, "i2t.r1": 79.3, "i2t.r5": 97.1, "i2t.r10": 98.7,
                "note": "R2D2 ViT-L, fine-tuned"},
    "muge": {"mr": 77.5, "note": "R2D2 ViT-L, fine-tuned (zero-shot 69.5)"},
    "aic-icc": {"note": "not public (Wukong ViT-L MR 71.6)"},
    "flickr30k-cna": {"note": "not public"},
    "icr": {"note": "not public"},
    "iqr": {"note": "not public"},
    "icm": {"note": "not public"},
    "iqm": {"note": "not public"},
    "caption": {"note": "not public"},
    "text-to-image": {"note": "not public"},
    "imagenet-cn": {"note": "not public (Wukong ViT-L avg 73.03 over 10 sets)"},
}
for _ref in PAPER.values():  # MR is the mean of the six recalls where the paper gives them all
    recalls = [_ref.get(f"{d}.r{k}") for d in ("t2i", "i2t") for k in KS]
    if "mr" not in _ref and all(v is not None for v in recalls):
        _ref["mr"] = round(sum(recalls) / len(recalls), 2)


def parse_named(specs: list[str] | None, what: str) -> dict[str, str]:
    """`NAME=VALUE` options -> ordered dict; a repeated name is an error."""
    out: dict[str, str] = {}
    for spec in specs or []:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise UserError(f"--{what} {spec!r}: expected NAME=PATH")
        if name in out:
            raise UserError(f"--{what}: {name} given twice")
        out[name] = value
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read JSON ({err})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read JSON lines ({err})") from None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)) else None


def dataset_metrics(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of one evaluate JSON, nested as DVC shows them (percent)."""
    out: dict[str, Any] = {}
    ret = doc.get("retrieval") or {}
    if ret:
        out["task"] = "retrieval"
        for direction in ("t2i", "i2t"):
            if direction in ret:
                out[direction] = {f"r{k}": _num(ret[direction].get(f"r{k}")) for k in KS}
        out["mr"] = _num(ret.get("mr"))
    match = doc.get("matching") or {}
    if match:
        out["task"] = "matching" if not ret else "retrieval+matching"
        out["auc"] = _num(match.get("auc"))
        if _num(match.get("accuracy")) is not None:
            out["accuracy"] = _num(match.get("accuracy"))
    return out


def _get(metrics: Mapping[str, Any], key: str) -> float | None:
    cur: Any = metrics
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return _num(cur)


def build_report(evals: Mapping[str, str | Path], histories: Mapping[str, str | Path] | None = None,
                 references: Mapping[str, str] | None = None,
                 baselines: Mapping[str, str | Path] | None = None) -> dict[str, Any]:
    """All numbers of the report (no files written): see `write_report`."""
    from r2d2.registry.promote import flatten_eval_metrics, primary_metric

    if not evals:
        raise UserError("nothing to report: give at least one --eval NAME=metrics.json")
    references = dict(references or {})
    datasets: dict[str, Any] = {}
    flat: dict[str, float] = {}
    raw: dict[str, dict[str, Any]] = {}
    for name, path in evals.items():
        doc = _read_json(Path(path))
        raw[name] = doc
        entry = dataset_metrics(doc)
        if not entry:
            raise UserError(f"{path}: no retrieval or matching metrics in it (is it `r2d2 evaluate` output?)")
        ref_key = references.get(name, name.lower())
        ref = PAPER.get(ref_key)
        if ref is not None:
            numbers = {k: v for k, v in ref.items() if k != "note"}
            paper: dict[str, Any] = {}
            for key, value in numbers.items():
                head, _, tail = key.partition(".")
                if tail:
                    paper.setdefault(head, {})[tail] = value
                else:
                    paper[head] = value
            entry["paper"] = paper
            entry["paper_note"] = f"{ref_key}: {ref['note']}"
        if baselines and name in baselines:  # the untrained model, evaluated the same way
            entry["untrained"] = dataset_metrics(_read_json(Path(baselines[name])))
        datasets[name] = entry
        flat.update(flatten_eval_metrics(doc, name))
    primary = primary_metric(flat)
    retrieval = sorted(n for n in datasets if "mr" in datasets[n])
    losses = {}
    for run, path in (histories or {}).items():
        rows = _read_jsonl(Path(path))
        losses[run] = [{"step": r["step"], **{k: v for k, v in r.items() if k.startswith("loss") or k == "lr"}}
                       for r in rows if "step" in r]
    return {
        "primary": {"name": "mean retrieval MR (promotion gate)", "value": primary, "datasets": retrieval},
        "datasets": datasets,
        "_raw": raw,
        "_losses": losses,
    }


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown table (one row per dataset and metric)."""
    lines = ["# Evaluation report", ""]
    primary = report["primary"]
    if primary["value"] is not None:
        lines.append(f"**Primary metric** ({primary['name']}, over {', '.join(primary['datasets'])}): "
                     f"**{primary['value']:.2f}**")
    else:
        lines.append("**Primary metric**: — (no retrieval dataset)")
    lines += ["", "| dataset | task | metric | ours | untrained | paper (R2D2 ViT-L) |", "|---|---|---|---:|---:|---:|"]
    notes = []
    for name, entry in report["datasets"].items():
        rows: list[tuple[str, str]] = []
        for direction, title in (("t2i", "T→I"), ("i2t", "I→T")):
            if direction in entry:
                rows += [(f"{title} R@{k}", f"{direction}.r{k}") for k in KS]
        if "mr" in entry:
            rows.append(("MR", "mr"))
        if "auc" in entry:
            rows.append(("AUC", "auc"))
        if "accuracy" in entry:
            rows.append(("accuracy@0.5", "accuracy"))
        paper = entry.get("paper") or {}
        for i, (title, key) in enumerate(rows):
            first = i == 0
            untrained = _fmt(_get(entry["untrained"], key)) if "untrained" in entry else "—"
            lines.append(f"| {name if first else ''} | {entry['task'] if first else ''} | {title} | "
                         f"{_fmt(_get(entry, key))} | {untrained} | "
                         f"{_fmt(_get(paper, key)) if paper or 'paper_note' in entry else '—'} |")
        if "paper_note" in entry:
            notes.append(f"- {name}: {entry['paper_note']}")
    if notes:
        lines += ["", "Paper column:", *notes]
    lines += ["", "Datasets without a paper counterpart show —. For reference, R2D2 ViT-L in the paper "
              "(fine-tuned; DESIGN.md section 4):", "", "| paper dataset | T→I R@1/5/10 | I→T R@1/5/10 | MR | note |",
              "|---|---|---|---:|---|"]
    for key, ref in PAPER.items():
        t2i = "/".join(_fmt(ref.get(f"t2i.r{k}")) for k in KS) if "t2i.r1" in ref else "—"
        i2t = "/".join(_fmt(ref.get(f"i2t.r{k}")) for k in KS) if "i2t.r1" in ref else "—"
        lines.append(f"| {key} | {t2i} | {i2t} | {_fmt(ref.get('mr'))} | {ref['note']} |")
    lines.append("")
    return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _roc(doc: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    pred = (doc.get("matching") or {}).get("predictions")
    if not pred or not Path(pred).is_file():
        return None
    rows = _read_jsonl(Path(pred))
    labels = [int(r["label"]) for r in rows]
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, [float(r["score"]) for r in rows])
    return [float(x) for x in fpr], [float(y) for y in tpr]


def _summary_png(report: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, ours, paper = [], [], []
    for name, entry in report["datasets"].items():
        key = "mr" if "mr" in entry else "auc"
        names.append(f"{name}\n({'MR' if key == 'mr' else 'AUC'})")
        ours.append(_get(entry, key) or 0.0)
        paper.append(_get(entry.get("paper") or {}, key))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.2), dpi=100)
    xs = list(range(len(names)))
    ax.bar(xs, ours, color="#3b6ea5", label="ours")
    for x, p in zip(xs, paper, strict=True):
        if p is not None:
            ax.plot([x - 0.4, x + 0.4], [p, p], color="#c0392b", lw=2, label="paper (R2D2 ViT-L)")
    for x, v in zip(xs, ours, strict=True):
        ax.text(x, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("percent")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
    ax.set_title("headline metric per dataset", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers only (what `dvc metrics show` lists): primary + per dataset, paper numbers included."""
    def numbers(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: numbers(v) if isinstance(v, Mapping) else v for k, v in d.items()
                if isinstance(v, Mapping) or _num(v) is not None or v is None}

    return {"primary": {"mean_retrieval_mr": report["primary"]["value"]},
            "datasets": {name: numbers(entry) for name, entry in report["datasets"].items()}}


def write_report(out_dir: str | Path, evals: Mapping[str, str | Path], histories: Mapping[str, str | Path] | None = None,
                 references: Mapping[str, str] | None = None,
                 baselines: Mapping[str, str | Path] | None = None) -> dict[str, Any]:
    """Write metrics.json, report.md and plots/ under out_dir; return the report."""
    from r2d2.eval.report import write_metrics

    out = Path(out_dir)
    report = build_report(evals, histories, references, baselines)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for old in plots.iterdir():  # stale plots of a dataset that was removed
        if old.is_file():
            old.unlink()
    write_metrics(out / "metrics.json", metrics_json(report))
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    for run, rows in report["_losses"].items():
        keys = ["step", *sorted({k for r in rows for k in r if k != "step"})]
        _write_csv(plots / f"loss_{run}.csv", keys, [[r.get(k, "") for k in keys] for r in rows])
    for name, entry in report["datasets"].items():
        if "t2i" in entry or "i2t" in entry:
            dirs = [d for d in ("t2i", "i2t") if d in entry]
            _write_csv(plots / f"recall_{name}.csv", ["k", *dirs], [[k, *(entry[d][f"r{k}"] for d in dirs)] for k in KS])
        roc = _roc(report["_raw"][name])
        if roc is not None:
            _write_csv(plots / f"roc_{name}.csv", ["fpr", "tpr"], [list(p) for p in zip(*roc, strict=True)])
    _summary_png(report, plots / "summary.png")
    return report

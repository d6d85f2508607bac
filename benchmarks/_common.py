"""Shared helpers of the benchmarks: machine description, medians, results files, BENCHMARKS.md.

Standard library only: `bench_shards.py` imports this from img2dataset's own venv too.
Each benchmark writes `benchmarks/results/<name>.json`; `render_benchmarks_md` rebuilds the
results table of BENCHMARKS.md (between the BEGIN/END markers) from every results file, so the
table always shows the latest run of each benchmark and nothing else in the file is touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- BEGIN RESULTS (written by benchmarks/_common.py) -->", "<!-- END RESULTS -->"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def machine_line(m: dict[str, Any]) -> str:
    return f"{m['cores']} cores {m['cpu']}, Python {m['python']}"


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: list[float], digits: int = 0) -> str:
    """`min–max` of a list of measurements, for the notes."""
    return f"{min(xs):.{digits}f}–{max(xs):.{digits}f}" if xs else "-"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def render_benchmarks_md() -> None:
    """Rewrite the results table of BENCHMARKS.md from benchmarks/results/*.json."""
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        rows += data.get("table", [])
    header = ["benchmark", "baseline", "ours", "ratio (ours vs baseline)", "target", "machine (load avg at start)", "date", "reproduce"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(r[k]) for k in ("benchmark", "baseline", "ours", "ratio", "target", "machine", "date", "command")) + " |")
    table = "\n".join(lines)
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    BENCHMARKS_MD.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")

"""Manifest validation, rows/s: Great Expectations against the same rules in plain pandas, in one run.

    .venv/bin/python benchmarks/bench_validation.py        # ~3-4 min on 2 cores

A synthetic manifest (MANIFEST_SCHEMA, --rows rows, realistic mix of good Chinese captions and
every kind of text-rule failure) is validated R times by each method below, interleaved (the
order alternates every repeat), after one untimed warm-up of each; medians are reported.

Rule evaluation, in memory (the manifest already read into 100k-row DataFrames, as `r2d2 validate`
reads it; `validate.batch_rows`):
  pandas          the text rules as vectorised pandas checks: `text_rule_flags` (one boolean column
                  per rule) + per-rule counts. This is the baseline.
  gx_aggregates   pandas + GX on the per-rule rejected shares (checkpoint `manifest_rules`, one
                  row per batch): what `gx_mode: aggregates` (the default) adds.
  gx_rows         the same rules as GX column expectations on every row (checkpoint
                  `manifest_rows`, on the text features; what `gx_mode: rows` runs), alone.
  pandas+gx_rows  both: the rows mode of `r2d2 validate` decides per row in pandas, then runs GX rows.
End to end (`r2d2.data.validation.validate_manifest`: read Parquet, rules, write the passing
manifest and the quarantine, merge) with gx_mode off / aggregates / rows.

Not timed (reported once): importing great_expectations and building Data Docs, both constant
per run of `r2d2 validate`, not per row. GX runs on a copy of the committed great_expectations/
folder in a temporary directory, with Data Docs off inside the timed runs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

WORDS = ["一只", "小猫", "在", "草地上", "玩耍", "城市", "夜景", "灯火辉煌", "美丽的", "风景", "山水画", "红色的", "汽车", "停在",
         "路边", "海边", "日落", "孩子们", "公园里", "跑步", "古老的", "建筑", "蓝天", "白云", "下", "的", "盛开", "花朵", "，", "。"]


def synthetic_manifest(n: int, seed: int) -> Any:
    """n manifest rows; ~88% pass, the rest break each text rule (some several)."""
    import pandas as pd

    rnd = random.Random(seed)
    ids, sources, refs, texts = [], [], [], []
    for i in range(n):
        r = rnd.random()
        sid = f"bench:{i}"
        if r < 0.02 and i:  # duplicate id (an earlier row's)
            sid = f"bench:{rnd.randrange(i)}"
        ids.append(sid)
        u = rnd.random()
        if u < 0.05:
            sources.append("path")
            refs.append(f"/corpus/images/{i:08d}.jpg")
        else:
            sources.append("url")
            scheme = "ftp" if u < 0.06 else "https"
            refs.append(f"{scheme}://img{i % 97}.example.cn/{i:08d}.jpg")
        t = rnd.random()
        if t < 0.02:
            text = rnd.choice(["", "   ", "\t"])
        elif t < 0.05:
            text = rnd.choice(["a photo of a cat on the grass", "Sunset over the sea, 2019", "red car parked"])
        elif t < 0.07:
            text = rnd.choice(["图片", "点击查看大图", "IMG_2041", "DSC01234.JPG", "untitled", "图片12"])
        elif t < 0.08:
            text = "风景" * rnd.randint(260, 400)
        elif t < 0.09:
            text = rnd.choice(WORDS[:4])[:1]
        else:
            text = "".join(rnd.choices(WORDS, k=rnd.randint(2, 14)))
            if rnd.random() < 0.1:
                text += " " + rnd.choice(["HD", "2020", "photo by Li", "#travel"])
        texts.append(text)
    return pd.DataFrame({
        "sample_id": ids, "image_key": [f"k{i}" for i in range(n)], "image_source": sources, "image_ref": refs, "text": texts,
        "text_kind": "caption", "source": "manifest", "source_file": "bench.parquet", "source_line": range(1, n + 1),
        "license": "bench",
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end validate_manifest runs")
    ap.add_argument("--no-save", action="store_true", help="do not write results/ nor BENCHMARKS.md (smoke runs)")
    args = ap.parse_args()

    started = time.time()
    load_start = common.loadavg()
    t_import = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import great_expectations; "
                               "print(time.perf_counter()-t)"], capture_output=True, text=True, check=True,
                              env={**os.environ, "GX_ANALYTICS_ENABLED": "false"}).stdout.strip().splitlines()[-1]
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from r2d2.data.manifest import MANIFEST_SCHEMA
    from r2d2.data.validation import (
        TEXT_RULES,
        ValidateConfig,
        duplicate_masks,
        manifest_row_expectations,
        manifest_rule_expectations,
        run_checkpoint,
        text_features,
        text_rule_flags,
        validate_manifest,
    )

    work = Path(tempfile.mkdtemp(prefix="r2d2-bench-validation-"))
    gx_root = work / "gx"
    shutil.copytree(common.ROOT / "great_expectations", gx_root, ignore=shutil.ignore_patterns("uncommitted"))
    try:
        t = time.perf_counter()
        df_all = synthetic_manifest(args.rows, args.seed)
        in_dir = work / "ingested"
        (in_dir / "manifest").mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(df_all, schema=MANIFEST_SCHEMA, preserve_index=False), in_dir / "manifest" / "part-00000.parquet")
        print(f"[setup] {args.rows} rows generated in {time.perf_counter() - t:.1f} s; GX import {float(t_import):.1f} s; "
              f"load avg {load_start}", flush=True)
        cfg = ValidateConfig(gx_root=str(gx_root), data_docs=False, progress=False)
        batches = [b.to_pandas() for b in pq.ParquetFile(in_dir / "manifest" / "part-00000.parquet").iter_batches(cfg.batch_rows)]
        dup = np.concatenate(duplicate_masks([in_dir / "manifest" / "part-00000.parquet"]))

        def pandas_rules() -> tuple[dict[str, int], int]:
            """Per-rule counts and the rows breaking any rule, as validate_unit computes them."""
            counts, offset, rejected = dict.fromkeys(TEXT_RULES, 0), 0, 0
            for df in batches:
                matrix = text_rule_flags(df, cfg, dup[offset : offset + len(df)]).to_numpy()
                offset += len(df)
                rejected += int(matrix.any(axis=1).sum())
                for rule, n in zip(TEXT_RULES, matrix.sum(axis=0), strict=True):
                    counts[rule] += int(n)
            return counts, rejected

        def gx_on_aggregates(counts: dict[str, int], rejected: int) -> bool:
            frame = pd.DataFrame([{"rows": args.rows, "rejected_share": rejected / args.rows,
                                   **{f"share_{r}": n / args.rows for r, n in counts.items()}}])
            return run_checkpoint(cfg.gx_root, "manifest_rules", manifest_rule_expectations(cfg), [frame], False)["success"]

        def gx_aggregates() -> bool:
            return gx_on_aggregates(*pandas_rules())

        aggregates = pandas_rules()

        def gx_aggregates_only() -> bool:
            return gx_on_aggregates(*aggregates)

        def gx_rows() -> bool:
            frames = (df.join(text_features(df)) for df in batches)
            return run_checkpoint(cfg.gx_root, "manifest_rows", manifest_row_expectations(cfg), frames, False)["success"]

        def pandas_and_gx_rows() -> bool:
            pandas_rules()
            return gx_rows()

        methods = {"pandas": pandas_rules, "gx_aggregates": gx_aggregates, "gx_aggregates_only": gx_aggregates_only, "gx_rows": gx_rows,
                   "pandas+gx_rows": pandas_and_gx_rows}

        def e2e(mode: str) -> Any:
            def run() -> dict[str, Any]:
                out = work / f"validated-{mode}"
                return validate_manifest(in_dir, out, cfg.model_copy(update={"gx_mode": mode}))
            return run

        if not args.no_e2e:
            methods.update({f"e2e_{m}": e2e(m) for m in ("off", "aggregates", "rows")})
        for fn in methods.values():  # warm-up: first GX context load, regex compilation, page cache
            fn()
        times: dict[str, list[float]] = {k: [] for k in methods}
        loads = []
        for rep in range(args.repeats):
            order = list(methods) if rep % 2 == 0 else list(methods)[::-1]
            for name in order:
                loads.append(common.loadavg()[0] if common.loadavg() else None)
                t = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - t)
                print(f"[run] rep {rep} {name:18s} {times[name][-1]:6.2f} s = {args.rows / times[name][-1]:9.0f} rows/s  load {loads[-1]}", flush=True)

        # Constant costs, once: Data Docs for the aggregates checkpoint.
        t = time.perf_counter()
        run_checkpoint(cfg.gx_root, "manifest_rules", manifest_rule_expectations(cfg),
                       [pd.DataFrame([{"rows": 1, "rejected_share": 0.0, **{f"share_{r}": 0.0 for r in TEXT_RULES}}])], True)
        t_docs = time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: common.median(v) for k, v in times.items()}
    rps = {k: args.rows / v for k, v in med.items()}
    ratio = {k: med[k] / med["pandas"] for k in ("gx_aggregates", "gx_rows", "pandas+gx_rows")}
    # GX's part of the aggregates mode is a fraction of a second: the difference of two noisy medians
    # can even come out negative on a busy machine, so the table uses pandas + (GX on the aggregates alone).
    ratio["gx_aggregates_composed"] = (med["pandas"] + med["gx_aggregates_only"]) / med["pandas"]
    if not args.no_e2e:
        ratio.update({k: med[k] / med["e2e_off"] for k in ("e2e_aggregates", "e2e_rows")})
    load_end = common.loadavg()
    print(f"\nmethod              median s     rows/s   time vs baseline ({args.rows} rows, median of {args.repeats})")
    for k in methods:
        base = "e2e_off" if k.startswith("e2e") else "pandas"
        print(f"{k:18s} {med[k]:8.2f} {rps[k]:10.0f}   {med[k] / med[base]:.2f}x of {base}")
    print(f"pandas + GX on aggregates alone: {ratio['gx_aggregates_composed']:.2f}x of pandas")
    print(f"constant per run: GX import {float(t_import):.1f} s, Data Docs build {t_docs:.1f} s")
    print(f"load avg: start {load_start}, end {load_end}; {time.time() - started:.0f} s in all")
    if args.no_save:
        return
    m = common.machine()
    cmd = f"`.venv/bin/python benchmarks/bench_validation.py --rows {args.rows}`"
    mline = f"{common.machine_line(m)} (load {load_start[0] if load_start else '?'})"
    date = common.now()[:10]
    def verdict(r: float) -> str:
        return "met" if r <= 2 else "not met"

    imp = float(t_import)
    table = [
        {"benchmark": f"validation, {args.rows} rows in memory: GX on the per-rule aggregates (`gx_mode: aggregates`, the default)"
                      f" (median of {args.repeats})",
         "baseline": f"same rules in plain pandas: {rps['pandas']:,.0f} rows/s",
         "ours": f"pandas + GX aggregates: {args.rows / (med['pandas'] + med['gx_aggregates_only']):,.0f} rows/s "
                 f"(GX part {med['gx_aggregates_only']:.2f} s a run, whatever the rows)",
         "ratio": f"**{ratio['gx_aggregates_composed']:.2f}×** the time (measured together: {ratio['gx_aggregates']:.2f}×)",
         "target": f"≤ 2× ({verdict(ratio['gx_aggregates_composed'])})",
         "machine": mline, "date": date, "command": cmd},
        {"benchmark": f"validation, {args.rows} rows in memory: GX row-level expectations (`gx_mode: rows`) (median of {args.repeats})",
         "baseline": f"same rules in plain pandas: {rps['pandas']:,.0f} rows/s",
         "ours": f"GX rows alone: {rps['gx_rows']:,.0f} rows/s; pandas + GX rows (what rows mode runs): {rps['pandas+gx_rows']:,.0f} rows/s",
         "ratio": f"**{ratio['gx_rows']:.2f}×** alone; {ratio['pandas+gx_rows']:.2f}× with pandas",
         "target": f"≤ 2× ({verdict(ratio['gx_rows'])} alone, {verdict(ratio['pandas+gx_rows'])} with pandas)",
         "machine": mline, "date": date, "command": cmd},
    ]
    if not args.no_e2e:
        table.append(
            {"benchmark": f"validation end to end (`validate_manifest`: Parquet in, manifest + quarantine out), {args.rows} rows"
                          f" (median of {args.repeats}); per run add GX import {imp:.1f} s + Data Docs {t_docs:.1f} s",
             "baseline": f"`gx_mode: off`: {rps['e2e_off']:,.0f} rows/s",
             "ours": f"aggregates: {rps['e2e_aggregates']:,.0f} rows/s; rows: {rps['e2e_rows']:,.0f} rows/s",
             "ratio": f"**{ratio['e2e_aggregates']:.2f}×** (aggregates), {ratio['e2e_rows']:.2f}× (rows)",
             "target": f"≤ 2× ({verdict(ratio['e2e_aggregates'])}, {verdict(ratio['e2e_rows'])})",
             "machine": mline, "date": date, "command": cmd})
    path = common.write_results("validation", {
        "benchmark": "validation", "date": common.now(), "machine": m, "load_start": load_start, "load_end": load_end,
        "args": vars(args), "seconds": times, "median_s": med, "rows_per_s": rps, "time_ratio": ratio,
        "constant_s": {"gx_import": float(t_import), "data_docs_build": t_docs}, "table": table,
    })
    common.render_benchmarks_md()
    print(f"wrote {path.relative_to(common.ROOT)} and BENCHMARKS.md")


if __name__ == "__main__":
    main()

"""`r2d2 validate`: text rules on the manifest, image rules for the snapshot, Great Expectations.

Row-level decisions are vectorised pandas checks (one boolean column per rule), because they
must name the failed rule(s) of every row for the quarantine and GX row-level validation costs
several times plain pandas (see docs/data.md). Great Expectations (GX Core 1.x, file context in
`great_expectations/`) then validates the batch: by default the per-rule rejected shares
(`gx_mode: aggregates`, one tiny frame, constant cost), or the full rows with equivalent column
expectations (`gx_mode: rows`, slower, richer Data Docs). Batch-level failures stop the run.

Layout of a validate output folder:
    manifest/part-00000.parquet      rows that passed (MANIFEST_SCHEMA; input part 0)
    quarantine/validate-00000.parquet rows that failed, with their rules (QUARANTINE_SCHEMA)
    validate.json                    counts per rule, GX result, Data Docs link, upstream counts
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from r2d2.data.ingest import clear_outputs, format_config_error, load_ingest_summary
from r2d2.data.manifest import (
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    ParquetBatchWriter,
    iter_batches,
    manifest_parts,
    parquet_files,
    write_json,
)
from r2d2.errors import UserError

DEFAULT_BOILERPLATE = [
    "图片", "图像", "照片", "暂无图片", "图片暂无", "无标题", "未命名", "点击查看大图", "点击查看原图", "查看原图",
    "查看大图", "高清图片", "网络图片", "图片来源网络", "图片来自网络", "此图片来自网络", "配图", "示意图", "广告",
    "image", "img", "photo", "picture", "untitled", "null", "none", "undefined", "nan", "n/a",
]
DEFAULT_BOILERPLATE_PATTERNS = [r"^(?:img|dsc|image|photo)[_\- ]?\d+", r"\.(?:jpe?g|png|gif|webp|bmp)$", r"^图片\d+$"]
TEXT_RULES = ("unique_sample_id", "text_not_empty", "text_length", "chinese_ratio", "boilerplate", "url_scheme")
IMAGE_RULES = ("decodable", "max_pixels", "min_side", "aspect_ratio")
_CJK = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
# Not letters: whitespace, digits, ASCII and CJK/full-width punctuation. They don't count either way.
_NEUTRAL = r"[\s\d!-/:-@\[-`{-~\u2000-\u206f\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\u00b7]"


class ImageRulesConfig(BaseModel):
    """`validate.images:` rules for decoded images (applied by the snapshot while it decodes)."""

    model_config = ConfigDict(extra="forbid")

    min_side: int = Field(16, ge=1)  # both sides >= this (Wukong uses 200 on real web images)
    min_aspect: float = Field(1 / 3, gt=0)  # width / height, Wukong's [1/3, 3]
    max_aspect: float = Field(3.0, gt=0)
    max_pixels: int = Field(40_000_000, gt=0)  # decompression-bomb guard, checked before decoding
    max_rejected_share: float = Field(0.5, ge=0, le=1)


class ValidateConfig(BaseModel):
    """`validate:` in params.yaml."""

    model_config = ConfigDict(extra="forbid")

    min_chars: int = Field(2, ge=1)
    max_chars: int = Field(512, ge=1)
    min_cjk_ratio: float = Field(0.3, ge=0, le=1)  # share of CJK among letters (digits, punctuation ignored)
    boilerplate: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE))
    boilerplate_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_BOILERPLATE_PATTERNS))
    url_schemes: list[str] = Field(default_factory=lambda: ["http", "https"])
    max_rejected_share: float = Field(0.5, ge=0, le=1)  # (ingest + validate quarantine) / ingested rows
    batch_rows: int = Field(100_000, gt=0)
    gx_root: str = "great_expectations"
    gx_mode: Literal["aggregates", "rows", "off"] = "aggregates"
    data_docs: bool = True
    progress: bool = True
    images: ImageRulesConfig = ImageRulesConfig()


def validate_config(raw: dict[str, Any] | None) -> ValidateConfig:
    """Parse the `validate:` section kept verbatim in `Params.extra`."""
    try:
        return ValidateConfig.model_validate(raw or {})
    except ValidationError as err:
        raise UserError(format_config_error(err, "validate")) from None


# --- row-level rules (vectorised) --------------------------------------------------------------


def text_features(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns the rules (and the GX row suite) look at."""
    stripped = df["text"].fillna("").str.strip()
    n = stripped.str.len()
    letters = n - stripped.str.count(_NEUTRAL)
    return pd.DataFrame(
        {
            "text_stripped": stripped,
            "text_len": n,
            "cjk_ratio": (stripped.str.count(_CJK) / letters.clip(lower=1)).where(letters > 0, 0.0),
            "text_norm": stripped.str.casefold(),
            "url_ref": df["image_ref"].where(df["image_source"] == "url"),
        },
        index=df.index,
    )


def text_rule_flags(df: pd.DataFrame, cfg: ValidateConfig, duplicate: np.ndarray | None = None) -> pd.DataFrame:
    """One boolean column per rule in TEXT_RULES: True = the row breaks the rule."""
    f = text_features(df)
    empty = f["text_len"] == 0
    schemes = "|".join(cfg.url_schemes)
    boiler = f["text_norm"].isin({b.casefold() for b in cfg.boilerplate})
    if cfg.boilerplate_patterns:
        pattern = "|".join(f"(?:{p})" for p in cfg.boilerplate_patterns)
        with warnings.catch_warnings():  # user patterns may have capturing groups; only the match matters
            warnings.simplefilter("ignore", UserWarning)
            boiler |= f["text_norm"].str.contains(pattern, regex=True, case=False)
    url = df["image_source"] == "url"
    return pd.DataFrame(
        {
            "unique_sample_id": duplicate if duplicate is not None else df["sample_id"].duplicated().to_numpy(),
            "text_not_empty": empty,
            "text_length": ~empty & ((f["text_len"] < cfg.min_chars) | (f["text_len"] > cfg.max_chars)),
            "chinese_ratio": ~empty & (f["cjk_ratio"] < cfg.min_cjk_ratio),
            "boilerplate": ~empty & boiler,
            "url_scheme": url & ~df["image_ref"].fillna("").str.match(rf"^(?:{schemes})://[^/\s]+", case=False),
        },
        index=df.index,
    )


REASONS = {
    "unique_sample_id": "duplicate sample_id (an earlier row has it)",
    "text_not_empty": "empty or whitespace-only text",
    "text_length": "text length outside [{min_chars}, {max_chars}] characters",
    "chinese_ratio": "too few Chinese characters (< {min_cjk_ratio:.0%} of letters)",
    "boilerplate": "boilerplate text",
    "url_scheme": "image URL scheme is not one of {url_schemes}",
}


def image_rule_failures(width: int, height: int, cfg: ImageRulesConfig) -> list[str]:
    """Rules a decoded image of this size breaks (`decodable`/`max_pixels` are decided by the decoder)."""
    failed = []
    if min(width, height) < cfg.min_side:
        failed.append("min_side")
    aspect = width / max(height, 1)
    if not cfg.min_aspect <= aspect <= cfg.max_aspect:
        failed.append("aspect_ratio")
    return failed


def duplicate_masks(parts: list[Path]) -> list[np.ndarray]:
    """Global duplicate flags per part (first occurrence kept), reading only the sample_id column.

    Uses 64-bit hashes (8 bytes per row: 0.8 GB for 100M rows); a hash collision can only
    quarantine a row as a duplicate, never lose it.
    """
    hashes = []
    for p in parts:
        ids = pq.read_table(p, columns=["sample_id"]).column(0).to_pandas()
        hashes.append(pd.util.hash_pandas_object(ids.fillna(""), index=False).to_numpy())
    if not hashes:
        return []
    dup = pd.Series(np.concatenate(hashes)).duplicated(keep="first").to_numpy()
    return np.split(dup, np.cumsum([len(h) for h in hashes])[:-1])


def validate_unit(index: int, part: str | Path, duplicate: np.ndarray, out_dir: str | Path, cfg: ValidateConfig) -> dict[str, Any]:
    """Split one manifest part into passing rows and quarantined rows; return per-rule counts."""
    part, out_dir = Path(part), Path(out_dir)
    counts = dict.fromkeys(TEXT_RULES, 0)
    reasons = {r: REASONS[r].format(**cfg.model_dump()) for r in TEXT_RULES}
    names = np.array(TEXT_RULES)
    offset = rows = 0
    ok_path, q_path = out_dir / "manifest" / f"part-{index:05d}.parquet", out_dir / "quarantine" / f"validate-{index:05d}.parquet"
    with ParquetBatchWriter(ok_path, MANIFEST_SCHEMA) as ok, ParquetBatchWriter(q_path, QUARANTINE_SCHEMA) as quarantine:
        for batch in iter_batches(part, cfg.batch_rows):
            df = batch.to_pandas()
            flags = text_rule_flags(df, cfg, duplicate[offset : offset + len(df)])
            offset += len(df)
            rows += len(df)
            matrix = flags.to_numpy()
            bad = matrix.any(axis=1)
            for rule, n in zip(TEXT_RULES, matrix.sum(axis=0), strict=True):
                counts[rule] += int(n)
            ok.write_table(pa.Table.from_pandas(df[~bad], schema=MANIFEST_SCHEMA, preserve_index=False))
            for row, hit in zip(df[bad].to_dict("records"), matrix[bad], strict=True):
                rules = list(names[hit])
                quarantine.add(
                    {
                        "stage": "validate", "rules": rules, "reason": "; ".join(reasons[r] for r in rules),
                        "sample_id": row["sample_id"], "image_ref": row["image_ref"], "text": row["text"],
                        "source": row["source"], "source_file": row["source_file"], "source_line": row["source_line"], "raw": None,
                    }
                )
    return {"unit": index, "part": part.name, "rows": rows, "passed": ok.rows, "quarantine_rows": quarantine.rows, "rules": counts}


def merge_validate(in_dir: str | Path, out_dir: str | Path, units: list[dict[str, Any]], cfg: ValidateConfig) -> dict[str, Any]:
    """Sum unit counts, run the GX suite, write validate.json; stop on a batch-level failure."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    units = sorted(units, key=lambda u: u["unit"])
    rules = {r: sum(u["rules"][r] for u in units) for r in TEXT_RULES}
    rows = sum(u["rows"] for u in units)
    quarantined = sum(u["quarantine_rows"] for u in units)
    ingest = load_ingest_summary(in_dir) or {"rows": rows, "quarantine_rows": 0, "ingested_rows": rows}
    if ingest["rows"] != rows:
        raise UserError(f"{in_dir}: ingest.json counts {ingest['rows']} rows but the manifest has {rows}: re-run `r2d2 ingest`")
    ingested = ingest["ingested_rows"]
    share = (ingest["quarantine_rows"] + quarantined) / max(ingested, 1)
    gx_result = None
    if cfg.gx_mode == "aggregates":
        frame = pd.DataFrame([{"rows": rows, "rejected_share": share, **{f"share_{r}": n / max(rows, 1) for r, n in rules.items()}}])
        gx_result = run_checkpoint(cfg.gx_root, "manifest_rules", manifest_rule_expectations(cfg), [frame], cfg.data_docs)
    elif cfg.gx_mode == "rows":
        frames = (df.join(text_features(df)) for p in parquet_files(in_dir / "manifest") for b in iter_batches(p, cfg.batch_rows) if len(df := b.to_pandas()))
        gx_result = run_checkpoint(cfg.gx_root, "manifest_rows", manifest_row_expectations(cfg), frames, cfg.data_docs)
    failed = share > cfg.max_rejected_share or rows == 0 or (gx_result is not None and not gx_result["success"])
    summary = {
        "stage": "validate", "status": "failed" if failed else "passed", "rows": rows, "passed": rows - quarantined,
        "quarantine_rows": quarantined, "rules": rules, "rejected_share": round(share, 6), "units": units,
        "ingest": {k: ingest[k] for k in ("rows", "quarantine_rows", "ingested_rows")}, "gx": gx_result,
        "config": cfg.model_dump(),
    }
    write_json(out_dir / "validate.json", summary)
    if failed:
        top = ", ".join(f"{r}: {n}" for r, n in sorted(rules.items(), key=lambda kv: -kv[1]) if n) or "none"
        why = (
            "the manifest is empty" if rows == 0 else f"{share:.1%} of the ingested rows were rejected (max {cfg.max_rejected_share:.0%})"
        )
        if gx_result is not None and not gx_result["success"] and share <= cfg.max_rejected_share and rows:
            why = f"Great Expectations failed: {', '.join(gx_result['failed'])}"
        raise UserError(
            f"validation stopped: {why}. Rejected rows by rule: {top}. Quarantine: {out_dir / 'quarantine'}"
            + (f"; Data Docs: {gx_result['data_docs']}" if gx_result and gx_result.get("data_docs") else "")
            + ". Fix the corpus or the thresholds under `validate:` in params.yaml."
        )
    return summary


def validate_manifest(in_dir: str | Path, out_dir: str | Path, cfg: ValidateConfig | None = None) -> dict[str, Any]:
    """Validate every part of an ingest output folder (one unit per part) and merge."""
    cfg = cfg or ValidateConfig()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    parts = manifest_parts(in_dir, f"`r2d2 ingest ... --out {in_dir}`")
    clear_outputs(out_dir, ("manifest/*.parquet", "quarantine/validate-*.parquet", "validate.json"))
    masks = duplicate_masks(parts)
    bar = tqdm(list(zip(parts, masks, strict=True)), desc="validate", unit="part", disable=not cfg.progress)
    units = [validate_unit(i, p, m, out_dir, cfg) for i, (p, m) in enumerate(bar)]
    return merge_validate(in_dir, out_dir, units, cfg)


# --- Great Expectations --------------------------------------------------------------------------


def manifest_rule_expectations(cfg: ValidateConfig) -> list[tuple[str, dict[str, Any]]]:
    out = [("ExpectColumnValuesToBeBetween", {"column": "rows", "min_value": 1})]
    out.append(("ExpectColumnValuesToBeBetween", {"column": "rejected_share", "min_value": 0, "max_value": cfg.max_rejected_share}))
    out += [("ExpectColumnValuesToBeBetween", {"column": f"share_{r}", "min_value": 0, "max_value": cfg.max_rejected_share}) for r in TEXT_RULES]
    return out


def manifest_row_expectations(cfg: ValidateConfig) -> list[tuple[str, dict[str, Any]]]:
    mostly = 1 - cfg.max_rejected_share
    schemes = "|".join(cfg.url_schemes)
    return [
        ("ExpectTableColumnsToMatchSet", {"column_set": MANIFEST_SCHEMA.names, "exact_match": False}),
        ("ExpectColumnValuesToBeUnique", {"column": "sample_id", "mostly": mostly}),
        ("ExpectColumnValuesToBeInSet", {"column": "image_source", "value_set": ["url", "path", "inline"]}),
        ("ExpectColumnValuesToBeBetween", {"column": "text_len", "min_value": cfg.min_chars, "max_value": cfg.max_chars, "mostly": mostly}),
        ("ExpectColumnValuesToBeBetween", {"column": "cjk_ratio", "min_value": cfg.min_cjk_ratio, "mostly": mostly}),
        ("ExpectColumnValuesToNotBeInSet", {"column": "text_norm", "value_set": [b.casefold() for b in cfg.boilerplate], "mostly": mostly}),
        ("ExpectColumnValuesToMatchRegex", {"column": "url_ref", "regex": rf"^(?:{schemes})://", "mostly": mostly}),
    ]


def image_rule_expectations(cfg: ImageRulesConfig) -> list[tuple[str, dict[str, Any]]]:
    out = [("ExpectColumnValuesToBeBetween", {"column": "rejected_share", "min_value": 0, "max_value": cfg.max_rejected_share})]
    out += [("ExpectColumnValuesToBeBetween", {"column": f"share_{r}", "min_value": 0, "max_value": cfg.max_rejected_share}) for r in IMAGE_RULES]
    return out


def _gx_get(getter: Any, name: str) -> Any:
    try:
        return getter(name)
    except Exception:  # noqa: BLE001 - GX raises KeyError/LookupError/DataContextError for "absent"
        return None


def gx_context(root: str | Path) -> Any:
    """The GX file context in `root` (created on first use, progress bars off)."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    import great_expectations as gx

    Path(root).mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", context_root_dir=str(root))
    if ctx.variables.progress_bars is None:
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        ctx.variables.save()
    return ctx


def ensure_checkpoint(ctx: Any, name: str, expectations: list[tuple[str, dict[str, Any]]]) -> Any:
    """Datasource, asset, suite, validation definition and checkpoint `name`, created if absent.

    The suite is rewritten only when its expectations differ from the ones the config asks for,
    so the committed files under great_expectations/ stay stable between runs.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    ds = _gx_get(ctx.data_sources.get, "r2d2") or ctx.data_sources.add_pandas("r2d2")
    asset = _gx_get(ds.get_asset, name) or ds.add_dataframe_asset(name)
    batch = _gx_get(asset.get_batch_definition, "whole") or asset.add_batch_definition_whole_dataframe("whole")
    want = [(getattr(gxe, cls)(**kw)) for cls, kw in expectations]
    suite = _gx_get(ctx.suites.get, name)

    def sig(exps: list[Any]) -> list[Any]:
        return [(e.expectation_type, {k: v for k, v in e.configuration.kwargs.items() if k != "batch_id"}) for e in exps]

    if suite is None or sig(suite.expectations) != sig(want):
        new = gx.ExpectationSuite(name=name, expectations=want)
        suite = ctx.suites.add_or_update(new)
    vd = _gx_get(ctx.validation_definitions.get, name)
    if vd is None:
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    cp = _gx_get(ctx.checkpoints.get, name)
    if cp is None:
        cp = ctx.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[vd], result_format="SUMMARY"))
    return cp


def run_checkpoint(
    root: str | Path, name: str, expectations: list[tuple[str, dict[str, Any]]], frames: Any, data_docs: bool
) -> dict[str, Any]:
    """Run checkpoint `name` on each dataframe, then build Data Docs once; summarise the outcome."""
    ctx = gx_context(root)
    cp = ensure_checkpoint(ctx, name, expectations)
    success, evaluated, failed = True, 0, set()
    for df in frames:
        result = cp.run(batch_parameters={"dataframe": df})
        success &= bool(result.success)
        for vr in result.run_results.values():
            evaluated += vr.statistics["evaluated_expectations"]
            for r in vr.results:
                if not r.success:
                    col = r.expectation_config.kwargs.get("column", "table")
                    failed.add(f"{r.expectation_config.type}({col})")
    url = None
    if data_docs:
        ctx.build_data_docs()
        url = ctx.get_docs_sites_urls()[0]["site_url"]
    return {"checkpoint": name, "success": success, "evaluated_expectations": evaluated, "failed": sorted(failed), "data_docs": url}


def validate_images(stats: pd.DataFrame, cfg: ValidateConfig) -> dict[str, Any] | None:
    """GX image suite over per-image statistics from a snapshot (per-rule rejected shares)."""
    if cfg.gx_mode == "off":
        return None
    n = len(stats)
    rules = {r: int(stats["rules"].map(lambda rs, r=r: r in list(rs)).sum()) if n else 0 for r in IMAGE_RULES}
    rejected = int(stats["rules"].map(len).gt(0).sum()) if n else 0
    frame = pd.DataFrame([{"images": n, "rejected_share": rejected / max(n, 1), **{f"share_{r}": c / max(n, 1) for r, c in rules.items()}}])
    out = run_checkpoint(cfg.gx_root, "image_rules", image_rule_expectations(cfg.images), [frame], cfg.data_docs)
    out["rules"] = rules
    return out

"""Validation: vectorised text rules, quarantine with rules, GX suites and batch-level stops."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data.helpers import gx_copy, small_demo

from r2d2.cli import main
from r2d2.data.ingest import IngestConfig, ingest
from r2d2.data.manifest import MANIFEST_SCHEMA, read_json
from r2d2.data.validation import (
    ValidateConfig,
    duplicate_masks,
    image_rule_failures,
    text_rule_flags,
    validate_config,
    validate_images,
    validate_manifest,
)
from r2d2.errors import UserError


def _rows(texts: list[str], refs: list[str] | None = None) -> pd.DataFrame:
    refs = refs or ["http://h/a.png"] * len(texts)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(len(texts))], "text": texts, "image_ref": refs,
        "image_source": ["path" if r.startswith("/") else "url" for r in refs],
    })


@pytest.mark.parametrize(
    ("text", "rules"),
    [
        ("红色的圆形在左上角", []),
        ("2023年的红色圆形，很漂亮！", []),
        ("", ["text_not_empty"]),
        (" \t\n", ["text_not_empty"]),
        ("a red circle", ["chinese_ratio"]),
        ("12345", ["chinese_ratio"]),
        ("红", ["text_length"]),
        ("长" * 600, ["text_length"]),
        ("点击查看大图", ["boilerplate"]),
        ("IMG_2041", ["chinese_ratio", "boilerplate"]),
        ("红色圆形.jpg", ["boilerplate"]),
    ],
)
def test_text_rules(text: str, rules: list[str]) -> None:
    flags = text_rule_flags(_rows([text]), ValidateConfig())
    assert [r for r in flags.columns if flags[r].iloc[0]] == rules


def test_url_scheme_and_duplicates() -> None:
    df = _rows(["红色圆形"] * 4, ["http://h/a.png", "ftp://h/a.png", "javascript:alert(1)", "/data/a.png"])
    df.loc[3, "sample_id"] = "s0"
    flags = text_rule_flags(df, ValidateConfig())
    assert flags["url_scheme"].tolist() == [False, True, True, False]
    assert flags["unique_sample_id"].tolist() == [False, False, False, True]


def test_duplicate_masks_span_parts(tmp_path: Path) -> None:
    for i, ids in enumerate([["a", "b", "a"], ["c", "b"]]):
        pq.write_table(pa.table({"sample_id": ids}), tmp_path / f"part-{i}.parquet")
    masks = duplicate_masks(sorted(tmp_path.glob("*.parquet")))
    assert [m.tolist() for m in masks] == [[False, False, True], [False, True]]


def test_image_rules() -> None:
    cfg = ValidateConfig().images
    assert image_rule_failures(32, 32, cfg) == []
    assert image_rule_failures(8, 8, cfg) == ["min_side"]
    assert image_rule_failures(200, 20, cfg) == ["aspect_ratio"]
    assert image_rule_failures(300, 100, cfg) == []  # exactly 3:1 is allowed


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("val")
    demo = small_demo(tmp / "demo", train_images=30)
    ingest([demo / "zero" / "zero_demo.json"], "zero", tmp / "ing", IngestConfig(progress=False))
    return tmp / "ing"


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and "uncommitted" not in p.parts}


def test_gx_suite_on_committed_context(ingested: Path, tmp_path: Path) -> None:
    gx_root = gx_copy(tmp_path / "gx")
    before = _tree_hashes(gx_root)
    cfg = validate_config({"gx_root": str(gx_root), "progress": False})
    s = validate_manifest(ingested, tmp_path / "out", cfg)
    assert s["status"] == "passed" and s["gx"]["success"] and s["gx"]["evaluated_expectations"] == 8
    assert s["passed"] == s["rows"] == 120
    assert (gx_root / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    assert _tree_hashes(gx_root) == before  # default thresholds: committed suites are not rewritten
    assert read_json(tmp_path / "out" / "validate.json")["ingest"]["ingested_rows"] == 120


def test_gx_rows_mode_and_suite_follows_params(ingested: Path, tmp_path: Path) -> None:
    gx_root = gx_copy(tmp_path / "gx")
    cfg = validate_config({"gx_root": str(gx_root), "progress": False, "gx_mode": "rows", "data_docs": False, "max_rejected_share": 0.4})
    s = validate_manifest(ingested, tmp_path / "out", cfg)
    assert s["gx"]["checkpoint"] == "manifest_rows" and s["gx"]["success"]
    assert '"mostly": 0.6' in (gx_root / "expectations" / "manifest_rows.json").read_text()


def test_batch_level_failure_stops(ingested: Path, tmp_path: Path) -> None:
    cfg = validate_config({"gx_root": str(gx_copy(tmp_path / "gx")), "progress": False, "data_docs": False,
                           "min_chars": 12, "max_rejected_share": 0.1})
    with pytest.raises(UserError, match=r"validation stopped: .* rejected \(max 10%\).*text_length"):
        validate_manifest(ingested, tmp_path / "out", cfg)
    s = read_json(tmp_path / "out" / "validate.json")
    assert s["status"] == "failed" and s["rules"]["text_length"] > 12
    q = pq.read_table(next((tmp_path / "out" / "quarantine").glob("*.parquet"))).to_pandas()
    assert len(q) == s["quarantine_rows"] and all("text_length" in r for r in q["rules"])


def test_schema_change_stops(ingested: Path, tmp_path: Path) -> None:
    part = next((ingested / "manifest").glob("*.parquet"))
    t = pq.read_table(part).drop_columns(["license"]).append_column("lang", pa.array(["zh"] * 120))
    (tmp_path / "bad" / "manifest").mkdir(parents=True)
    pq.write_table(t, tmp_path / "bad" / "manifest" / part.name)
    with pytest.raises(UserError, match="schema changed.*missing columns: license; unexpected columns: lang"):
        validate_manifest(tmp_path / "bad", tmp_path / "out", ValidateConfig(gx_mode="off", progress=False))
    assert MANIFEST_SCHEMA.names[-1] == "license"


def test_image_suite(tmp_path: Path) -> None:
    cfg = validate_config({"gx_root": str(gx_copy(tmp_path / "gx")), "data_docs": False})
    stats = pd.DataFrame({"rules": [[], [], ["min_side"], ["decodable"]]})
    out = validate_images(stats, cfg)
    assert out["success"] and out["rules"] == {"decodable": 1, "max_pixels": 0, "min_side": 1, "aspect_ratio": 0}
    stats = pd.DataFrame({"rules": [[], ["aspect_ratio"], ["aspect_ratio"]]})
    out = validate_images(stats, cfg)
    assert not out["success"] and "expect_column_values_to_be_between(share_aspect_ratio)" in out["failed"]


def test_unknown_config_key() -> None:
    with pytest.raises(UserError, match="validate.min_char: unknown key"):
        validate_config({"min_char": 3})


def test_cli_validate(ingested: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    gx_copy(tmp_path / "great_expectations")
    monkeypatch.chdir(tmp_path)  # gx_root defaults to ./great_expectations, as in the repository
    assert main(["validate", str(ingested), "--out", str(tmp_path / "v"), "--no-progress", "--no-docs"]) == 0
    out = capsys.readouterr().out
    assert "120 passed, 0 quarantined" in out and "Great Expectations: passed" in out

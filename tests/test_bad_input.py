"""The bad-input corpus: every kind of dirt ends in quarantine or the ledger with its reason, and
ingested rows = quarantine + ledger + snapshot rows, for every source format."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from data.bad_corpus import TEST_LIMITS, build_bad_corpus
from data.helpers import collect, configs, gx_copy
from data.http_server import ImageServer

from r2d2.data.manifest import count_rows
from r2d2.data.scale import run_pipeline_local


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("bad")
    cfg = configs(gx_copy(tmp / "gx"), max_rejected_share=1.0, images=TEST_LIMITS["images"])
    cfg["snapshot_cfg"] = cfg["snapshot_cfg"].model_copy(
        update={"max_failed_share": 1.0, "download": cfg["snapshot_cfg"].download.model_copy(update=TEST_LIMITS["download"])}
    )
    with ImageServer() as srv:
        corpus = build_bad_corpus(tmp / "corpus", srv)
        results = {src: run_pipeline_local(inputs, src, tmp / src, **cfg) for src, inputs in corpus.inputs.items()}
        hits = dict(srv.hits)
    return corpus, results, tmp, hits


def test_at_least_fifteen_kinds(bad_run: tuple) -> None:
    corpus, *_ = bad_run
    assert len(corpus.kinds) >= 15, sorted(corpus.kinds)


def test_each_case_lands_where_expected(bad_run: tuple) -> None:
    corpus, _, tmp, _ = bad_run
    placed = {src: collect(tmp / src) for src in corpus.inputs}
    for case in corpus.cases:
        df = placed[case.source]
        here = df[(df["file"] == case.file) & (df["line"] == case.line)]
        assert len(here), f"{case.kind} ({case.file}:{case.line}) is nowhere: lost"
        rule = "ok" if case.rule == "dedup" else case.rule
        got = set(zip(here["place"], here["rule"], strict=True))
        assert (case.place, rule) in got, f"{case.kind}: expected {case.place}/{case.rule}, got {got}"
        if case.place != "snapshot":  # a rejected row never also reaches a shard
            assert "snapshot" not in set(here["place"]), case.kind


def test_duplicate_images_share_one_sample(bad_run: tuple) -> None:
    corpus, _, tmp, _ = bad_run
    df = collect(tmp / "wukong")
    dups = [c for c in corpus.cases if c.kind == "duplicate_image"]
    keys = {df[(df["line"] == c.line) & (df["place"] == "snapshot")]["key"].item() for c in dups}
    assert len(keys) == 1
    from r2d2.data.shards import iter_snapshot_samples

    (sample,) = [s for s in iter_snapshot_samples(tmp / "wukong" / "snapshot") if s["image_key"] in keys]
    assert sorted(sample["texts"]) == sorted(["青色的圆形在中间", "青色圆形位于中央"])


def test_counts_reconcile(bad_run: tuple) -> None:
    corpus, results, tmp, _ = bad_run
    for src, r in results.items():
        rec = r["snapshot"]["reconciliation"]
        assert rec["balanced"]
        assert rec["ingested_rows"] == corpus.ingested_rows[src], src
        # recount from the files themselves, not from the summaries
        work = tmp / src
        on_disk = (
            count_rows((work / "ingested" / "quarantine").glob("*.parquet"))
            + count_rows((work / "validated" / "quarantine").glob("*.parquet"))
            + count_rows((work / "snapshot" / "quarantine").glob("*.parquet"))
            + count_rows((work / "snapshot" / "ledger").glob("*.parquet"))
            + count_rows((work / "snapshot" / "shards").glob("*.parquet"))
        )
        assert on_disk == corpus.ingested_rows[src], src


def test_retries_are_counted(bad_run: tuple) -> None:
    corpus, _, tmp, hits = bad_run
    ledger = collect(tmp / "wukong").query("place == 'ledger'")
    retries = TEST_LIMITS["download"]["retries"]
    line = {c.kind: c.line for c in corpus.cases if c.source == "wukong"}
    assert ledger[ledger["line"] == line["http_500"]]["attempts"].item() == retries + 1
    assert ledger[ledger["line"] == line["slow_response"]]["attempts"].item() == retries + 1
    assert ledger[ledger["line"] == line["http_404"]]["attempts"].item() == 1  # 404 is final: no retry
    assert hits["/img/flaky.png"] == 2  # one 503, then success
    assert hits["/img/good0.png"] == 1  # duplicate rows of one URL are fetched once


def test_quarantine_keeps_reasons_and_raw_excerpt(bad_run: tuple) -> None:
    _, _, tmp, _ = bad_run
    q = pq.read_table(next((tmp / "zero" / "ingested" / "quarantine").glob("*.parquet"))).to_pandas()
    assert q["reason"].str.len().gt(0).all()
    assert q["raw"].str.contains("ImageKey").all()
    v = pq.read_table(next((tmp / "wukong" / "validated" / "quarantine").glob("*.parquet"))).to_pandas()
    assert (v["stage"] == "validate").all() and v["reason"].str.len().gt(0).all()


def test_summary_files_written(bad_run: tuple) -> None:
    _, results, tmp, _ = bad_run
    for src in results:
        for f in ("ingested/ingest.json", "validated/validate.json", "snapshot/snapshot.json"):
            assert Path(tmp / src / f).exists()
    assert results["wukong"]["snapshot"]["ledger_by_kind"]["http_status"] == 2

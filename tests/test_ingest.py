"""Ingest: every corpus format into one manifest schema, streaming, with file:line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data.helpers import small_demo

from r2d2.cli import main
from r2d2.data.adapters import common
from r2d2.data.ingest import IngestConfig, ingest
from r2d2.data.manifest import MANIFEST_SCHEMA
from r2d2.errors import UserError

CFG = IngestConfig(progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_demo(tmp_path_factory.mktemp("demo") / "corpus", train_images=40)


def _manifest(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "manifest").glob("*.parquet"))])


@pytest.mark.parametrize(
    ("source", "rel", "rows", "kinds"),
    [
        ("zero", "zero/zero_demo.json", 160, {"title", "content", "query", "keywords"}),
        ("wukong", "wukong", 120, {"caption"}),
        ("cnclip", "train/train_texts.jsonl", 160, {"caption"}),
    ],
)
def test_demo_formats(demo: Path, tmp_path: Path, source: str, rel: str, rows: int, kinds: set[str]) -> None:
    s = ingest([demo / rel], source, tmp_path, CFG)
    t = _manifest(tmp_path)
    assert t.schema.equals(MANIFEST_SCHEMA)
    assert s["rows"] == t.num_rows == rows and s["quarantine_rows"] == 0
    df = t.to_pandas()
    assert df["sample_id"].is_unique
    assert set(df["text_kind"]) == kinds
    assert (df["source"] == source).all() and (df["source_line"] > 0).all()
    if source == "cnclip":
        assert (df["image_source"] == "inline").all() and df["image_ref"].str.contains("train_imgs.tsv#").all()
    else:  # paths relative to the corpus root are resolved to files that exist
        assert (df["image_source"] == "path").all()
        assert all(Path(p).is_file() for p in df["image_ref"])


def test_sample_ids_are_stable(demo: Path, tmp_path: Path) -> None:
    ingest([demo / "wukong"], "wukong", tmp_path / "a", CFG)
    ingest([demo / "wukong"], "wukong", tmp_path / "b", CFG)
    assert _manifest(tmp_path / "a").equals(_manifest(tmp_path / "b"))
    assert len(list((tmp_path / "a" / "manifest").glob("*.parquet"))) == 2  # one unit per input file


@pytest.mark.parametrize(
    ("source", "content", "name", "expect"),
    [
        ("zero", "url,caption\nhttp://a/1.png,红色\n", "x.json", "x.json:1: expected a JSON array"),
        ("wukong", '[{"Title": "t"}]\n', "x.csv", "x.csv:1: expected a Wukong CSV header"),
        ("zero", '[\n {"name": "a", "tag": "t", "url": "u", "captions": "c"}\n]', "w.json", "w.json:2: the record has keys"),
        ("manifest", '{"foo": 1}\n', "m.jsonl", "m.jsonl:1: the record has columns"),
    ],
)
def test_wrong_format_names_file_and_line(tmp_path: Path, source: str, content: str, name: str, expect: str) -> None:
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=expect.replace(".", r"\.").replace("[", r"\[")):
        ingest([f], source, tmp_path / "out", CFG)


def test_cli_wrong_format_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "w.csv"
    f.write_text("url,caption\nhttp://a/1.png,红色\n", encoding="utf-8")
    assert main(["ingest", "--source", "zero", str(f), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "w.csv:1" in err and "--source zero" in err


def test_json_array_scanner_streams_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = [{"Url": "u", "Title": f"标题{i}，含\"引号\"和\\反斜杠{{}}[]", "ImageKey": f"k{i}", "ImageUrl": f"http://h/{i}.png"} for i in range(50)]
    text = json.dumps(recs, ensure_ascii=False, indent=1)
    text = text.replace('"标题7，', '"标题7，\n')  # a raw newline inside a string: one broken record
    f = tmp_path / "z.json"
    f.write_text(text, encoding="utf-8")
    big = list(common.iter_json_records(f))
    monkeypatch.setattr(common._JsonArrayScanner, "CHUNK", 5)  # record boundaries fall mid-chunk
    small = list(common.iter_json_records(f))
    assert [(ln, r, j.rules if j else None) for ln, r, j in big] == [(ln, r, j.rules if j else None) for ln, r, j in small]
    ok = [r for _, r, j in big if j is None]
    bad = [(ln, j) for ln, _, j in big if j is not None]
    assert len(ok) == 49 and [r["ImageKey"] for r in ok][:8] == ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k8"]
    assert len(bad) == 1 and bad[0][1].rules == ["malformed_json"] and "k7" in bad[0][1].raw
    assert bad[0][0] == 2 + 7 * 6  # 1-based line where record 7 starts (6 lines per record)


def test_jsonl_zero_and_wudaomm(tmp_path: Path) -> None:
    z = tmp_path / "z.jsonl"
    z.write_text(
        '{"Title": "红色圆形", "ImageKey": "a", "ImageUrl": "http://h/a.png", "ImageQuery": ["圆形", "红色"]}\n\n'
        '{"Title": "蓝色", "ImageKey": "b", "ImageUrl": "http://h/b.png"\n',
        encoding="utf-8",
    )
    s = ingest([z], "zero", tmp_path / "z", CFG)
    assert s["rows"] == 3 and s["rules"] == {"malformed_json": 1}
    ids = _manifest(tmp_path / "z").column("sample_id").to_pylist()
    assert ids == ["zero:a:title", "zero:a:query:0", "zero:a:query:1"]
    w = tmp_path / "cat.json"
    w.write_text(json.dumps([{"name": "x", "tag": "猫", "url": "http://h/x.jpg", "captions": "猫,可爱,橘猫,睡觉"},
                             {"name": "y", "tag": "猫", "url": "http://h/y.jpg", "captions": ["一只橘猫在睡觉"]}], ensure_ascii=False))
    ingest([w], "wudaomm", tmp_path / "w", CFG)
    assert _manifest(tmp_path / "w").column("text_kind").to_pylist() == ["keywords", "caption"]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "csv"])
def test_own_manifest(tmp_path: Path, suffix: str) -> None:
    rows = [{"image": "http://h/1.png", "text": "红色的圆", "license": "CC-BY-4.0"}, {"image": "imgs/2.png", "text": "蓝色方块", "license": "CC-BY-4.0"}]
    f = tmp_path / f"own.{suffix}"
    if suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), f)
    elif suffix == "jsonl":
        f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    else:
        f.write_text("image,text,license\n" + "\n".join(f"{r['image']},{r['text']},{r['license']}" for r in rows), encoding="utf-8")
    ingest([f], "manifest", tmp_path / "o", IngestConfig(progress=False, license="unknown"))
    df = _manifest(tmp_path / "o").to_pandas()
    assert df["image_source"].tolist() == ["url", "path"]
    assert df["image_ref"].iloc[1] == str(tmp_path / "imgs" / "2.png")
    assert (df["license"] == "CC-BY-4.0").all()


def test_rerun_removes_stale_parts(demo: Path, tmp_path: Path) -> None:
    ingest([demo / "wukong"], "wukong", tmp_path, CFG)
    ingest([demo / "wukong" / "wukong_100m_0.csv"], "wukong", tmp_path, CFG)
    assert [p.name for p in (tmp_path / "manifest").glob("*.parquet")] == ["part-00000.parquet"]


def test_cli_ingest(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--source", "wukong", str(demo / "wukong"), "--out", str(tmp_path), "--no-progress", "--license", "demo"]) == 0
    assert "120 manifest rows" in capsys.readouterr().out
    assert set(_manifest(tmp_path).column("license").to_pylist()) == {"demo"}


@pytest.mark.parametrize(("source", "name", "good"), [
    ("zero", "z.jsonl", {"Title": "红色圆形", "ImageKey": "a", "ImageUrl": "http://h/a.png"}),
    ("wudaomm", "w.json", {"name": "x", "tag": "猫", "url": "http://h/x.jpg", "captions": ["一只橘猫"]}),
    ("cnclip", "train_texts.jsonl", {"text_id": 1, "text": "一只橘猫", "image_ids": [1]}),
    ("manifest", "own.jsonl", {"image": "http://h/1.png", "text": "红色的圆"}),
])
def test_stray_non_object_records_are_quarantined(tmp_path: Path, source: str, name: str, good: dict) -> None:
    """A number or list among the records is one `not_object` reject with its line, not a crash or a silent skip."""
    f = tmp_path / name
    records = [good, 42, ["a", "list"], good | ({"ImageKey": "b", "ImageUrl": "http://h/b.png"} if source == "zero" else {})]
    if name.endswith(".json"):
        f.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    else:
        f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    if source == "cnclip":
        (tmp_path / "train_imgs.tsv").write_text("1\tiVBORw0KGgo\n", encoding="utf-8")
    s = ingest([f], source, tmp_path / "out", CFG)
    q = pq.read_table(tmp_path / "out" / "quarantine" / "ingest-00000.parquet").to_pandas()
    assert s["rules"].get("not_object") == 2 and s["quarantine_rows"] == 2, s
    assert sorted(r[0] for r in q["rules"]) == ["not_object", "not_object"] and q["raw"].str.contains("42").any()

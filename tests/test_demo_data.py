"""The embedded demo corpus: deterministic, in the real formats, tokenizable, with a fair eval split."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from r2d2.config import DemoDataConfig
from r2d2.data import formats
from r2d2.data.demo import ATTRS, generate_demo_corpus

CJK = re.compile(r"[\u4e00-\u9fff]")
SMALL = {"train_images": 60, "eval_images": 20}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "a"
    return out, generate_demo_corpus(out, DemoDataConfig(seed=3, **SMALL))


def _attrs(root: Path) -> list[dict]:
    return formats.read_jsonl(root / "attributes.jsonl")


def test_same_seed_identical_other_seed_different(corpus, tmp_path):
    root, info = corpus
    again = generate_demo_corpus(tmp_path / "b", DemoDataConfig(seed=3, **SMALL))
    assert again["files"] == info["files"]
    assert (tmp_path / "b" / "demo_info.json").read_bytes() == (root / "demo_info.json").read_bytes()
    other = generate_demo_corpus(tmp_path / "c", DemoDataConfig(seed=4, **SMALL))
    assert set(other["files"]) == set(info["files"])
    changed = [f for f in info["files"] if other["files"][f] != info["files"][f]]
    assert len(changed) > 0.9 * len(info["files"])


def test_layout_and_hashes(corpus):
    root, info = corpus
    expected = [
        "zero/zero_demo.json", "wukong/wukong_100m_0.csv", "wukong/wukong_100m_1.csv",
        "train/train_imgs.tsv", "train/train_texts.jsonl", "eval/retrieval/valid_imgs.tsv",
        "eval/retrieval/valid_texts.jsonl", "eval/matching/valid.jsonl", "images/demo-train-000059.png",
        "images/demo-eval-000019.png",
    ]
    for rel in expected:
        assert rel in info["files"], rel
    assert len([f for f in info["files"] if f.startswith("images/")]) == 80
    for rel, digest in info["files"].items():
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest
    assert info["counts"]["train_images"] == 60 and info["counts"]["eval_images"] == 20
    assert info["chance"]["retrieval_r1"] == pytest.approx(1 / 20)


def test_regenerating_into_previous_corpus_leaves_no_stale_files(tmp_path):
    out = tmp_path / "d"
    generate_demo_corpus(out, DemoDataConfig(seed=0, train_images=30, eval_images=10))
    info = generate_demo_corpus(out, DemoDataConfig(seed=0, train_images=12, eval_images=4))
    assert len(list((out / "images").iterdir())) == 16 == info["counts"]["train_images"] + 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    from r2d2.errors import UserError

    with pytest.raises(UserError, match="not empty"):
        generate_demo_corpus(tmp_path / "other", DemoDataConfig(train_images=5, eval_images=2))


def test_zero_json_has_exactly_the_zero_keys(corpus):
    root, _ = corpus
    records = json.loads((root / "zero" / "zero_demo.json").read_text(encoding="utf-8"))
    assert isinstance(records, list) and len(records) == 60
    for rec in records:
        assert set(rec) == {"Url", "Title", "Content", "Keywords", "ImageKey", "ImageUrl", "ImageQuery"}
        assert rec["ImageUrl"] == f"images/{rec['ImageKey']}.png" and (root / rec["ImageUrl"]).is_file()
        assert rec["Url"] == f"https://demo.invalid/page/{rec['ImageKey']}"
        assert rec["Title"] != rec["Content"]
        assert len(rec["Keywords"].split(",")) == 6
    assert formats.read_zero_json(root / "zero" / "zero_demo.json") == records


def test_wukong_csv_header_and_rows(corpus):
    root, _ = corpus
    urls = set()
    for part in (0, 1):
        path = root / "wukong" / f"wukong_100m_{part}.csv"
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["url", "caption"]
        assert len(rows) - 1 == 30 * 3  # half the images, captions_per_image rows each
        urls |= {r[0] for r in rows[1:]}
        assert formats.read_wukong_csv(path)[0] == {"url": rows[1][0], "caption": rows[1][1]}
    assert len(urls) == 60 and all((root / u).is_file() for u in urls)


def test_cnclip_splits_round_trip_and_decode(corpus):
    root, _ = corpus
    images, texts = formats.read_cnclip_split(root / "train", "train")
    assert len(images) == 60 and len(texts) == 60 * 4  # 3 captions + 1 query each
    assert all(isinstance(k, int) for k in images)
    assert {i for t in texts for i in t["image_ids"]} == set(images)
    arr = formats.decode_image(next(iter(images.values())), 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert formats.decode_image(next(iter(images.values())), 16).shape == (16, 16, 3)
    v_images, v_texts = formats.read_cnclip_split(root / "eval" / "retrieval", "valid")
    assert len(v_images) == 20 and len(v_texts) == 20
    assert not set(v_images) & set(images)
    assert sorted(t["image_ids"][0] for t in v_texts) == sorted(v_images)


def test_images_show_a_shape_on_a_plain_background(corpus):
    """Legibility floor: the shape covers a real share of the 32 px image and contrasts with the background."""
    root, _ = corpus
    for row in _attrs(root)[:40]:
        arr = formats.decode_image((root / "images" / f"{row['image_key']}.png").read_bytes()).astype(int)
        corner_px = [arr[0, 0], arr[0, -1], arr[-1, 0], arr[-1, -1]]
        bg = max(corner_px, key=lambda p: sum(np.abs(p - q).sum() < 30 for q in corner_px))
        far = np.abs(arr - bg).sum(-1) > 90
        assert 0.04 < far.mean() < 0.5, (row, far.mean())


def test_every_text_is_chinese_and_has_no_unk(corpus):
    from r2d2.tokenizer import load_tokenizer

    root, _ = corpus
    texts = [t["text"] for t in formats.read_jsonl(root / "train" / "train_texts.jsonl")]
    texts += [t["text"] for t in formats.read_jsonl(root / "eval" / "retrieval" / "valid_texts.jsonl")]
    texts += [r["text"] for r in formats.read_icm_jsonl(root / "eval" / "matching" / "valid.jsonl")]
    texts += [r["caption"] for p in (0, 1) for r in formats.read_wukong_csv(root / "wukong" / f"wukong_100m_{p}.csv")]
    assert all(CJK.search(t) for t in texts)
    tok = load_tokenizer()
    assert tok.unk_token_id == 100
    ids = tok(texts)["input_ids"]
    bad = [t for t, row in zip(texts, ids, strict=True) if 100 in row]
    assert not bad, bad[:5]
    rows = _attrs(root)
    assert all(len(set(r["captions"])) == len(r["captions"]) for r in rows)
    caps = [c for r in rows for c in r["captions"]]
    assert len(set(caps)) > 0.95 * len(caps)  # varied templates and synonyms, not one sentence per combo


def test_eval_combos_unique_and_held_out(corpus):
    root, info = corpus
    rows = _attrs(root)
    ev = [tuple(r[a] for a in ATTRS) for r in rows if r["split"] == "eval"]
    tr = {tuple(r[a] for a in ATTRS) for r in rows if r["split"] == "train"}
    assert len(ev) == len(set(ev)) == 20
    assert not set(ev) & tr and info["eval_combos_in_train"] == 0
    for r in rows:
        if r["count"] > 1:
            assert r["size"] == "小"
        assert r["colour"] != r["background"]


def test_matching_split_balanced_with_hard_negatives(corpus):
    root, _ = corpus
    rows = formats.read_icm_jsonl(root / "eval" / "matching" / "valid.jsonl")
    labels = [r["label"] for r in rows]
    assert labels.count(1) == labels.count(0) == 20
    attrs = {f"images/{r['image_key']}.png": r for r in _attrs(root)}
    owner = {c: r for r in attrs.values() if r["split"] == "eval" for c in r["captions"]}
    diffs = []
    for r in rows:
        img = attrs[r["image_path"]]
        assert img["split"] == "eval"
        src = owner[r["text"]]
        n_diff = sum(img[a] != src[a] for a in ATTRS)
        assert (n_diff == 0) == (r["label"] == 1)
        if r["label"] == 0:
            diffs.append(n_diff)
    assert sum(d <= 2 for d in diffs) >= len(diffs) // 2  # mostly hard negatives


def test_cli_writes_corpus(tmp_path, capsys):
    from r2d2.cli import main

    out = tmp_path / "cli"
    argv = ["demo-data", "--out", str(out), "--seed", "1", "--train-images", "50", "--eval-images", "20",
            "--params", str(tmp_path / "missing.yaml")]
    assert main(argv) == 0
    info = json.loads((out / "demo_info.json").read_text(encoding="utf-8"))
    assert info["seed"] == 1 and info["counts"]["train_images"] == 50 and info["counts"]["eval_images"] == 20
    assert "wrote demo corpus" in capsys.readouterr().out
    assert main(["demo-data", "--out", str(tmp_path / "bad"), "--eval-images", "0",
                 "--params", str(tmp_path / "missing.yaml")]) == 2
    assert "--eval-images" in capsys.readouterr().err

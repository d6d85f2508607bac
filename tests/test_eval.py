"""Evaluation core: recall, chunked top-k, re-ranking, AUC, prediction files, tiny model and CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r2d2.config import DemoDataConfig, EvalConfig, model_config
from r2d2.eval.matching import evaluate_matching
from r2d2.eval.metrics import first_hit_rank, matching_metrics, mean_recall, positives_table, recall_at_k
from r2d2.eval.report import format_table
from r2d2.eval.retrieval import chunked_topk, evaluate_retrieval, rank, rerank
from r2d2.model.r2d2 import ImageEncoding, TextEncoding, build_model

# --- stubs: a model whose features are a function of the item id ---------------------------------


class IdTokenizer:
    """Texts are decimal ids; each becomes one token holding that id (no vocab involved)."""

    def __call__(self, texts: list[str], **_: object) -> dict[str, torch.Tensor]:
        ids = torch.tensor([[int(t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class StubModel(torch.nn.Module):
    """oracle: features are one-hot ids (the right image is the unique nearest); random: unrelated random features.

    Images carry their id in every pixel; with has_cross the match score is 1 exactly for equal ids.
    """

    def __init__(self, features: str, has_cross: bool = False, dim: int = 256) -> None:
        super().__init__()
        self.features, self.has_cross, self.dim = features, has_cross, dim
        gen = torch.Generator().manual_seed(0)
        self.img_table = F.normalize(torch.randn(256, dim, generator=gen), dim=-1)
        self.txt_table = F.normalize(torch.randn(256, dim, generator=gen), dim=-1)

    def _feat(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.one_hot(ids, self.dim).float() if self.features == "oracle" else table[ids]

    def encode_image(self, images: torch.Tensor) -> ImageEncoding:
        ids = images[:, 0, 0, 0].long()
        return ImageEncoding(tokens=ids.float().view(-1, 1, 1), feat=self._feat(ids, self.img_table))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEncoding:
        ids = input_ids[:, 0]
        return TextEncoding(tokens=ids.float().view(-1, 1, 1).expand(-1, input_ids.shape[1], 1),
                            mask=attention_mask, feat=self._feat(ids, self.txt_table))

    def similarity(self, image: ImageEncoding, text: TextEncoding) -> torch.Tensor:
        return image.feat @ text.feat.t()

    def match_score(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return (image_tokens[:, 0, 0] == text_tokens[:, 0, 0]).float()


def id_images(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()


def run_stub(model: StubModel, n: int, rerank_k: int = 0, multi: bool = True, **kw: object) -> dict:
    """n images with ids 1000+i; each has its own text, and (multi) every 5th a second text naming it and the next."""
    texts, owners = [], []
    for i in range(n):
        texts.append(str(i))
        owners.append([1000 + i])
        if multi and i % 5 == 0:
            texts.append(str(i))
            owners.append([1000 + i, 1000 + (i + 1) % n])
    return evaluate_retrieval(model, id_images(n), [1000 + i for i in range(n)], texts, owners,
                              EvalConfig(rerank_k=rerank_k, batch_size=16), 8, "cpu",
                              tokenizer=IdTokenizer(), progress=False, **kw)


# --- metrics -----------------------------------------------------------------------------------


def test_recall_hand_computed_multi_positive():
    # 3 queries x 5 gallery items; positives: q0 {0}, q1 {1, 3}, q2 {0, 1} (multi-positive).
    sim = torch.tensor([[0.5, 0.2, 0.9, 0.1, 0.0],    # order 2,0,1,3,4 -> first positive at rank 2
                        [0.1, 0.8, 0.3, 0.7, 0.2],    # order 1,3,... -> rank 1
                        [0.1, 0.2, 0.3, 0.4, 0.5]])   # order 4,3,2,1,0 -> rank 4
    _, ranked = chunked_topk(lambda q, g: sim[q, g], 3, 5, 5, 2, 2)
    pos = positives_table([[0], [1, 3], [0, 1]])
    assert first_hit_rank(ranked, pos).tolist() == [2, 1, 4]
    r = recall_at_k(ranked, pos, ks=(1, 3, 5))
    assert r == pytest.approx({"r1": 100 / 3, "r3": 200 / 3, "r5": 100.0})
    # MR = mean of the six recalls of two directions.
    assert mean_recall({"t2i": {"r1": 10, "r5": 20, "r10": 30}, "i2t": {"r1": 40, "r5": 50, "r10": 60}}) == 35.0


@pytest.mark.parametrize("k", [1, 10, 101, 150])
def test_chunked_topk_equals_full_matrix(k):
    sim = torch.randn(37, 101, generator=torch.Generator().manual_seed(k))
    full_v, full_i = sim.topk(min(k, 101), dim=1)
    for qc, gc in [(1, 1), (5, 7), (37, 50), (64, 101), (8, 200)]:
        seen = []

        def score(q: slice, g: slice, seen: list = seen) -> torch.Tensor:
            seen.append(sim[q, g].shape)
            return sim[q, g]

        v, i = chunked_topk(score, 37, 101, k, qc, gc)
        assert torch.equal(i, full_i) and torch.equal(v, full_v), (qc, gc)
        # memory stays flat: no block is ever larger than query_chunk x gallery_chunk
        assert max(a * b for a, b in seen) <= qc * gc


def test_rerank_orders_top_k_by_match_plus_cosine():
    cos = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.25, 0.125, 0.0]])
    ranked = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    match = torch.tensor([[0.0, 0.5, 0.1], [0.0, 0.25, 0.0]])
    scores, ids = rerank(cos, ranked, match)
    assert ids[0].tolist() == [11, 10, 12, 13]  # 1.3 > 0.9 > 0.8; the 4th is beyond k and stays last
    assert scores[0].tolist() == pytest.approx([1.3, 0.9, 0.8, 0.6])
    assert ids[1].tolist() == [20, 21, 22, 23]  # a tie (0.5 == 0.5) keeps the cosine order


def test_rank_rescores_in_one_call_per_chunk():
    sim = torch.randn(10, 30, generator=torch.Generator().manual_seed(1))
    calls = []

    def match(q: slice, cand: torch.Tensor) -> torch.Tensor:  # prefers the lowest gallery index
        calls.append(tuple(cand.shape))
        return -cand.float()

    _, plain = rank(lambda q, g: sim[q, g], None, 10, 30, 10, 0, 8)
    _, ranked = rank(lambda q, g: sim[q, g], match, 10, 30, 10, 4, 8)
    assert calls == [(2, 4)] * 5  # batch 8 = 2 queries x k 4 per vectorised call
    assert torch.equal(ranked[:, :4], plain[:, :4].sort(dim=1).values)
    assert torch.equal(ranked[:, 4:], plain[:, 4:])


def test_auc_and_accuracy_match_sklearn():
    from sklearn.metrics import roc_auc_score

    m = matching_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m["auc"] == pytest.approx(75.0) and m["accuracy"] == pytest.approx(75.0)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 200), rng.random(200)
    assert matching_metrics(y, s)["auc"] == pytest.approx(100 * roc_auc_score(y, s))
    assert matching_metrics([1, 1], [0.2, 0.9])["auc"] is None  # one class: undefined, not NaN
    assert matching_metrics([0, 1], [0.2, 0.9], threshold=None)["accuracy"] is None


# --- retrieval and matching with stub models ---------------------------------------------------------


def test_oracle_model_is_perfect_and_random_is_chance():
    oracle = run_stub(StubModel("oracle"), 50)
    for d in ("t2i", "i2t"):
        assert oracle[d]["r1"] == 100.0, d
    assert oracle["t2i"]["num_queries"] == 60 and oracle["i2t"]["num_queries"] == 50
    assert oracle["mr"] == 100.0 and oracle["score"] == "cosine"
    rand = run_stub(StubModel("random"), 200)
    # chance: R@1 ~ 0.5-1 %, R@10 ~ 5-10 % (some texts and images have two positives)
    assert rand["t2i"]["r1"] < 5 and rand["t2i"]["r10"] < 20
    assert rand["i2t"]["r1"] < 5 and rand["i2t"]["r10"] < 20


def test_rerank_with_oracle_match_lifts_recall():
    model = StubModel("random", has_cross=True)
    plain = run_stub(model, 100, rerank_k=0, multi=False)
    top10 = run_stub(model, 100, rerank_k=10, multi=False)
    full = run_stub(model, 100, rerank_k=100, multi=False)
    assert plain["score"] == "cosine" and top10["score"] == "match+cosine"
    for d in ("t2i", "i2t"):
        # a perfect match score moves every positive found in the cosine top 10 to rank 1
        assert top10[d]["r1"] == pytest.approx(plain[d]["r10"])
        assert full[d]["r1"] == 100.0


def test_prediction_files_chinese_clip_format(tmp_path):
    res = run_stub(StubModel("random"), 30, predictions_dir=tmp_path)
    t2i = [json.loads(line) for line in (tmp_path / "t2i_predictions.jsonl").read_text().splitlines()]
    i2t = [json.loads(line) for line in (tmp_path / "i2t_predictions.jsonl").read_text().splitlines()]
    refs = {r["image_id"]: r["text_ids"] for r in map(json.loads, (tmp_path / "i2t_references.jsonl").read_text().splitlines())}
    assert len(t2i) == 36 and len(i2t) == 30 == len(refs)
    for row in t2i:
        assert set(row) == {"text_id", "image_ids"} and len(row["image_ids"]) == 10 == len(set(row["image_ids"]))
        assert all(isinstance(i, int) and 1000 <= i < 1030 for i in row["image_ids"])
    for row in i2t:
        assert set(row) == {"image_id", "text_ids"} and len(row["text_ids"]) == 10 == len(set(row["text_ids"]))
    # Chinese-CLIP's scorer logic on our files gives our numbers.
    r10 = np.mean([any(t in refs[row["image_id"]] for t in row["text_ids"]) for row in i2t]) * 100
    assert res["i2t"]["r10"] == pytest.approx(r10)


def test_matching_oracle_and_cosine_fallback():
    labels = [1, 0] * 10
    texts = [str(i if y else (i + 1) % 20) for i, y in enumerate(labels)]
    res = evaluate_matching(StubModel("random", has_cross=True), id_images(20), texts, labels,
                            EvalConfig(batch_size=8), 8, "cpu", tokenizer=IdTokenizer(), progress=False)
    assert res["auc"] == 100.0 and res["accuracy"] == 100.0 and res["score"] == "match"
    res = evaluate_matching(StubModel("oracle"), id_images(20), texts, labels,
                            EvalConfig(batch_size=8), 8, "cpu", tokenizer=IdTokenizer(), progress=False)
    assert res["auc"] == 100.0 and res["accuracy"] is None and res["score"] == "cosine"


# --- the real tiny model, library and CLI ----------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"prd2": True}, {"prd2": True, "similarity": "token_wise"}],
                         ids=["r2d2", "prd2", "prd2-token-wise"])
def test_tiny_model_end_to_end(overrides, tmp_path):
    torch.manual_seed(0)
    model = build_model(model_config(overrides, size="tiny")).train()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    texts = [f"{c}色的{s}" for c in "红绿蓝黄白" for s in ("圆形", "方形", "三角形", "星形")]
    res = evaluate_retrieval(model, images, list(range(20)), texts, [[i] for i in range(20)],
                             EvalConfig(rerank_k=4, batch_size=8), 32, predictions_dir=tmp_path, progress=False)
    assert model.training  # given back in the mode it came in
    assert res["rerank_k"] == (0 if overrides else 4)
    for d in ("t2i", "i2t"):
        r = res[d]
        assert 0 <= r["r1"] <= r["r5"] <= r["r10"] <= 100 and r["num_queries"] == 20
    predicted = [json.loads(line)["image_ids"] for line in (tmp_path / "t2i_predictions.jsonl").read_text().splitlines()]
    assert len(predicted) == 20
    if not res["rerank_k"]:  # batched, chunked, padded ranking == ranking of the full similarity matrix
        from r2d2.tokenizer import tokenize

        with torch.inference_mode():
            model.eval()
            tok = tokenize(texts, 32)
            sim = model.similarity(model.encode_image(images), model.encode_text(tok["input_ids"], tok["attention_mask"]))
            model.train()
        assert predicted == sim.t().topk(10, dim=1).indices.tolist()
    match = evaluate_matching(model, images, texts, [i % 2 for i in range(20)], EvalConfig(batch_size=8), 32, progress=False)
    assert 0 <= match["auc"] <= 100 and match["num_pairs"] == 20
    assert "R@1" in format_table({"retrieval": res, "matching": match})


def test_cli_evaluate_untrained_model_on_demo_corpus(tmp_path, capsys):
    from r2d2.cli import main
    from r2d2.data.demo import generate_demo_corpus
    from r2d2.model.io import save_pretrained

    root = tmp_path / "demo"
    generate_demo_corpus(root, DemoDataConfig(train_images=4, eval_images=20))
    torch.manual_seed(0)
    save_pretrained(build_model(model_config(size="tiny")), tmp_path / "model")
    out = tmp_path / "eval" / "metrics.json"
    argv = ["evaluate", "--model", str(tmp_path / "model"), "--retrieval", f"{root / 'eval' / 'retrieval'}:valid",
            "--matching", str(root / "eval" / "matching" / "valid.jsonl"), "--out", str(out),
            "--rerank-k", "3", "--batch-size", "16", "--params", str(tmp_path / "none.yaml"), "--device", "cpu"]
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    ret, match = metrics["retrieval"], metrics["matching"]
    assert ret["num_images"] == 20 and ret["rerank_k"] == 3 and set(ret["t2i"]) >= {"r1", "r5", "r10"}
    assert 0 <= ret["mr"] <= 100 and 0 <= match["auc"] <= 100 and match["num_pairs"] > 20
    assert Path(ret["predictions"]["t2i"]).parent == out.parent / "predictions"
    assert "MR" in capsys.readouterr().out
    # a missing split is one clear error, not a traceback
    assert main([*argv[:4], f"{root / 'eval' / 'retrieval'}:test", *argv[5:]]) == 2
    assert "no test_imgs.tsv" in capsys.readouterr().err

"""Image<->text retrieval evaluation: contrastive ranking, cross-encoder re-ranking, recall, prediction files.

The protocol of R2D2 (and ALBEF before it): rank the gallery by the dual encoder's similarity,
take each query's top k (`evaluate.rerank_k`), score those k pairs with the cross encoders'
match probability, and order them by match + cosine. PRD2 (no cross encoders) or k = 0 ranks
by similarity alone.

Memory is flat in gallery size: scores are computed one [query chunk x gallery chunk] block at
a time and folded into a running top-k, so the Q x G matrix never exists (a 30k x 30k float
matrix would be 3.6 GB). Only the stored features and each query's top candidates grow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from r2d2.config import EvalConfig
from r2d2.eval.encode import EncodedImages, EncodedTexts, Images, LazyImages, encode_images, encode_texts
from r2d2.eval.metrics import KS, mean_recall, positives_table, recall_at_k

DIRECTIONS = ("t2i", "i2t")
# Elements of one similarity block (64 MiB of fp32); token-wise similarity spends N x L per pair.
SCORE_BUDGET = 1 << 24

ScoreFn = Callable[[slice, slice], torch.Tensor]  # (query positions, gallery positions) -> [q, g]
MatchFn = Callable[[slice, torch.Tensor], torch.Tensor]  # (query positions, candidates [q, k]) -> [q, k]


def chunked_topk(
    score_fn: ScoreFn, num_queries: int, num_gallery: int, k: int, query_chunk: int, gallery_chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores and gallery indices [Q, k] (best first) without materialising Q x G.

    Each query chunk keeps a running top-k: every gallery block is concatenated to it and cut
    back to k, so memory is query_chunk x (k + gallery_chunk) whatever the gallery size.
    """
    k = min(k, num_gallery)
    values, indices = [], []
    for q0 in range(0, num_queries, query_chunk):
        qs = slice(q0, min(q0 + query_chunk, num_queries))
        best_v: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for g0 in range(0, num_gallery, gallery_chunk):
            block = score_fn(qs, slice(g0, min(g0 + gallery_chunk, num_gallery))).float()
            idx = torch.arange(g0, g0 + block.shape[1], device=block.device).expand_as(block)
            if best_v is not None and best_i is not None:
                block, idx = torch.cat([best_v, block], 1), torch.cat([best_i, idx], 1)
            v, j = block.topk(min(k, block.shape[1]), dim=1)
            best_v, best_i = v, idx.gather(1, j)
        assert best_v is not None and best_i is not None
        values.append(best_v)
        indices.append(best_i)
    return torch.cat(values), torch.cat(indices)


def rerank(cosine: torch.Tensor, ranked: torch.Tensor, match: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-order each query's first k candidates by match + cosine; the rest keep their cosine order after them.

    cosine, ranked: [Q, K] from the contrastive ranking (best first); match: [Q, k], k <= K,
    the match scores of the first k. Ties keep the cosine order (stable sort). Returns the
    final scores and gallery indices [Q, K]; positions, not scores, define the ranking past k.
    """
    k = match.shape[1]
    final = match.to(cosine.dtype) + cosine[:, :k]
    order = final.argsort(dim=1, descending=True, stable=True)
    scores = torch.cat([final.gather(1, order), cosine[:, k:]], 1)
    return scores, torch.cat([ranked[:, :k].gather(1, order), ranked[:, k:]], 1)


def rank(
    score_fn: ScoreFn,
    match_fn: MatchFn | None,
    num_queries: int,
    num_gallery: int,
    depth: int,
    rerank_k: int,
    batch_size: int,
    pair_cost: int = 1,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrastive top-`depth`, then re-ranking of the top `rerank_k` in chunks of batch_size pairs.

    Each re-rank chunk is ONE vectorised cross-encoder call on (batch_size // k) queries, each
    repeated k times, so the cross encoders always see full batches.
    """
    from tqdm.auto import tqdm

    gallery_chunk = max(1, SCORE_BUDGET // (batch_size * pair_cost))
    scores, ranked = chunked_topk(score_fn, num_queries, num_gallery, depth, batch_size, gallery_chunk)
    k = min(rerank_k, ranked.shape[1])
    if match_fn is None or k == 0:
        return scores, ranked
    step = max(1, batch_size // k)
    disable = None if progress is None else not progress
    for q0 in tqdm(range(0, num_queries, step), desc="re-rank", unit="chunk", disable=disable):
        qs = slice(q0, min(q0 + step, num_queries))
        match = match_fn(qs, ranked[qs, :k])
        scores[qs], ranked[qs] = rerank(scores[qs], ranked[qs], match)
    return scores, ranked


def _direction_fns(
    model: torch.nn.Module, images: EncodedImages, texts: EncodedTexts, direction: str,
    query_index: torch.Tensor, device: torch.device,
) -> tuple[ScoreFn, MatchFn]:
    """Similarity and match-score closures over stored encodings for one direction."""

    def score(qs: slice, gs: slice) -> torch.Tensor:
        q = query_index[qs]
        if direction == "t2i":
            return model.similarity(images.encoding(gs, device), texts.encoding(q, device)).t()
        return model.similarity(images.encoding(q, device), texts.encoding(gs, device))

    def match(qs: slice, candidates: torch.Tensor) -> torch.Tensor:
        k = candidates.shape[1]
        queries = query_index[qs].to(candidates.device).repeat_interleave(k)
        flat = candidates.reshape(-1)
        img_idx, txt_idx = (flat, queries) if direction == "t2i" else (queries, flat)
        img = images.encoding(img_idx, device, with_tokens=True)
        txt = texts.encoding(txt_idx, device, with_tokens=True)
        return model.match_score(img.tokens, txt.tokens, txt.mask).view(-1, k)

    return score, match


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Evaluate without dropout and give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def resolve_device(model: torch.nn.Module, device: torch.device | str | None) -> torch.device:
    """None: where the model already is. Otherwise the model is moved there."""
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    return device


def write_predictions(
    out_dir: Path, direction: str, query_ids: Sequence[Any], ranked_ids: Sequence[Sequence[Any]], top: int = 10
) -> Path:
    """Chinese-CLIP prediction JSONL: t2i `{"text_id", "image_ids"}`, i2t `{"image_id", "text_ids"}`, top 10."""
    from r2d2.data.formats import write_jsonl

    q_key, r_key = ("text_id", "image_ids") if direction == "t2i" else ("image_id", "text_ids")
    rows = ({q_key: q, r_key: list(r[:top])} for q, r in zip(query_ids, ranked_ids, strict=True))
    return write_jsonl(Path(out_dir) / f"{direction}_predictions.jsonl", rows)


@torch.inference_mode()
def evaluate_retrieval(
    model: torch.nn.Module,
    images: Images,
    image_ids: Sequence[Any],
    texts: Sequence[str],
    text_image_ids: Sequence[Sequence[Any]],
    cfg: EvalConfig | None = None,
    max_len: int = 64,
    device: torch.device | str | None = None,
    *,
    text_ids: Sequence[Any] | None = None,
    directions: Sequence[str] = DIRECTIONS,
    predictions_dir: str | Path | None = None,
    tokenizer: object | None = None,
    store_device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Recall@1/5/10 per direction and MR for a gallery of images and their texts.

    text_image_ids[t] lists the ids (from image_ids) of the images text t describes; ids not in
    the gallery are ignored. t2i queries are all texts, i2t queries the images with at least one
    text (as in Chinese-CLIP's references); recall counts only queries with a positive.
    """
    cfg = cfg or EvalConfig()
    if len(image_ids) != len(images) or len(text_image_ids) != len(texts):
        raise ValueError("image_ids must align with images and text_image_ids with texts")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image_ids must be unique")
    if unknown := set(directions) - set(DIRECTIONS):
        raise ValueError(f"unknown directions {sorted(unknown)}; choose from {DIRECTIONS}")
    text_ids = list(range(len(texts))) if text_ids is None else list(text_ids)
    where = {image_id: g for g, image_id in enumerate(image_ids)}
    t2i_pos = [[where[i] for i in ids if i in where] for ids in text_image_ids]
    i2t_pos: list[list[int]] = [[] for _ in image_ids]
    for t, gallery in enumerate(t2i_pos):
        for g in gallery:
            i2t_pos[g].append(t)
    rerank_k = cfg.rerank_k if getattr(model, "has_cross", False) else 0
    device = resolve_device(model, device)
    result: dict[str, Any] = {
        "num_images": len(image_ids), "num_texts": len(texts), "rerank_k": rerank_k,
        "score": "match+cosine" if rerank_k else "cosine", "seconds": {},
    }
    start = time.perf_counter()
    with eval_mode(model):
        img = encode_images(model, images, cfg.batch_size, device, rerank_k > 0, store_device, progress)
        txt = encode_texts(model, texts, max_len, cfg.batch_size, device, rerank_k > 0, store_device, tokenizer, progress)
        result["seconds"]["encode"] = time.perf_counter() - start
        # Token-wise similarity builds an N x L block per pair: shrink gallery chunks to match.
        pair_cost = 1 if img.token_feats is None else img.token_feats.shape[1] * txt.mask.shape[1]
        per_direction, predictions = {}, {}
        for direction in directions:
            start = time.perf_counter()
            positives = t2i_pos if direction == "t2i" else i2t_pos
            queries = range(len(texts)) if direction == "t2i" else [g for g, p in enumerate(i2t_pos) if p]
            query_index = torch.as_tensor(list(queries), dtype=torch.long)
            if len(query_index) == 0:  # e.g. i2t when no text names a gallery image
                continue
            n_gallery = len(images) if direction == "t2i" else len(texts)
            score_fn, match_fn = _direction_fns(model, img, txt, direction, query_index, device)
            depth = min(n_gallery, max(rerank_k, max(KS)))
            _, ranked = rank(score_fn, match_fn if rerank_k else None, len(query_index), n_gallery, depth,
                             rerank_k, cfg.batch_size, pair_cost, progress)
            ranked = ranked.cpu()
            has_pos = torch.tensor([bool(positives[q]) for q in query_index.tolist()], dtype=torch.bool)
            table = positives_table([positives[q] for q in query_index[has_pos].tolist()])
            if has_pos.any():
                per_direction[direction] = {**recall_at_k(ranked[has_pos], table), "num_queries": int(has_pos.sum()),
                                            "skipped_queries": int((~has_pos).sum())}
                result[direction] = per_direction[direction]
            if predictions_dir is not None:
                q_ids = [text_ids[q] if direction == "t2i" else image_ids[q] for q in query_index.tolist()]
                names = image_ids if direction == "t2i" else text_ids
                r_ids = [[names[g] for g in row] for row in ranked[:, : max(KS)].tolist()]
                predictions[direction] = str(write_predictions(Path(predictions_dir), direction, q_ids, r_ids))
            result["seconds"][direction] = time.perf_counter() - start
    result["mr"] = mean_recall(per_direction)
    if predictions_dir is not None:
        if "i2t" in directions:  # Chinese-CLIP's image->text reference (what transform_ir_annotation_to_tr writes)
            from r2d2.data.formats import write_jsonl

            refs = ({"image_id": image_ids[g], "text_ids": [text_ids[t] for t in p]} for g, p in enumerate(i2t_pos) if p)
            predictions["i2t_references"] = str(write_jsonl(Path(predictions_dir) / "i2t_references.jsonl", refs))
        result["predictions"] = predictions
    return result


def evaluate_cnclip_split(
    model: torch.nn.Module,
    split_dir: str | Path,
    split: str = "valid",
    cfg: EvalConfig | None = None,
    max_len: int | None = None,
    device: torch.device | str | None = None,
    *,
    prefix: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate on a Chinese-CLIP style split (`{prefix}{split}_imgs.tsv` + `_texts.jsonl`; MUGE's `MR_` too).

    Images are decoded per batch at the model's input size; extra keyword arguments go to
    `evaluate_retrieval` (directions, predictions_dir, tokenizer, progress).
    """
    from r2d2.data.formats import read_cnclip_split

    images, texts = read_cnclip_split(Path(split_dir), split, prefix=prefix)
    image_ids = list(images)
    gallery = LazyImages([images[i] for i in image_ids], model.cfg.vision.image_size)
    result = evaluate_retrieval(
        model, gallery, image_ids, [t["text"] for t in texts], [t["image_ids"] for t in texts], cfg,
        max_len or model.cfg.text.max_len, device, text_ids=[t["text_id"] for t in texts], **kwargs,
    )
    return {"dataset": {"path": str(split_dir), "split": f"{prefix}{split}"}, **result}

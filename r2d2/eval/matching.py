"""Image-text matching evaluation (ICM, IQM): AUC of a per-pair score on labelled pairs.

R2D2's score is the cross encoders' match probability (the mean of the two heads), which is
also what re-ranks retrieval; PRD2 has no cross encoders and is scored by its contrastive
similarity. Accuracy at 0.5 is reported only for the probability: a cosine has no natural
threshold, and a number at an arbitrary one would read as meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from r2d2.config import EvalConfig
from r2d2.errors import UserError
from r2d2.eval.encode import Images, LazyImages, image_batch
from r2d2.eval.metrics import matching_metrics
from r2d2.eval.retrieval import eval_mode, resolve_device
from r2d2.tokenizer import tokenize


@torch.inference_mode()
def pair_scores(
    model: torch.nn.Module,
    images: Images,
    texts: Sequence[str],
    batch_size: int,
    max_len: int,
    device: torch.device,
    tokenizer: object | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Score aligned (image i, text i) pairs in batches: match probability, or similarity for PRD2."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts: pairs must align")
    has_cross = getattr(model, "has_cross", False)
    out = []
    disable = None if progress is None else not progress
    with tqdm(total=len(texts), desc="score pairs", unit="pair", disable=disable) as bar:
        for start in range(0, len(texts), batch_size):
            stop = min(start + batch_size, len(texts))
            img = model.encode_image(image_batch(images, start, stop).to(device))
            tok = tokenize(list(texts[start:stop]), max_len, tokenizer=tokenizer)
            txt = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
            if has_cross:
                out.append(model.match_score(img.tokens, txt.tokens, txt.mask).float().cpu())
            else:  # the diagonal of a batch x batch block: also right for token-wise similarity
                out.append(model.similarity(img, txt).diagonal().float().cpu())
            bar.update(stop - start)
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def evaluate_matching(
    model: torch.nn.Module,
    images: Images,
    texts: Sequence[str],
    labels: Sequence[int],
    cfg: EvalConfig | None = None,
    max_len: int = 64,
    device: torch.device | str | None = None,
    *,
    tokenizer: object | None = None,
    predictions_path: str | Path | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """AUC (and accuracy at 0.5 for match probabilities) of labelled (image, text) pairs."""
    cfg = cfg or EvalConfig()
    if len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} pairs")
    device = resolve_device(model, device)
    has_cross = getattr(model, "has_cross", False)
    start = time.perf_counter()
    with eval_mode(model):
        scores = pair_scores(model, images, texts, cfg.batch_size, max_len, device, tokenizer, progress)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        **matching_metrics(list(labels), scores.tolist(), threshold=0.5 if has_cross else None),
        "score": "match" if has_cross else "cosine",
        "seconds": {"score": seconds},
    }
    if predictions_path is not None:
        from r2d2.data.formats import write_jsonl

        rows = ({"index": i, "label": int(y), "score": float(s)} for i, (y, s) in enumerate(zip(labels, scores.tolist(), strict=True)))
        result["predictions"] = str(write_jsonl(Path(predictions_path), rows))
    return result


def find_image_root(jsonl: Path, image_path: str) -> Path:
    """The folder `image_path` is relative to: the JSONL's folder or the nearest ancestor holding it.

    ICM/IQM-style files name images relative to a dataset root that is not written anywhere;
    the demo corpus puts `eval/matching/valid.jsonl` two levels below its `images/` folder.
    """
    for folder in [jsonl.parent, *jsonl.parent.parents]:
        if (folder / image_path).is_file():
            return folder
    raise UserError(f"{jsonl}: cannot find image {image_path!r} under its folder or any parent; pass the image root")


def evaluate_icm(
    model: torch.nn.Module,
    jsonl: str | Path,
    root: str | Path | None = None,
    cfg: EvalConfig | None = None,
    max_len: int | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate an ICM/IQM JSONL (`text`, `image_path`, `label`); images are read per batch."""
    from r2d2.data.formats import read_icm_jsonl

    jsonl = Path(jsonl)
    try:
        rows = read_icm_jsonl(jsonl)
    except (OSError, ValueError) as err:
        raise UserError(str(err)) from None
    if not rows:
        raise UserError(f"{jsonl}: no pairs")
    base = Path(root) if root is not None else find_image_root(jsonl, rows[0]["image_path"])
    missing = [r["image_path"] for r in rows if not (base / r["image_path"]).is_file()]
    if missing:
        raise UserError(f"{jsonl}: {len(missing)} images missing under {base}, e.g. {missing[0]}")
    images = LazyImages([base / r["image_path"] for r in rows], model.cfg.vision.image_size)
    result = evaluate_matching(
        model, images, [r["text"] for r in rows], [int(r["label"]) for r in rows], cfg,
        max_len or model.cfg.text.max_len, device, **kwargs,
    )
    return {"dataset": {"path": str(jsonl), "image_root": str(base)}, **result}

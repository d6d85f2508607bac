"""The main job on the embedded demo corpus: demo-data -> pretrain -> finetune -> evaluate.

It ends with a table of the trained model against the same architecture untrained (same seed,
no steps), so a newcomer sees in minutes on a CPU that the pipeline really learns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from r2d2.config import Params
from r2d2.data.demo import generate_demo_corpus
from r2d2.data.pairs import load_cnclip_pairs
from r2d2.eval.matching import evaluate_icm
from r2d2.eval.retrieval import evaluate_cnclip_split
from r2d2.model.io import save_pretrained
from r2d2.model.r2d2 import R2D2Model, build_model
from r2d2.train.trainer import train

# The acceptance bar of the demo: text->image R@1 at least this many times chance and the untrained model.
MIN_X_CHANCE, MIN_X_UNTRAINED = 10.0, 5.0


@dataclass
class DemoResult:
    rows: dict[str, dict[str, float]]
    chance: dict[str, float]
    passed: bool
    report_path: Path


def evaluate_demo_model(model: R2D2Model, corpus: Path, params: Params, out: Path) -> dict[str, Any]:
    max_len = model.cfg.text.max_len
    retrieval = evaluate_cnclip_split(model, corpus / "eval" / "retrieval", "valid", params.evaluate, max_len, "cpu",
                                      predictions_dir=out / "predictions", progress=False)
    matching = evaluate_icm(model, corpus / "eval" / "matching" / "valid.jsonl", corpus, params.evaluate, max_len, "cpu",
                            progress=False)
    return {"retrieval": retrieval, "matching": matching}


def summarize(metrics: dict[str, Any]) -> dict[str, float]:
    r, m = metrics["retrieval"], metrics["matching"]
    return {"t2i_r1": r["t2i"]["r1"], "t2i_r10": r["t2i"]["r10"], "i2t_r1": r["i2t"]["r1"], "mr": r["mr"], "auc": m["auc"]}


def run_demo(params: Params, workdir: str | Path, progress: bool = True) -> DemoResult:
    work = Path(workdir)
    corpus = work / "corpus"
    info = generate_demo_corpus(corpus, params.demo_data)
    image_size, max_len = params.model.vision.image_size, params.model.text.max_len

    rows: dict[str, dict[str, float]] = {}
    torch.manual_seed(params.pretrain.seed)  # the untrained baseline is exactly the pre-training init
    untrained = build_model(params.model)
    save_pretrained(untrained, work / "untrained" / "model")
    rows["untrained"] = summarize(evaluate_demo_model(untrained, corpus, params, work / "untrained"))

    train_pairs = load_cnclip_pairs(corpus / "train", "train", image_size, max_len)
    pre = train(params.model, params.pretrain, train_pairs, work / "pretrain", progress=progress)
    fin = train(params.model, params.finetune, train_pairs, work / "finetune", init_from=pre.model_dir, progress=progress)

    from r2d2.model.io import load_pretrained

    for name, result in (("pretrained", pre), ("fine-tuned", fin)):
        model, _ = load_pretrained(result.model_dir)
        metrics = evaluate_demo_model(model, corpus, params, work / name)
        (work / f"metrics_{name}.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
        rows[name] = summarize(metrics)

    chance = {"t2i_r1": 100 * info["chance"]["retrieval_r1"], "t2i_r10": 100 * info["chance"]["retrieval_r10"],
              "i2t_r1": 100 * info["chance"]["retrieval_r1"], "mr": float("nan"), "auc": 50.0}
    best = rows["fine-tuned"]["t2i_r1"]
    passed = best >= MIN_X_CHANCE * chance["t2i_r1"] and best >= MIN_X_UNTRAINED * max(rows["untrained"]["t2i_r1"], 1e-9)
    report = work / "demo_report.json"
    report.write_text(json.dumps({"rows": rows, "chance": chance, "passed": passed,
                                  "gallery_images": info["counts"]["eval_images"]}, indent=2), encoding="utf-8")
    return DemoResult(rows=rows, chance=chance, passed=passed, report_path=report)


def format_demo_table(result: DemoResult) -> str:
    cols = [("t2i_r1", "T->I R@1"), ("t2i_r10", "T->I R@10"), ("i2t_r1", "I->T R@1"), ("mr", "MR"), ("auc", "match AUC")]
    names = [*result.rows, "chance"]
    lines = [f"{'model':<12}" + "".join(f"{title:>11}" for _, title in cols)]
    for name in names:
        row = result.chance if name == "chance" else result.rows[name]
        lines.append(f"{name:<12}" + "".join(f"{row[k]:>11.1f}" if row[k] == row[k] else f"{'-':>11}" for k, _ in cols))
    return "\n".join(lines)

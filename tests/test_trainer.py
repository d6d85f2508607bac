"""Trainer: a run interrupted after step k and resumed ends bit-identical to an uninterrupted run."""

from pathlib import Path

import pytest
import torch

from r2d2.config import DemoDataConfig, parse_params
from r2d2.data.demo import generate_demo_corpus
from r2d2.data.pairs import load_cnclip_pairs
from r2d2.train.checkpoint import load_checkpoint
from r2d2.train.schedule import warmup_cosine
from r2d2.train.trainer import train

PARAMS = {
    "pretrain": {
        "batch_size": 8, "max_steps": 6, "warmup_steps": 2, "log_every": 1, "ckpt_every": 100,
        "distill": {"queue_size": 20, "momentum": 0.9},
    },
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_corpus(out, DemoDataConfig(train_images=24, eval_images=10, seed=3))
    return out


def _state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(sorted((run / "checkpoints").glob("step_*.pt"))[-1])


def test_resume_is_bit_identical(corpus, tmp_path):
    params = parse_params(PARAMS)
    data = load_cnclip_pairs(corpus / "train", "train", 32, 32)
    full = train(params.model, params.pretrain, data, tmp_path / "full", progress=False)
    assert full.steps == 6 and not full.stopped_early

    part = train(params.model, params.pretrain, data, tmp_path / "part", stop_after=3, progress=False)
    assert part.stopped_early and (tmp_path / "part" / "checkpoints" / "latest").read_text() == "step_00000003.pt"
    resumed = train(params.model, params.pretrain, data, tmp_path / "part", resume="latest", progress=False)
    assert resumed.steps == 6

    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert a["step"] == b["step"] == 6
    for group in ("model", "teacher"):
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), f"{group}.{key} differs after resume"
    # the queue wrapped (K=20 < 6 steps x 8) and the ids it holds match too
    assert (a["teacher"]["queue.id_queue"] >= 0).all()
    terms = ("step", "loss", "gcpr", "fgr", "mlm", "tgd", "fgd", "lr")
    assert [[r[t] for t in terms] for r in a["history"]] == [[r[t] for t in terms] for r in b["history"]]
    # and a genuinely different run (another seed) does not match: the comparison can fail
    other = parse_params({**PARAMS, "pretrain": {**PARAMS["pretrain"], "seed": 1}})
    train(other.model, other.pretrain, data, tmp_path / "other", progress=False)
    c = _state(tmp_path / "other")
    assert not torch.equal(a["model"]["dual.vision_proj.weight"], c["model"]["dual.vision_proj.weight"])


def test_all_loss_terms_are_logged_and_finite(corpus, tmp_path):
    params = parse_params(PARAMS)
    data = load_cnclip_pairs(corpus / "train", "train", 32, 32)
    result = train(params.model, params.pretrain, data, tmp_path / "run", progress=False)
    row = result.history[-1]
    for term in ("gcpr", "fgr", "mlm", "tgd", "fgd", "loss", "samples_per_s", "lr"):
        assert term in row and torch.isfinite(torch.tensor(row[term])), term
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_switching_terms_off_removes_them(corpus, tmp_path):
    raw = {"pretrain": {**PARAMS["pretrain"], "max_steps": 2, "losses": {"mlm": 0, "tgd": 0, "fgd": 0}}}
    params = parse_params(raw)
    data = load_cnclip_pairs(corpus / "train", "train", 32, 32)
    row = train(params.model, params.pretrain, data, tmp_path / "run", progress=False).history[-1]
    assert {"gcpr", "fgr"} <= row.keys() and not {"mlm", "tgd", "fgd"} & row.keys()
    assert abs(row["loss"] - (row["gcpr"] + row["fgr"])) < 1e-4


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert abs(lrs[-1] - 0.1) < 1e-9


def test_fresh_start_into_a_used_run_folder_is_refused(corpus, tmp_path):
    from r2d2.errors import UserError

    params = parse_params({"pretrain": {**PARAMS["pretrain"], "max_steps": 2}})
    data = load_cnclip_pairs(corpus / "train", "train", 32, 32)
    train(params.model, params.pretrain, data, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="--resume latest"):
        train(params.model, params.pretrain, data, tmp_path / "run", progress=False)


def test_fgr_sample_temp_rescales_the_sampling_logits(corpus, monkeypatch):
    """FGR draws negatives from softmax(cos / fgr_sample_temp) when set, else softmax(cos / temp)."""
    import r2d2.train.objective as objective
    from r2d2.model.r2d2 import build_model

    data = load_cnclip_pairs(corpus / "train", "train", 32, 32)
    batch = data.batch(0, 0, 8, seed=0)
    seen = []
    real = objective.sample_hard_negatives
    monkeypatch.setattr(objective, "sample_hard_negatives", lambda s_t2i, s_i2t, *a, **k: seen.append(s_t2i) or real(s_t2i, s_i2t, *a, **k))
    torch.manual_seed(0)
    model = build_model(parse_params({}).model).eval()  # no dropout: the passes must agree
    for sample_temp in (None, 0.5):
        cfg = parse_params({"pretrain": {"losses": {"mlm": 0, "tgd": 0, "fgd": 0},
                                         "distill": {"fgr_sample_temp": sample_temp}}}).pretrain
        objective.R2D2Objective(model, cfg)(batch)
    with torch.no_grad():
        img, txt = model.encode_image(batch.images), model.encode_text(batch.input_ids, batch.attention_mask)
    cosine = txt.feat @ img.feat.t()
    temp = float(model.temp.detach())
    assert torch.allclose(seen[0], cosine / temp, atol=1e-3)
    assert torch.allclose(seen[1], cosine / 0.5, atol=1e-4)


def test_two_threads_give_the_same_bits(tmp_path):
    """Two CPU threads, demo-sized batches: two runs of the same config end bit-identical.

    With `deterministic: false` this test failed 3 times out of 3 (the losses differ in the 8th
    digit within 4 steps): some multi-threaded CPU kernels accumulate in a varying order.
    """
    corpus = tmp_path / "demo"
    generate_demo_corpus(corpus, DemoDataConfig(train_images=96, eval_images=10, seed=5))
    data = load_cnclip_pairs(corpus / "train", "train", 32, 32)
    params = parse_params({"pretrain": {**PARAMS["pretrain"], "batch_size": 96, "max_steps": 4, "deterministic": True,
                                        "distill": {"queue_size": 192}}})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for run in ("a", "b"):
            train(params.model, params.pretrain, data, tmp_path / run, progress=False)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

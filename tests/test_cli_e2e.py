"""End to end through the real `r2d2` entry point, on tiny data, as a user would run it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

R2D2 = [sys.executable, "-m", "r2d2.cli"]

PARAMS = """
model: {size: tiny}
pretrain: {batch_size: 16, max_steps: 4, warmup_steps: 1, log_every: 2, ckpt_every: 2, distill: {queue_size: 32}}
finetune: {task: retrieval, batch_size: 16, max_steps: 3, warmup_steps: 1, log_every: 1}
evaluate: {rerank_k: 4, batch_size: 32}
"""


def r2d2(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*R2D2, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"r2d2 {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    (work / "params.yaml").write_text(PARAMS)
    r2d2("demo-data", "--out", "corpus", "--seed", "5", "--train-images", "48", "--eval-images", "16", cwd=work)
    return work


def test_help_explains_every_command(workdir):
    out = r2d2("--help", cwd=workdir).stdout
    for command in ("demo", "demo-data", "pretrain", "finetune", "evaluate", "import-checkpoint"):
        assert command in out
    assert "--resume" in r2d2("pretrain", "--help", cwd=workdir).stdout


def test_pretrain_finetune_evaluate(workdir):
    r2d2("pretrain", "--data", "corpus/train", "--out", "runs/pre", "--no-progress", cwd=workdir)
    pre = workdir / "runs" / "pre"
    assert (pre / "model" / "model.safetensors").is_file()
    history = [json.loads(line) for line in (pre / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    assert {"gcpr", "fgr", "mlm", "tgd", "fgd"} <= history[-1].keys()

    r2d2("finetune", "--task", "retrieval", "--init", "runs/pre/model", "--data", "corpus/train", "--out", "runs/ft",
         "--no-progress", cwd=workdir)
    r2d2("finetune", "--task", "matching", "--init", "runs/pre/model", "--data", "corpus/eval/matching/train.jsonl",
         "--out", "runs/ftm", "--max-steps", "2", "--no-progress", cwd=workdir)
    ftm = [json.loads(line) for line in (workdir / "runs" / "ftm" / "history.jsonl").read_text().splitlines()]
    assert "match" in ftm[-1]

    r2d2("evaluate", "--model", "runs/ft/model", "--retrieval", "corpus/eval/retrieval:valid",
         "--matching", "corpus/eval/matching/valid.jsonl", "--out", "eval/metrics.json", cwd=workdir)
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    ret = metrics["retrieval"]
    assert ret["num_images"] == 16 and ret["t2i"]["num_queries"] == 16
    for direction in ("t2i", "i2t"):
        r = ret[direction]
        assert 0 <= r["r1"] <= r["r5"] <= r["r10"] <= 100
    assert abs(ret["mr"] - sum(ret[d][k] for d in ("t2i", "i2t") for k in ("r1", "r5", "r10")) / 6) < 1e-6
    assert 0 <= metrics["matching"]["auc"] <= 100
    preds = (workdir / "eval" / "predictions" / "t2i_predictions.jsonl").read_text().splitlines()
    assert len(preds) == 16 and len(json.loads(preds[0])["image_ids"]) == 10


def test_init_model_is_the_pretraining_starting_point(workdir):
    """The untrained baseline equals step 0 of pre-training (same seed, same init)."""
    from safetensors.torch import load_file

    r2d2("init-model", "--out", "runs/init", cwd=workdir)
    r2d2("pretrain", "--data", "corpus/train", "--out", "runs/zero", "--stop-after", "1", "--no-progress", cwd=workdir,
         check=False)
    import torch

    init = load_file(workdir / "runs" / "init" / "model.safetensors")
    step1 = torch.load(workdir / "runs" / "zero" / "checkpoints" / "step_00000001.pt", weights_only=True)["model"]
    frozen = "dual.visual_encoder.embeddings.position_embedding.weight"  # fixed sin-cos table: never trained
    assert torch.equal(init[frozen], step1[frozen])
    moved = "dual.text_proj.weight"  # one AdamW step at lr > 0 moves it, but only a little
    assert not torch.equal(init[moved], step1[moved])
    assert (init[moved] - step1[moved]).abs().max() < 0.01


def test_resume_latest_through_the_cli(workdir):
    stopped = r2d2("pretrain", "--data", "corpus/train", "--out", "runs/stop", "--stop-after", "2", "--no-progress",
                   cwd=workdir, check=False)
    assert stopped.returncode == 75, stopped.stderr  # unfinished: DVC/Prefect must not count it as done
    assert (workdir / "runs" / "stop" / "checkpoints" / "latest").read_text() == "step_00000002.pt"
    assert not (workdir / "runs" / "stop" / "model").exists()
    out = r2d2("pretrain", "--data", "corpus/train", "--out", "runs/stop", "--resume", "latest", "--no-progress", cwd=workdir)
    assert '"steps": 4' in out.stdout


def test_bad_params_fail_with_a_clear_message(workdir):
    (workdir / "bad.yaml").write_text("pretrain: {learning_rate: 0.1}\n")
    proc = r2d2("pretrain", "--data", "corpus/train", "--out", "runs/bad", "--params", "bad.yaml", cwd=workdir, check=False)
    assert proc.returncode == 2
    assert "pretrain.learning_rate: unknown key" in proc.stderr and "Traceback" not in proc.stderr
    proc = r2d2("pretrain", "--data", "nowhere", "--out", "runs/bad", cwd=workdir, check=False)
    assert proc.returncode == 2 and "--data nowhere" in proc.stderr

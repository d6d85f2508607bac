"""`mlflow models serve` on loopback answers with the same numbers as the local model.

A random tiny R2D2 is registered in an embedded SQLite store, made `champion`, and served
with `mlflow models serve -m models:/R2D2@champion --env-manager local`. A real HTTP POST to
/invocations must return, for a text row, an image row and a pair row, the embeddings and
match score the model folder gives when run directly with torch (the pyfunc adds base64
decoding, tokenization and batching: any mistake there shows up as a different number).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            raw = resp.read().decode()
            return resp.status, json.loads(raw) if raw.startswith("{") else raw
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    from r2d2.config import model_config
    from r2d2.model.io import save_pretrained
    from r2d2.model.r2d2 import build_model
    from r2d2.registry.promote import promote
    from r2d2.registry.register import register_model

    work = tmp_path_factory.mktemp("serve")
    torch.manual_seed(3)
    save_pretrained(build_model(model_config(size="tiny")), work / "model")
    metrics = work / "demo.json"
    metrics.write_text(json.dumps({"retrieval": {"t2i": {"r1": 10.0, "r5": 20.0, "r10": 30.0}, "mr": 20.0}}))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    rv = register_model(work / "model", [metrics], "R2D2", tracking_uri=uri, repo=work)
    assert promote("R2D2", tracking_uri=uri).champion_after == rv.version
    return {"work": work, "uri": uri, "version": rv.version}


def test_served_champion_matches_the_local_model(registered: dict) -> None:
    import torch

    from r2d2.data.formats import decode_image
    from r2d2.model.io import load_pretrained
    from r2d2.registry.pyfunc import example_png
    from r2d2.services.base import executable
    from r2d2.tokenizer import load_tokenizer, tokenize

    work, port = registered["work"], _free_port()
    # `mlflow models serve` execs `uvicorn` through bash: the venv's bin/ must be on PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": registered["uri"], "NO_PROXY": "127.0.0.1,localhost",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [executable("mlflow"), "models", "serve", "-m", "models:/R2D2@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        while not (_alive(port) and _http(f"http://127.0.0.1:{port}/ping", timeout=2)[0] == 200):
            assert proc.poll() is None, (work / "serve.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 90, "server not healthy in 90 s:\n" + (work / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        ready_s = time.monotonic() - t0

        red, blue = example_png(32), example_png(32, (20, 40, 200))
        urlsafe = base64.urlsafe_b64encode(base64.b64decode(blue)).decode().rstrip("=")
        records = [
            {"text": "一个红色的正方形"},
            {"image": red},
            {"text": "白色背景上的蓝色正方形", "image": urlsafe},  # URL-safe, unpadded: Chinese-CLIP's TSV style
        ]
        status, body = _http(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": records})
        assert status == 200, body
        preds = body["predictions"]
        assert [p["kind"] for p in preds] == ["text", "image", "pair"]
        assert preds[0]["match_score"] is None and preds[2]["embedding"] is None

        model, cfg = load_pretrained(work / "model")
        tok = tokenize(["一个红色的正方形", "白色背景上的蓝色正方形"], cfg.text.max_len, load_tokenizer(str(work / "model/vocab.txt")))
        assert (tok["input_ids"] != 100).all()  # [UNK] = 100: the vocab really tokenized Chinese
        imgs = torch.stack([torch.from_numpy(decode_image(base64.b64decode(b), 32)).permute(2, 0, 1) for b in (red, blue)])
        with torch.inference_mode():
            txt = model.encode_text(tok["input_ids"], tok["attention_mask"])
            img = model.encode_image(imgs)
            score = model.match_score(img.tokens[1:], txt.tokens[1:], txt.mask[1:])
        text_emb, image_emb = torch.tensor(preds[0]["embedding"]), torch.tensor(preds[1]["embedding"])
        assert text_emb.shape == (cfg.embed_dim,) and abs(float(text_emb.norm()) - 1) < 1e-5
        assert torch.allclose(text_emb, txt.feat[0], atol=1e-5)
        assert torch.allclose(image_emb, img.feat[0], atol=1e-5)
        assert abs(preds[2]["match_score"] - float(score[0])) < 1e-5
        assert abs(preds[2]["similarity"] - float(img.feat[1] @ txt.feat[1])) < 1e-5
        assert not torch.allclose(text_emb, txt.feat[1], atol=1e-3)  # different inputs give different answers

        status, body = _http(f"http://127.0.0.1:{port}/invocations", {"dataframe_records": [{"image": "not base64!"}]})
        assert status == 400 and "base64" in body, body
        total_s = time.monotonic() - t0
        print(f"serve: healthy after {ready_s:.1f}s, test done after {total_s:.1f}s")
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its uvicorn worker included), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _alive(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0



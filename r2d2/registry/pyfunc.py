"""The registered model: an MLflow pyfunc over our model folder (safetensors + config + vocab).

Why a pyfunc and not `mlflow.pytorch`: the PyTorch flavour pickles the module or exports a
single-input graph, while R2D2 has three entry points (text, image, pair) and a tokenizer;
a pyfunc keeps the safetensors folder as is (no pickle of weights) and gives `mlflow models
serve` one JSON contract for all three.

Input: a DataFrame with columns `text` and/or `image` (optional each; null or "" = absent).
`image` is a base64 PNG/JPEG (standard or URL-safe alphabet, `data:` URLs accepted; raw bytes
too when called in Python).

Output: one row per input row, columns
    kind         "text" | "image" | "pair"
    embedding    list[float] (embed_dim, L2-normalised) for text-only and image-only rows; null for pairs
    match_score  pairs only: P(match), the mean of the two cross encoders' matching heads
                 (PRD2 has no cross encoders: the similarity below)
    similarity   pairs only: the contrastive score the model ranks with (cosine of the two
                 embeddings, or the FILIP token-wise score for token-wise models)

Loading needs the `r2d2` package importable (`mlflow models serve --env-manager local` from
this project's environment); the wrapper is pickled by reference, never the weights.
"""

from __future__ import annotations

import base64
import binascii
import io
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

ARTIFACT = "model"  # key of the model folder in context.artifacts
BATCH = 64
RUNTIME_PACKAGES = ("torch", "transformers", "safetensors", "tokenizers", "pillow", "numpy", "pandas", "pydantic",
                    "pyyaml", "mlflow")


def decode_b64_image(value: str | bytes) -> bytes:
    """base64 text (standard/URL-safe, padded or not, optional `data:...;base64,` prefix) -> bytes."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = value.strip()
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and np.isnan(value):
        return False
    return not (isinstance(value, str) and not value.strip())


class R2D2PyFunc(mlflow.pyfunc.PythonModel):
    """Texts -> embeddings, images -> embeddings, (image, text) pairs -> match scores."""

    def load_context(self, context: Any) -> None:
        import torch

        from r2d2.model.io import VOCAB, load_pretrained
        from r2d2.tokenizer import load_tokenizer

        folder = Path(context.artifacts[ARTIFACT])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.cfg = load_pretrained(folder, self.device)
        vocab = folder / VOCAB
        self.tokenizer = load_tokenizer(str(vocab)) if vocab.is_file() else load_tokenizer()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        n = len(df)
        texts = [v if _present(v) else None for v in (df["text"] if "text" in df else [None] * n)]
        raw_images = [v if _present(v) else None for v in (df["image"] if "image" in df else [None] * n)]
        images: list[torch.Tensor | None] = []
        for i, v in enumerate(raw_images):
            try:
                images.append(None if v is None else self._image(v))
            except (ValueError, binascii.Error, OSError) as err:
                raise MlflowException(f"row {i}: `image` is not a base64 PNG/JPEG ({err})", INVALID_PARAMETER_VALUE) from None
        empty = [i for i in range(n) if texts[i] is None and images[i] is None]
        if empty:
            raise MlflowException(f"rows {empty[:10]} have neither `text` nor `image`", INVALID_PARAMETER_VALUE)

        out: dict[str, list[Any]] = {"kind": [None] * n, "embedding": [None] * n,
                                     "match_score": [None] * n, "similarity": [None] * n}
        only_text = [i for i in range(n) if texts[i] is not None and images[i] is None]
        only_image = [i for i in range(n) if texts[i] is None and images[i] is not None]
        pairs = [i for i in range(n) if texts[i] is not None and images[i] is not None]
        with torch.inference_mode():
            for rows in _chunks(only_text):
                feat = self._encode_text([texts[i] for i in rows]).feat
                self._fill(out, rows, "text", feat)
            for rows in _chunks(only_image):
                feat = self.model.encode_image(torch.stack([images[i] for i in rows]).to(self.device)).feat
                self._fill(out, rows, "image", feat)
            for rows in _chunks(pairs):
                img = self.model.encode_image(torch.stack([images[i] for i in rows]).to(self.device))
                txt = self._encode_text([texts[i] for i in rows])
                sim = self.model.similarity(img, txt).diagonal().float().cpu().tolist()
                score = (self.model.match_score(img.tokens, txt.tokens, txt.mask).float().cpu().tolist()
                         if self.model.has_cross else sim)
                for j, i in enumerate(rows):
                    out["kind"][i], out["match_score"][i], out["similarity"][i] = "pair", score[j], sim[j]
        # object columns keep None as None, so JSON answers carry `null`, not NaN
        return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in out.items()})

    # ------------------------------------------------------------------ helpers

    def _image(self, value: str | bytes) -> Any:
        import torch

        from r2d2.data.formats import decode_image

        array = decode_image(decode_b64_image(value), self.cfg.vision.image_size)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def _encode_text(self, texts: list[str]) -> Any:
        from r2d2.tokenizer import tokenize

        tok = tokenize(texts, self.cfg.text.max_len, self.tokenizer)
        return self.model.encode_text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))

    @staticmethod
    def _fill(out: dict[str, list[Any]], rows: list[int], kind: str, feat: Any) -> None:
        values = feat.float().cpu().numpy()
        for j, i in enumerate(rows):
            out["kind"][i] = kind
            out["embedding"][i] = values[j].tolist()


def _chunks(rows: list[int]) -> list[list[int]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec("string", "image", required=False)])
    outputs = Schema([
        ColSpec("string", "kind"),
        ColSpec(Array("double"), "embedding", required=False),
        ColSpec("double", "match_score", required=False),
        ColSpec("double", "similarity", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_png(size: int = 32, color: tuple[int, int, int] = (220, 30, 30)) -> str:
    """A small red square on white, base64 PNG: the input example and the tests' image."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).rectangle([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill=color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def input_example(image_size: int = 32) -> pd.DataFrame:
    """One row of each kind: text only, image only, a pair."""
    png = example_png(image_size)
    return pd.DataFrame({"text": ["一个红色的正方形", None, "白色背景上的红色正方形"], "image": [None, png, png]})


def pip_requirements() -> list[str]:
    """Exact versions of what `predict` imports (explicit: MLflow's inference takes ~7 s more).

    Local version labels (`+cpu`) are dropped so the list stays installable from an index;
    the `r2d2` package itself is not on any index and must be installed alongside.
    """
    reqs = []
    for dist in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return reqs

"""Model shapes for every size (base/large on the meta device: no memory), and the Wukong options."""

import pytest
import torch

from r2d2.config import model_config
from r2d2.model.encoders import sincos_2d
from r2d2.model.r2d2 import build_model, token_wise_similarity
from r2d2.tokenizer import tokenize


@pytest.mark.parametrize(
    ("size", "tokens", "vision_width", "params_m"),
    [("base", 197, 768, (330, 345)), ("large", 257, 1024, (550, 565))],
)
def test_sizes_build_on_meta_with_the_published_shapes(size, tokens, vision_width, params_m):
    model = build_model(model_config(size=size), device="meta")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert params_m[0] < n < params_m[1], n
    images = torch.empty(2, 3, 224, 224, device="meta")
    ids = torch.zeros(2, 64, dtype=torch.long, device="meta")
    # no mask: transformers inspects mask values with .item(), which meta tensors cannot do
    img, txt = model.encode_image(images), model.encode_text(ids)
    assert img.tokens.shape == (2, tokens, vision_width) and img.feat.shape == (2, 768)
    assert txt.tokens.shape == (2, 64, 768) and txt.feat.shape == (2, 768)
    # text->image cross-attention reads image states as wide as the vision tower (1024 for ViT-L)
    key = model.text_joint_layer.encoder.layer[0].crossattention.self.key
    assert key.in_features == vision_width
    assert model.img_joint_layer.encoder.layer[0].crossattention.self.key.in_features == 768
    assert model.img_joint_proj.in_features == vision_width and model.img_joint_proj.out_features == 768
    assert len(model.text_joint_layer.encoder.layer) == 6 and len(model.img_joint_layer.encoder.layer) == 6
    assert model.itm_head.out_features == model.itm_head_i.out_features == 2


def test_tiny_forward_shapes_and_match_score_range():
    torch.manual_seed(0)
    model = build_model(model_config(size="tiny")).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    enc = tokenize(["红色圆形", "蓝色背景上的三个小正方形", "绿色三角"], 32)
    img, txt = model.encode_image(images), model.encode_text(**enc)
    assert torch.allclose(img.feat.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.feat.norm(dim=-1), torch.ones(3))
    score = model.match_score(img.tokens, txt.tokens, txt.mask)
    assert score.shape == (3,) and ((score > 0) & (score < 1)).all()
    select = enc["input_ids"] > 103
    assert model.mlm_logits(img.tokens, txt.tokens, txt.mask, select=select).shape == (int(select.sum()), 21128)
    # the MLM decoder is tied to the input embeddings
    assert model.mlm_head.predictions.decoder.weight is model.dual.text_encoder.embeddings.word_embeddings.weight


def test_prd2_has_no_cross_encoders():
    model = build_model(model_config({"prd2": True}))
    assert not hasattr(model, "text_joint_layer") and not model.has_cross
    with pytest.raises(RuntimeError, match="PRD2"):
        model.match_logits(torch.zeros(1, 2, 64), torch.zeros(1, 2, 64), torch.ones(1, 2))


def test_wukong_options():
    torch.manual_seed(0)
    cfg = model_config({"locked_image": True, "similarity": "token_wise", "token_reduction": 12})
    model = build_model(cfg)
    assert not any(p.requires_grad for p in model.dual.visual_encoder.parameters())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    enc = tokenize(["红色圆形", "蓝色背景上的三个小正方形"], 32)
    img, txt = model.encode_image(images), model.encode_text(**enc)
    assert img.tokens.shape[1] == 1 + 12  # CLS + 12 learned tokens
    sim = model.similarity(img, txt)
    ref = torch.empty(2, 2)
    for a in range(2):
        for b in range(2):
            n = int(enc["attention_mask"][b].sum())
            s = img.token_feats[a] @ txt.token_feats[b, :n].t()  # [N, n]
            ref[a, b] = (s.max(1).values.mean() + s.max(0).values.mean()) / 2
    assert torch.allclose(sim, ref, atol=1e-5)
    # padding never wins the max
    assert torch.allclose(token_wise_similarity(img.token_feats, txt.token_feats, txt.mask), sim)


def test_sincos_position_table_is_fixed_and_distinct():
    table = sincos_2d(4, 64)
    assert table.shape == (16, 64)
    assert torch.cdist(table, table).add(torch.eye(16) * 10).min() > 0.1
    model = build_model(model_config(size="tiny"))
    emb = model.dual.visual_encoder.embeddings.position_embedding.weight
    assert not emb.requires_grad and torch.allclose(emb[1:], sincos_2d(4, 64))


def test_cross_attention_ignores_text_padding():
    """Padding must not change the image->text match score (a transformers 5.23 bug is patched)."""
    torch.manual_seed(0)
    model = build_model(model_config(size="tiny")).eval()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    short = tokenize(["红色圆形"], 32)
    padded = {k: torch.nn.functional.pad(v, (0, 5)) for k, v in short.items()}
    padded["input_ids"][0, -5:] = 2000  # garbage behind the mask must not matter either
    img = model.encode_image(images)
    a, b = model.encode_text(**short), model.encode_text(**padded)
    la = model.match_logits(img.tokens, a.tokens, a.mask)
    lb = model.match_logits(img.tokens, b.tokens, b.mask)
    assert torch.allclose(la[0], lb[0], atol=1e-5) and torch.allclose(la[1], lb[1], atol=1e-5)

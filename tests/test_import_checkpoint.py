"""`r2d2 import-checkpoint`: official R2D2/PRD2 state dicts, written here from the official naming.

The official layout below is typed out from the released code (yuxie11/R2D2: models/r2d2.py, prd2.py,
bert.py; transformers 4.15 `CLIPModel.vision_model` and `BertModel`), independently of the table in
`r2d2.model.official`, and the forward references are computed by hand from the official tensors.
"""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from r2d2.cli import main
from r2d2.config import ModelConfig, model_config
from r2d2.errors import UserError
from r2d2.model import official
from r2d2.model.io import load_pretrained
from r2d2.model.r2d2 import PIXEL_MEAN, PIXEL_STD, build_model

# Small, with every width different so a transposed or swapped tensor cannot go unnoticed.
SMALL = dict(size="tiny", embed_dim=24, cross=dict(layers=2, heads=2, mlp_dim=40))
SMALL["vision"] = dict(image_size=16, patch_size=8, width=48, layers=2, heads=4, mlp_dim=96)
SMALL["text"] = dict(vocab_size=128, width=32, layers=3, heads=2, mlp_dim=64, max_len=8)


def small_cfg(prd2: bool = False) -> ModelConfig:
    return ModelConfig.model_validate({**SMALL, "prd2": prd2})


def official_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The official state-dict keys and shapes for config `c`, spelled as the official modules name them."""
    v, t, x = c.vision, c.text, c.cross
    wv, wt, npos = v.width, t.width, (v.image_size // v.patch_size) ** 2 + 1
    k: dict[str, tuple[int, ...]] = {}

    def lin(name, o, i):
        k[name + ".weight"], k[name + ".bias"] = (o, i), (o,)

    def ln(name, w):
        k[name + ".weight"], k[name + ".bias"] = (w,), (w,)

    def bert_layers(pre, n, mlp, cross_w=None):
        for i in range(n):
            p = f"{pre}.encoder.layer.{i}"
            for att, kv in [("attention", wt)] + ([("crossattention", cross_w)] if cross_w else []):
                lin(f"{p}.{att}.self.query", wt, wt)
                lin(f"{p}.{att}.self.key", wt, kv)
                lin(f"{p}.{att}.self.value", wt, kv)
                lin(f"{p}.{att}.output.dense", wt, wt)
                ln(f"{p}.{att}.output.LayerNorm", wt)
            lin(f"{p}.intermediate.dense", mlp, wt)
            lin(f"{p}.output.dense", wt, mlp)
            ln(f"{p}.output.LayerNorm", wt)

    # transformers 4.15 CLIPVisionTransformer (CLIPModel(config).vision_model)
    k["visual_encoder.embeddings.class_embedding"] = (wv,)
    k["visual_encoder.embeddings.patch_embedding.weight"] = (wv, 3, v.patch_size, v.patch_size)
    k["visual_encoder.embeddings.position_embedding.weight"] = (npos, wv)
    k["visual_encoder.embeddings.position_ids"] = (1, npos)
    ln("visual_encoder.pre_layrnorm", wv)
    for i in range(v.layers):
        p = f"visual_encoder.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            lin(f"{p}.self_attn.{proj}", wv, wv)
        ln(f"{p}.layer_norm1", wv)
        lin(f"{p}.mlp.fc1", v.mlp_dim, wv)
        lin(f"{p}.mlp.fc2", wv, v.mlp_dim)
        ln(f"{p}.layer_norm2", wv)
    ln("visual_encoder.post_layernorm", wv)
    # transformers 4.15 BertModel(config): token types, persistent position_ids, pooler
    k["text_encoder.embeddings.position_ids"] = (1, 512)
    k["text_encoder.embeddings.word_embeddings.weight"] = (t.vocab_size, wt)
    k["text_encoder.embeddings.position_embeddings.weight"] = (512, wt)
    k["text_encoder.embeddings.token_type_embeddings.weight"] = (2, wt)
    ln("text_encoder.embeddings.LayerNorm", wt)
    bert_layers("text_encoder", t.layers, t.mlp_dim)
    lin("text_encoder.pooler.dense", wt, wt)
    lin("vision_proj", c.embed_dim, wv)
    lin("text_proj", c.embed_dim, wt)
    k["temp"] = ()
    if not c.prd2:  # models/bert.py BertModel(add_pooling_layer=False), encoder_width = key/value width
        for name, enc_w in (("text_joint_layer", wv), ("img_joint_layer", wt)):
            k[f"{name}.embeddings.position_ids"] = (1, 512)
            k[f"{name}.embeddings.word_embeddings.weight"] = (t.vocab_size, wt)
            k[f"{name}.embeddings.position_embeddings.weight"] = (512, wt)
            ln(f"{name}.embeddings.LayerNorm", wt)
            bert_layers(name, x.layers, x.mlp_dim, cross_w=enc_w)
        lin("img_joint_proj", wt, wv)
        lin("itm_head", 2, wt)
        lin("itm_head_i", 2, wt)
    return k


def official_state_dict(c: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values (LayerNorm gains near 1), position_ids = arange as transformers 4.15 saved them."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: 0.1 * torch.randn(s, generator=g) for k, s in official_shapes(c).items()}
    for key, shape in official_shapes(c).items():
        if key.endswith("position_ids"):
            sd[key] = torch.arange(shape[1])[None]
        elif "norm" in key.lower() and key.endswith("weight"):
            sd[key] += 1
    return sd | {"temp": torch.tensor(0.05)}


def our_key(key: str) -> str | None:
    """The mapping, restated for the test: the dual encoder moved under `dual.`; pooler/buffers unused."""
    if key.endswith(("position_ids", "token_type_ids")) or key.startswith("text_encoder.pooler."):
        return None
    dual = ("visual_encoder.", "text_encoder.", "vision_proj.", "text_proj.")
    return "dual." + key if key.startswith(dual) or key == "temp" else key


@pytest.fixture(scope="module")
def imported():
    c, sd = small_cfg(), official_state_dict(small_cfg())
    return sd, official.import_state_dict(dict(sd), c), c


def test_every_tensor_equals_its_official_source(imported):
    sd, model, _ = imported
    ours = model.state_dict()
    covered = set()
    for key, value in sd.items():
        target = our_key(key)
        if target is not None:
            assert torch.equal(ours[target], value), key
            covered.add(target)
    assert set(ours) - covered == {k for k in ours if k.startswith("mlm_head.")}
    # the MLM decoder is tied to the imported word embeddings; the rest of the head is fresh
    assert torch.equal(ours["mlm_head.predictions.decoder.weight"], sd["text_encoder.embeddings.word_embeddings.weight"])


# ---- hand-written forward of the official modules, from the official tensors --------------------------


def _attend(sd, p, names, x, ctx, heads, add_mask):
    q, k, v = (F.linear(a, sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"]) for n, a in zip(names, (x, ctx, ctx), strict=True))
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    att = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5 + add_mask
    return (att.softmax(-1) @ v).transpose(1, 2).flatten(2)


def clip_vision_ref(sd, c, pixels):
    """CLIPVisionTransformer.last_hidden_state (pre-LN blocks, quick_gelu, no post_layernorm)."""
    p, w = "visual_encoder", c.vision.width
    ln = lambda x, n: F.layer_norm(x, (w,), sd[f"{n}.weight"], sd[f"{n}.bias"], eps=1e-5)  # noqa: E731
    x = F.conv2d(pixels, sd[f"{p}.embeddings.patch_embedding.weight"], stride=c.vision.patch_size).flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{p}.embeddings.class_embedding"].expand(len(x), 1, -1), x], 1)
    x = ln(x + sd[f"{p}.embeddings.position_embedding.weight"], f"{p}.pre_layrnorm")
    for i in range(c.vision.layers):
        lp = f"{p}.encoder.layers.{i}"
        h = ln(x, f"{lp}.layer_norm1")
        a = _attend(sd, f"{lp}.self_attn", ("q_proj", "k_proj", "v_proj"), h, h, c.vision.heads, 0.0)
        x = x + F.linear(a, sd[f"{lp}.self_attn.out_proj.weight"], sd[f"{lp}.self_attn.out_proj.bias"])
        h = F.linear(ln(x, f"{lp}.layer_norm2"), sd[f"{lp}.mlp.fc1.weight"], sd[f"{lp}.mlp.fc1.bias"])
        x = x + F.linear(h * torch.sigmoid(1.702 * h), sd[f"{lp}.mlp.fc2.weight"], sd[f"{lp}.mlp.fc2.bias"])
    return x


def bert_ref(sd, p, x, mask, layers, heads, enc=None, enc_mask=None):
    """BERT post-LN layers (models/bert.py / transformers BertLayer), masks as (1 - m) * -10000."""
    w = x.shape[-1]

    def dense_ln(h, res, n):
        h = F.linear(h, sd[f"{n}.dense.weight"], sd[f"{n}.dense.bias"])
        return F.layer_norm(h + res, (w,), sd[f"{n}.LayerNorm.weight"], sd[f"{n}.LayerNorm.bias"], eps=1e-12)

    add = ((1.0 - mask.float()) * -10000.0)[:, None, None, :]
    for i in range(layers):
        lp = f"{p}.encoder.layer.{i}"
        names = ("query", "key", "value")
        x = dense_ln(_attend(sd, f"{lp}.attention.self", names, x, x, heads, add), x, f"{lp}.attention.output")
        if enc is not None:
            enc_add = ((1.0 - enc_mask.float()) * -10000.0)[:, None, None, :]
            a = _attend(sd, f"{lp}.crossattention.self", names, x, enc, heads, enc_add)
            x = dense_ln(a, x, f"{lp}.crossattention.output")
        h = F.gelu(F.linear(x, sd[f"{lp}.intermediate.dense.weight"], sd[f"{lp}.intermediate.dense.bias"]))
        x = dense_ln(h, x, f"{lp}.output")
    return x


def text_ref(sd, c, ids, mask):
    e = "text_encoder.embeddings"
    x = sd[f"{e}.word_embeddings.weight"][ids] + sd[f"{e}.position_embeddings.weight"][: ids.shape[1]]
    x = x + sd[f"{e}.token_type_embeddings.weight"][0]
    x = F.layer_norm(x, (c.text.width,), sd[f"{e}.LayerNorm.weight"], sd[f"{e}.LayerNorm.bias"], eps=1e-12)
    return bert_ref(sd, "text_encoder", x, mask, c.text.layers, c.text.heads)


@pytest.fixture(scope="module")
def inputs(imported):
    _, _, c = imported
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, c.vision.image_size, c.vision.image_size, generator=g)
    ids = torch.randint(1, c.text.vocab_size, (3, 6), generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    pixels = (images - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[:, None, None]
    return images, pixels, ids, mask


def test_towers_match_hand_computed_official_forward(imported, inputs):
    sd, model, c = imported
    _, pixels, ids, mask = inputs
    with torch.no_grad():
        vis = model.dual.visual_encoder(pixel_values=pixels).last_hidden_state
        txt = model.encode_text(ids, mask)
    torch.testing.assert_close(vis, clip_vision_ref(sd, c, pixels), rtol=1e-4, atol=1e-5)
    ref_txt = text_ref(sd, c, ids, mask)
    torch.testing.assert_close(txt.tokens, ref_txt, rtol=1e-4, atol=1e-5)
    ref_feat = F.normalize(F.linear(ref_txt[:, 0], sd["text_proj.weight"], sd["text_proj.bias"]), dim=-1)
    torch.testing.assert_close(txt.feat, ref_feat, rtol=1e-4, atol=1e-5)


def _official_match(sd, c, img, txt, mask):
    """P(match) of the official cross encoders (r2d2_inference_demo.py), from the official tensors."""
    ones = torch.ones(img.shape[:2], dtype=torch.long)
    t2i = bert_ref(sd, "text_joint_layer", txt, mask, c.cross.layers, c.cross.heads, enc=img, enc_mask=ones)
    img_in = F.linear(img, sd["img_joint_proj.weight"], sd["img_joint_proj.bias"])
    i2t = bert_ref(sd, "img_joint_layer", img_in, ones, c.cross.layers, c.cross.heads, enc=txt, enc_mask=mask)
    p_t = F.linear(t2i[:, 0], sd["itm_head.weight"], sd["itm_head.bias"]).softmax(-1)[:, 1]
    p_i = F.linear(i2t[:, 0], sd["itm_head_i.weight"], sd["itm_head_i.bias"]).softmax(-1)[:, 1]
    return p_t, p_i


def test_match_heads_match_hand_computed_official_cross_encoders(imported, inputs):
    sd, model, c = imported
    _, pixels, ids, mask = inputs
    img, txt = clip_vision_ref(sd, c, pixels), text_ref(sd, c, ids, mask)
    p_t, p_i = _official_match(sd, c, img, txt, mask)
    with torch.no_grad():
        logits_t, _ = model.match_logits(img, txt, mask)
        full = torch.ones_like(mask)
        ref_t, ref_i = _official_match(sd, c, img, txt, full)
        score = model.match_score(img, txt, full)
    # text->image with padded text; then both directions and the averaged score without padding
    torch.testing.assert_close(logits_t.softmax(-1)[:, 1], p_t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(score, (ref_t + ref_i) / 2, rtol=1e-4, atol=1e-5)


def test_image_to_text_cross_encoder_masks_text_padding(imported, inputs):
    sd, model, c = imported
    _, pixels, ids, mask = inputs
    img, txt = clip_vision_ref(sd, c, pixels), text_ref(sd, c, ids, mask)
    _, p_i = _official_match(sd, c, img, txt, mask)
    with torch.no_grad():
        _, logits_i = model.match_logits(img, txt, mask)
    torch.testing.assert_close(logits_i.softmax(-1)[:, 1], p_i, rtol=1e-4, atol=1e-5)


def test_image_feature_matches_official(imported, inputs):
    sd, model, c = imported
    images, pixels, _, _ = inputs
    ref = clip_vision_ref(sd, c, pixels)
    ref_feat = F.normalize(F.linear(ref[:, 0], sd["vision_proj.weight"], sd["vision_proj.bias"]), dim=-1)
    with torch.no_grad():
        enc = model.encode_image(images)
    torch.testing.assert_close(enc.tokens, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(enc.feat, ref_feat, rtol=1e-4, atol=1e-5)


# ---- refusals ------------------------------------------------------------------------------------------

KEY_DROP = "text_encoder.encoder.layer.1.attention.self.key.weight"
KEY_NEW = "visual_encoder.encoder.layers.0.self_attn.qkv.weight"
KEY_SHAPE = "text_joint_layer.encoder.layer.0.crossattention.self.key.weight"


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("missing", ["missing (1):", KEY_DROP]),
        ("unexpected", ["unexpected (1):", KEY_NEW]),
        ("mis-shaped", ["mis-shaped (1):", f"{KEY_SHAPE}: checkpoint [48, 32], expected [32, 48]"]),
        ("bad values", ["bad values (1):", "text_joint_layer.embeddings.position_ids"]),
        ("all", [KEY_DROP, KEY_NEW, KEY_SHAPE]),
    ],
)
def test_refuses_with_the_key_named(kind, needles):
    sd = official_state_dict(small_cfg())
    if kind in ("missing", "all"):
        del sd[KEY_DROP]
    if kind in ("unexpected", "all"):
        sd[KEY_NEW] = torch.zeros(144, 48)
    if kind in ("mis-shaped", "all"):
        sd[KEY_SHAPE] = sd[KEY_SHAPE].t()
    if kind == "bad values":
        sd["text_joint_layer.embeddings.position_ids"] = torch.arange(1, 513)[None]
    with pytest.raises(UserError) as err:
        official.import_state_dict(sd, small_cfg())
    for needle in needles:
        assert needle in str(err.value)
    assert "nothing was imported" in str(err.value)


class Evil:
    """Unpickling this would create a directory: the stand-in for arbitrary code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("raw_pickle", [False, True])
def test_arbitrary_objects_are_never_unpickled(tmp_path, raw_pickle):
    target, path = tmp_path / "pwned", tmp_path / "evil.pth"
    obj = {"model": {"temp": torch.tensor(0.07)}, "args": Evil(str(target))}
    if raw_pickle:  # plain pickle, protocol 2 like torch's legacy format (without a tensor, refused first)
        path.write_bytes(pickle.dumps({"args": obj["args"]}, protocol=2))
    else:
        torch.save(obj, path)
    with pytest.raises(UserError, match=r"refusing to load.*mkdir.*restricted loading"):
        official.read_checkpoint(path)
    assert not target.exists()
    assert main(["import-checkpoint", str(path), "--arch", "base", "--out", str(tmp_path / "o")]) == 2
    assert not target.exists() and not (tmp_path / "o").exists()


def test_prd2_imports_a_dual_encoder_checkpoint_and_flags_mixups():
    dual = official_state_dict(small_cfg(prd2=True))
    model = official.import_state_dict(dict(dual), small_cfg(prd2=True))
    assert not hasattr(model, "text_joint_layer")
    ours = model.state_dict()
    assert set(ours) == {our_key(k) for k in dual} - {None}
    assert all(torch.equal(ours[our_key(k)], v) for k, v in dual.items() if our_key(k))
    with pytest.raises(UserError, match="add --prd2") as err:
        official.import_state_dict(dict(dual), small_cfg(prd2=False))
    assert "itm_head_i.weight [2, 32]" in str(err.value)
    with pytest.raises(UserError, match="drop --prd2") as err:
        official.import_state_dict(official_state_dict(small_cfg()), small_cfg(prd2=True))
    assert "img_joint_proj.weight [32, 48]" in str(err.value)


def test_wrapper_forms_and_optional_keys(tmp_path):
    sd = official_state_dict(small_cfg())
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "config": {"lr": 1e-5}}, tmp_path / "a.pth")
    assert official.read_checkpoint(tmp_path / "a.pth").keys() == sd.keys()
    lean = {k: v for k, v in sd.items() if our_key(k) is not None}  # no pooler, no index buffers (v5-style)
    torch.save(lean, tmp_path / "b.pth")
    model = official.import_state_dict(official.read_checkpoint(tmp_path / "b.pth"), small_cfg())
    assert torch.equal(model.state_dict()["dual.temp"], sd["temp"])
    torch.save({"optimizer": {}}, tmp_path / "c.pth")
    with pytest.raises(UserError, match=r"checkpoint\['model'\]"):
        official.read_checkpoint(tmp_path / "c.pth")


def test_cli_round_trip(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(official, "arch_config", lambda arch, prd2: small_cfg(prd2))
    sd = official_state_dict(small_cfg())
    torch.save({"model": sd}, tmp_path / "r2d2.pth")
    out = tmp_path / "model"
    assert main(["import-checkpoint", str(tmp_path / "r2d2.pth"), "--arch", "large", "--out", str(out)]) == 0
    assert "text_encoder.pooler.dense.weight" in capsys.readouterr().out
    model, cfg = load_pretrained(out)
    assert cfg == small_cfg()
    ours = model.state_dict()
    assert all(torch.equal(ours[our_key(k)], v) for k, v in sd.items() if our_key(k))
    meta = json.loads((out / "config.json").read_text())["extra"]
    assert meta["imported_from"]["arch"] == "large" and len(meta["imported_from"]["sha256"]) == 64
    assert set(meta["official_keys_not_used"]) == {k for k in sd if our_key(k) is None}
    assert meta["fresh"]["keys"] and all(k.startswith("mlm_head.") for k in meta["fresh"]["keys"])
    sd.pop(KEY_DROP)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    argv = ["import-checkpoint", str(tmp_path / "bad.pth"), "--arch", "large", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert KEY_DROP in capsys.readouterr().err and not (tmp_path / "x").exists()


# ---- the real sizes, by shapes only (meta tensors, nothing allocated) -----------------------------------


@pytest.mark.parametrize("arch", ["base", "large"])
@pytest.mark.parametrize("prd2", [False, True])
def test_real_sizes_key_and_shape_table(arch, prd2):
    cfg = model_config({"prd2": prd2}, size=arch)
    shapes = official_shapes(cfg)
    assert {k: s.shape for k, s in official.official_layout(cfg).items()} == {
        **shapes,
        "text_encoder.embeddings.token_type_ids": (1, 512),  # optional buffer that 4.15 did not persist
    }
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items() if not k.endswith("position_ids")}
    sd = {k: torch.arange(s[1])[None] for k, s in shapes.items() if k.endswith("position_ids")} | meta
    assert official.check_state_dict(sd, cfg).ok
    assert official.check_model_coverage(build_model(cfg, "meta"), cfg) == []
    # ViT-L/14 and ViT-B/16, as in r2d2_config/vision_config*.json
    wv, patch = (1024, 14) if arch == "large" else (768, 16)
    assert shapes["visual_encoder.embeddings.patch_embedding.weight"] == (wv, 3, patch, patch)
    assert shapes["visual_encoder.embeddings.position_embedding.weight"] == ((224 // patch) ** 2 + 1, wv)
    if not prd2:
        assert shapes["text_joint_layer.encoder.layer.5.crossattention.self.key.weight"] == (768, wv)
        assert shapes["img_joint_layer.encoder.layer.5.crossattention.self.key.weight"] == (768, 768)
    other = "base" if arch == "large" else "large"
    probs = official.check_state_dict(sd, model_config({"prd2": prd2}, size=other))
    assert not probs.ok and f"--arch {arch}" in " ".join(probs.hints)

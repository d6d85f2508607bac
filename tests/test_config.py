"""Typed params: presets resolve, unknown keys and bad values are rejected with the key named."""

import pytest

from r2d2.config import load_params, model_config, parse_params
from r2d2.errors import UserError


def test_size_presets_resolve_to_the_published_shapes():
    base, large = model_config(size="base"), model_config(size="large")
    assert (base.vision.width, base.vision.layers, base.vision.patch_size) == (768, 12, 16)
    assert (large.vision.width, large.vision.layers, large.vision.patch_size) == (1024, 24, 14)
    for cfg in (base, large):
        assert (cfg.text.width, cfg.text.layers, cfg.text.vocab_size, cfg.text.max_len) == (768, 12, 21128, 64)
        assert (cfg.cross.layers, cfg.cross.heads, cfg.embed_dim) == (6, 12, 768)


def test_overrides_apply_on_top_of_the_preset():
    cfg = model_config({"size": "tiny", "vision": {"layers": 3}, "prd2": True})
    assert cfg.vision.layers == 3 and cfg.vision.width == 64 and cfg.prd2


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"pretrain": {"lrr": 0.1}}, "pretrain.lrr: unknown key"),
        ({"pretrain": {"losses": {"gcrp": 1}}}, "pretrain.losses.gcrp: unknown key"),
        ({"model": {"vision": {"widht": 3}}}, "vision.widht: unknown key"),
        ({"pretrain": {"lr": -1}}, "pretrain.lr"),
        ({"model": {"vision": {"image_size": 30, "patch_size": 8}}}, "not a multiple of patch_size"),
        ({"model": {"token_reduction": 7}}, "token_reduction"),
        ({"finetune": {"task": "captioning"}}, "finetune.task"),
    ],
)
def test_bad_params_name_the_key(raw, needle):
    with pytest.raises(UserError, match=None) as err:
        parse_params(raw)
    assert needle in str(err.value)


def test_unknown_size_is_rejected():
    with pytest.raises(UserError, match="unknown size 'huge'"):
        model_config({"size": "huge"})


def test_load_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: {size: tiny}\npretrain: {batch_size: 32, max_steps: 5}\ningest: {anything: 1}\n")
    params = load_params(path)
    assert params.pretrain.batch_size == 32 and params.pretrain.max_steps == 5
    assert params.extra == {"ingest": {"anything": 1}}
    path.write_text("pretrain: [1, 2]\n")
    with pytest.raises(UserError, match="pretrain"):
        load_params(path)
    path.write_text("unknown_section: {}\n")
    with pytest.raises(UserError, match="unknown_section: unknown key"):
        load_params(path)

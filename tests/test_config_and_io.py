"""Configs (presets, JSON, validation) and save/load (bit-identical, ties kept, strict)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from glassformer.loading import load_model
from glassformer.models import (
    BERT,
    GPT,
    BERTConfig,
    GPTConfig,
    Transformer,
    TransformerConfig,
    load_config,
)

FAMILIES = [
    (GPT, GPTConfig, "gpt-tiny", {}),
    (BERT, BERTConfig, "bert-tiny", {"num_labels": 2, "label_names": ["neg", "pos"]}),
    (Transformer, TransformerConfig, "transformer-tiny", {}),
]


def test_presets_have_the_paper_sizes():
    base = TransformerConfig.from_name("transformer-base")
    assert (base.d_model, base.n_heads, base.n_layers, base.d_ff, base.dropout) == (512, 8, 6, 2048, 0.1)
    assert base.d_head == 64 and base.pos_encoding == "sinusoidal" and not base.norm_first
    g = GPTConfig.from_name("gpt2")
    assert (g.vocab_size, g.d_model, g.n_layers, g.max_len, g.norm_first) == (50257, 768, 12, 1024, True)
    b = BERTConfig.from_name("bert-base")
    assert (b.d_model, b.n_layers, b.type_vocab_size) == (768, 12, 2)
    assert BERTConfig.from_name("minilm-l6").d_head == 32
    assert GPTConfig.from_name("gpt-tiny", dropout=0.2).dropout == 0.2
    with pytest.raises(ValueError, match="unknown GPTConfig preset 'gpt5'"):
        GPTConfig.from_name("gpt5")


@pytest.mark.parametrize("cls,cfg_cls,name,extra", FAMILIES)
def test_config_json_round_trip(tmp_path, cls, cfg_cls, name, extra):
    cfg = cfg_cls.from_name(name, **extra)
    cfg.to_json_file(tmp_path / "config.json")
    assert cfg_cls.from_json_file(tmp_path / "config.json") == cfg
    assert load_config(tmp_path / "config.json") == cfg
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == cfg.model_type


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(d_model=30, n_heads=4), "d_model \\(30\\) must be divisible by n_heads \\(4\\)"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(activation="tanh"), "activation must be one of"),
        (dict(d_model="32"), "d_model must be int"),
        (dict(vocab_size=True), "vocab_size must be int"),
        (dict(pad_token_id=99), "pad_token_id=99 is outside the vocabulary"),
        (dict(positions="alibi"), "positions must be one of"),
        (dict(n_kv_heads=3), "n_kv_heads \\(3\\) must divide n_heads \\(4\\)"),
    ],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GPTConfig.from_name("gpt-tiny", **kwargs)


def test_config_refuses_unknown_fields_and_wrong_family():
    with pytest.raises(ValueError, match="unknown GPTConfig field\\(s\\): n_embd"):
        GPTConfig.from_dict({"n_embd": 3})
    with pytest.raises(ValueError, match="model_type 'bert'"):
        GPTConfig.from_dict({"model_type": "bert"})
    with pytest.raises(ValueError, match="label_names has 1 names but num_labels is 2"):
        BERTConfig.from_name("bert-tiny", num_labels=2, label_names=["x"])


def _inputs(cls):
    x = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    return (x, x) if cls is Transformer else (x,)


@pytest.mark.parametrize("cls,cfg_cls,name,extra", FAMILIES)
def test_save_load_round_trip_is_bit_identical_and_keeps_ties(tmp_path, cls, cfg_cls, name, extra):
    torch.manual_seed(0)
    model = cls(cfg_cls.from_name(name, **extra)).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path).eval()
    assert torch.equal(model(*_inputs(cls)).logits, loaded(*_inputs(cls)).logits)
    ties = model.active_tied_weights()
    assert ties, "every family ties its output projection to the embedding"
    params = dict(loaded.named_parameters(remove_duplicate=False))
    for a, b in ties.items():
        assert params[a] is params[b], f"{a} is no longer tied to {b}"
    stored = load_file(tmp_path / "model.safetensors")
    assert not set(ties) & set(stored), "a tied matrix is stored once"
    assert type(load_model(tmp_path)) is cls


def test_untied_gpt_saves_both_matrices(tmp_path):
    model = GPT(GPTConfig.from_name("gpt-tiny", tie_embeddings=False))
    assert model.lm_head.weight is not model.tok_emb.weight
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" in load_file(tmp_path / "model.safetensors")
    loaded = GPT.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def _corrupt(tmp_path, edit):
    model = GPT(GPTConfig.from_name("gpt-tiny"))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    edit(state)
    save_file(state, tmp_path / "model.safetensors")


def test_loading_refuses_a_missing_key_by_name(tmp_path):
    _corrupt(tmp_path, lambda s: s.pop("decoder.layers.1.ffn.w_2.bias"))
    with pytest.raises(KeyError, match="missing weight 'decoder.layers.1.ffn.w_2.bias'"):
        GPT.from_pretrained(tmp_path)


def test_loading_refuses_an_unexpected_key_by_name(tmp_path):
    _corrupt(tmp_path, lambda s: s.update({"decoder.layers.9.extra": torch.zeros(1)}))
    with pytest.raises(KeyError, match="unexpected weight 'decoder.layers.9.extra'"):
        GPT.from_pretrained(tmp_path)


def test_loading_refuses_a_shape_mismatch_by_name(tmp_path):
    _corrupt(tmp_path, lambda s: s.update({"pos_emb.weight": torch.zeros(32, 32)}))
    with pytest.raises(ValueError, match="'pos_emb.weight' has shape \\(32, 32\\), the model expects \\(64, 32\\)"):
        GPT.from_pretrained(tmp_path)


def test_loading_refuses_a_broken_or_absent_file(tmp_path):
    GPT(GPTConfig.from_name("gpt-tiny")).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        GPT.from_pretrained(tmp_path)


def test_loading_a_directory_of_another_family_is_refused(tmp_path):
    GPT(GPTConfig.from_name("gpt-tiny")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config is for model_type 'gpt', not 'bert'"):
        BERT.from_pretrained(tmp_path)

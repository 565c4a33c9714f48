"""Parity with `transformers`: tiny random GPT-2, BERT and Marian checkpoints give the same numbers.

Every checkpoint is built here from a config, its parameters filled with random values (HF's
init leaves biases at 0 and LayerNorms at 1, which would hide a swapped key), saved with
``save_pretrained`` and read back through the production converter. Both directions are checked:
HF -> glassformer and glassformer -> HF dir -> transformers.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    MarianConfig,
    MarianMTModel,
)

from glassformer import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig  # noqa: E402
from glassformer.errors import CheckpointError  # noqa: E402
from glassformer.interop import load_hf, save_hf  # noqa: E402

TOL = 1e-4
V = 96


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:  # Marian's fixed sinusoid is not saved, so keep it
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in model.named_buffers():
            if name == "final_logits_bias":
                b.copy_(torch.randn(b.shape, generator=g))
    return model.eval()


def gpt2_config(**kw):
    return GPT2Config(vocab_size=V, n_embd=32, n_head=4, n_layer=2, n_positions=64, bos_token_id=V - 1,
                      eos_token_id=V - 1, **kw)


def bert_config(**kw):
    base = dict(vocab_size=V, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
                max_position_embeddings=64, type_vocab_size=2)
    return BertConfig(**{**base, **kw})


def marian_config(**kw):
    base = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                pad_token_id=V - 1, decoder_start_token_id=V - 1, eos_token_id=0, scale_embedding=True,
                activation_function="swish")
    return MarianConfig(**{**base, **kw})


def save(hf_model, path, **kw):
    hf_model.save_pretrained(path, **kw)
    return path


def max_diff(a, b, mask=None):
    d = (a - b).abs()
    return (d[mask.bool()] if mask is not None else d).max().item()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V - 1, (2, 9), generator=g)
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    types = torch.tensor([[0] * 4 + [1] * 5, [0] * 3 + [1] * 2 + [0] * 4])
    return ids, mask, types


# ------------------------------------------------------------------------------ HF -> ours


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_logits_match_and_cached_continuation(tmp_path, batch, tie):
    hf = randomize(GPT2LMHeadModel(gpt2_config(tie_word_embeddings=tie)))
    ours = load_hf(save(hf, tmp_path), expect=GPT)
    ids = batch[0]  # a 9-token prompt
    with torch.no_grad():
        want = hf(ids).logits
        assert max_diff(ours(ids).logits, want) <= TOL
        # the KV cache of the loaded model: prompt of 6, then the last 3 one at a time
        cache = ours.new_cache()
        steps = [ours(ids[:, :6], cache=cache).logits] + [ours(ids[:, t:t + 1], cache=cache).logits for t in range(6, 9)]
    assert max_diff(torch.cat(steps, dim=1), want) <= TOL
    assert ours.config.tie_embeddings is tie and ours.config.activation == "gelu_tanh"


def test_bert_model_hidden_states_with_padding_and_segments(tmp_path, batch, caplog):
    hf = randomize(BertModel(bert_config()))
    with caplog.at_level(logging.DEBUG):
        ours = load_hf(save(hf, tmp_path), expect=BERT)
    assert (ours.config.pooler, ours.config.mlm_head, ours.config.num_labels) == (True, False, 0)
    assert "not in the checkpoint: masked-LM head" in caplog.text  # absent heads are reported
    ids, mask, types = batch
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    assert max_diff(got.last_hidden_state, want.last_hidden_state, mask) <= TOL
    assert max_diff(got.pooler_output, want.pooler_output) <= TOL
    assert got.logits is None  # no head to produce logits


def test_bert_minilm_shape(tmp_path, batch):
    """6 layers of width 384 with 12 heads (d_head 32), as in MiniLM sentence encoders."""
    hf = randomize(BertModel(bert_config(hidden_size=384, num_attention_heads=12, num_hidden_layers=6,
                                         intermediate_size=256)))
    ours = load_hf(save(hf, tmp_path))
    assert (ours.config.d_model, ours.config.n_heads, ours.config.n_layers) == (384, 12, 6)
    ids, mask, types = batch
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, mask, types).last_hidden_state
    assert max_diff(got, want, mask) <= TOL


def test_bert_masked_lm_logits(tmp_path, batch):
    hf = randomize(BertForMaskedLM(bert_config()))
    ours = load_hf(save(hf, tmp_path), expect=BERT)
    assert (ours.config.pooler, ours.config.mlm_head) == (False, True)
    ids, mask, types = batch
    with torch.no_grad():
        assert max_diff(ours(ids, mask, types).logits, hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, mask) <= TOL


def test_bert_sequence_classification_logits_and_labels(tmp_path, batch):
    hf = randomize(BertForSequenceClassification(bert_config(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"},
                                                             label2id={"neg": 0, "neu": 1, "pos": 2})))
    ours = load_hf(save(hf, tmp_path), expect=BERT)
    assert ours.config.num_labels == 3 and ours.config.label_names == ["neg", "neu", "pos"]
    ids, mask, types = batch
    with torch.no_grad():
        assert max_diff(ours(ids, mask, types).logits, hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits) <= TOL


@pytest.mark.parametrize("kw", [{}, {"decoder_layers": 3, "scale_embedding": False, "activation_function": "relu"},
                                {"share_encoder_decoder_embeddings": False, "tie_word_embeddings": False}])
def test_marian_logits_with_padded_source(tmp_path, batch, kw):
    hf = randomize(MarianMTModel(marian_config(**kw)))
    ours = load_hf(save(hf, tmp_path), expect=Transformer)
    assert ours.config.sinusoidal_layout == "halves" and ours.config.output_bias
    src, mask, _ = batch
    tgt = torch.cat([torch.full((2, 1), V - 1), src[:, :6]], dim=1)  # decoder starts from <pad>
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
        got = ours(src, tgt, src_mask=mask)
    assert max_diff(got.logits, want.logits) <= TOL
    assert max_diff(got.encoder_last_hidden_state, want.encoder_last_hidden_state, mask) <= TOL


def test_marian_stored_positions_are_checked(tmp_path, batch):
    """Older checkpoints store the sinusoid; ours must equal it, and an altered one is refused."""
    hf = randomize(MarianMTModel(marian_config()))
    save(hf, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    table = hf.model.encoder.embed_positions.weight.detach().clone()
    state["model.encoder.embed_positions.weight"] = table
    state["model.decoder.embed_positions.weight"] = table.clone()
    save_file(state, tmp_path / "model.safetensors")
    ours = load_hf(tmp_path)
    src, mask, _ = batch
    with torch.no_grad():
        assert max_diff(ours(src, src, mask).logits, hf(input_ids=src, attention_mask=mask, decoder_input_ids=src).logits) <= TOL
    state["model.decoder.embed_positions.weight"] = table.roll(1, dims=1)  # interleaved-like: not Marian's
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="decoder.embed_positions.weight is not Marian's"):
        load_hf(tmp_path)


def test_sharded_safetensors_and_pickled_bin_load_the_same(tmp_path, batch):
    hf = randomize(GPT2LMHeadModel(gpt2_config()))
    save(hf, tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ids = batch[0]
    with torch.no_grad():
        want = hf(ids).logits
        for d in ("sharded", "bin"):
            assert max_diff(load_hf(tmp_path / d)(ids).logits, want) <= TOL


def test_legacy_key_names_load(tmp_path, batch):
    """Pre-v4 layouts: no "bert."/"transformer." prefix, LayerNorm gamma/beta, saved tied copies,
    the NSP head and attention-mask buffers."""
    hf = randomize(BertForMaskedLM(bert_config()))
    save(hf, tmp_path / "bert")
    state = load_file(tmp_path / "bert" / "model.safetensors")
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    legacy["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    legacy["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    legacy["cls.seq_relationship.bias"] = torch.zeros(2)
    save_file(legacy, tmp_path / "bert" / "model.safetensors")
    ids, mask, types = batch
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        assert max_diff(load_hf(tmp_path / "bert")(ids, mask, types).logits, want, mask) <= TOL

    g = randomize(GPT2LMHeadModel(gpt2_config()))
    save(g, tmp_path / "gpt2")
    state = load_file(tmp_path / "gpt2" / "model.safetensors")
    legacy = {k.removeprefix("transformer."): v for k, v in state.items()}
    legacy["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    save_file(legacy, tmp_path / "gpt2" / "model.safetensors")
    with torch.no_grad():
        assert max_diff(load_hf(tmp_path / "gpt2")(ids).logits, g(ids).logits) <= TOL


# ------------------------------------------------------------------------------ ours -> HF


def ours_randomized(model):
    return randomize(model, seed=3)


def load_reported(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_round_trip_through_transformers(tmp_path, batch, tie):
    ours = ours_randomized(GPT(GPTConfig.from_name("gpt-tiny", vocab_size=V, tie_embeddings=tie)))
    save_hf(ours, tmp_path)
    hf, info = load_reported(GPT2LMHeadModel, tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = batch[0]
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= TOL
    back = load_hf(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


@pytest.mark.parametrize("heads,cls", [
    (dict(mlm_head=True, pooler=False), BertForMaskedLM),
    (dict(mlm_head=False, pooler=True, num_labels=2, label_names=["no", "yes"]), BertForSequenceClassification),
    (dict(mlm_head=False, pooler=True), BertModel),
])
def test_bert_round_trip_through_transformers(tmp_path, batch, heads, cls):
    ours = ours_randomized(BERT(BERTConfig.from_name("bert-tiny", vocab_size=V, **heads)))
    save_hf(ours, tmp_path)
    hf, info = load_reported(cls, tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, types = batch
    with torch.no_grad():
        got, want = ours(ids, mask, types), hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if cls is BertModel:
        assert max_diff(got.last_hidden_state, want.last_hidden_state, mask) <= TOL
        assert max_diff(got.pooler_output, want.pooler_output) <= TOL
    else:
        assert max_diff(got.logits, want.logits, mask if cls is BertForMaskedLM else None) <= TOL
    if "label_names" in heads:
        assert hf.config.id2label == {0: "no", 1: "yes"}
    back = load_hf(tmp_path)
    assert back.config == ours.config
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False, "output_bias": True, "n_decoder_layers": 3},
                                {"activation": "silu", "scale_embeddings": False}])
def test_transformer_round_trip_through_marian(tmp_path, batch, kw):
    config = TransformerConfig.from_name("transformer-tiny", vocab_size=V, sinusoidal_layout="halves", pad_token_id=V - 1,
                                         eos_token_id=0, decoder_start_token_id=V - 1, **kw)
    ours = ours_randomized(Transformer(config))
    save_hf(ours, tmp_path)
    hf, info = load_reported(MarianMTModel, tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    src, mask, _ = batch
    tgt = src[:, :5]
    with torch.no_grad():
        assert max_diff(ours(src, tgt, mask).logits, hf(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits) <= TOL
    back = load_hf(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    assert json.loads((tmp_path / "config.json").read_text())["decoder_start_token_id"] == V - 1


@pytest.mark.parametrize("model,match", [
    (lambda: GPT(GPTConfig.from_name("gpt-tiny", norm_first=False)), "norm_first=False"),
    (lambda: BERT(BERTConfig.from_name("bert-tiny", pos_encoding="sinusoidal")), "pos_encoding='sinusoidal'"),
    (lambda: Transformer(TransformerConfig.from_name("transformer-tiny", bos_token_id=1)), "layout 'halves'"),
])
def test_models_without_a_hf_counterpart_are_refused(tmp_path, model, match):
    with pytest.raises(ValueError, match=match):
        save_hf(model(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ features we refuse


@pytest.mark.parametrize("build,match", [
    (lambda: MarianMTModel(marian_config(decoder_attention_heads=2)), "different encoder and decoder head counts"),
    (lambda: MarianMTModel(marian_config(decoder_ffn_dim=64)), "feed-forward widths"),
    (lambda: MarianMTModel(marian_config(decoder_vocab_size=V + 4, share_encoder_decoder_embeddings=False)), "separate target vocabulary"),
    (lambda: GPT2LMHeadModel(gpt2_config(scale_attn_by_inverse_layer_idx=True)), "scale_attn_by_inverse_layer_idx"),
])
def test_unexpressible_checkpoints_are_refused_by_name(tmp_path, build, match):
    save(build(), tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_hf(tmp_path)


def test_config_switches_transformers_ignores_are_refused(tmp_path):
    save(MarianMTModel(marian_config()), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "normalize_before": True}))
    with pytest.raises(CheckpointError, match=r"normalize_before=True \(pre-LN layers\)"):
        load_hf(tmp_path)


def test_family_mismatch_is_an_error(tmp_path):
    save(BertModel(bert_config()), tmp_path)
    with pytest.raises(CheckpointError, match="a bert checkpoint loads as BERT, not GPT"):
        load_hf(tmp_path, expect=GPT)

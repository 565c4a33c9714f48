"""Marian checkpoints (``model_type: marian``, e.g. the OPUS-MT translators) <-> :class:`glassformer.Transformer`.

Marian is the paper's own encoder-decoder: sinusoidal positions, post-LN layers, embeddings
scaled by √d_model, one vocabulary shared by source, target and the pre-softmax projection.
Three details differ from the paper, and each maps onto a config field:

- the sinusoid puts every sine first and every cosine after (``sinusoidal_layout="halves"``);
  older checkpoints store that table, and we check it equals ours before trusting it;
- the feed-forward activation is swish (``activation="silu"``);
- the pre-softmax projection has a bias, ``final_logits_bias`` (``output_bias=True``).

No transposes: every projection is an ``nn.Linear``. Self-attention q/k/v are stacked into our
``w_qkv``; cross-attention keeps ``w_q`` and stacks k/v into ``w_kv``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from glassformer.errors import CheckpointError
from glassformer.interop import keymap
from glassformer.interop.keymap import HFConfig, Rule
from glassformer.models import Transformer, TransformerConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "marian"
MODEL_CLASS = Transformer
PREFIX = "model."  # MarianMTModel nests the encoder-decoder; a bare MarianModel has no prefix
MARIAN_LAYER_NORM_EPS = 1e-5  # Marian's LayerNorms use the PyTorch default; config.json has no field

_ATTENTION = [  # (our projection, their attention module) -> per-layer rules
    ("w_qkv.weight", ("q_proj.weight", "k_proj.weight", "v_proj.weight")),
    ("w_qkv.bias", ("q_proj.bias", "k_proj.bias", "v_proj.bias")),
    ("w_o.weight", ("out_proj.weight",)),
    ("w_o.bias", ("out_proj.bias",)),
]
_FFN = [
    ("ffn.w_1.weight", ("fc1.weight",), False),
    ("ffn.w_1.bias", ("fc1.bias",), False),
    ("ffn.w_2.weight", ("fc2.weight",), False),
    ("ffn.w_2.bias", ("fc2.bias",), False),
    ("ffn_sub.norm.weight", ("final_layer_norm.weight",), False),
    ("ffn_sub.norm.bias", ("final_layer_norm.bias",), False),
]
# ours (under encoder.layers.{i}.)  <-  theirs (under encoder.layers.{i}.), transposed?
ENCODER_LAYER_MAP: list[tuple[str, tuple[str, ...], bool]] = [
    *[("self_attn." + a, tuple("self_attn." + x for x in b), False) for a, b in _ATTENTION],
    ("attn_sub.norm.weight", ("self_attn_layer_norm.weight",), False),
    ("attn_sub.norm.bias", ("self_attn_layer_norm.bias",), False),
    *_FFN,
]
# ours (under decoder.layers.{i}.)  <-  theirs (under decoder.layers.{i}.), transposed?
DECODER_LAYER_MAP: list[tuple[str, tuple[str, ...], bool]] = [
    *[("self_attn." + a, tuple("self_attn." + x for x in b), False) for a, b in _ATTENTION],
    ("self_sub.norm.weight", ("self_attn_layer_norm.weight",), False),
    ("self_sub.norm.bias", ("self_attn_layer_norm.bias",), False),
    ("cross_attn.w_q.weight", ("encoder_attn.q_proj.weight",), False),
    ("cross_attn.w_q.bias", ("encoder_attn.q_proj.bias",), False),
    ("cross_attn.w_kv.weight", ("encoder_attn.k_proj.weight", "encoder_attn.v_proj.weight"), False),
    ("cross_attn.w_kv.bias", ("encoder_attn.k_proj.bias", "encoder_attn.v_proj.bias"), False),
    ("cross_attn.w_o.weight", ("encoder_attn.out_proj.weight",), False),
    ("cross_attn.w_o.bias", ("encoder_attn.out_proj.bias",), False),
    ("cross_sub.norm.weight", ("encoder_attn_layer_norm.weight",), False),
    ("cross_sub.norm.bias", ("encoder_attn_layer_norm.bias",), False),
    *_FFN,
]
# the one shared matrix may be saved under any of these names (tied copies are often dropped)
SHARED_ALIASES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
POSITION_KEYS = ("encoder.embed_positions.weight", "decoder.embed_positions.weight")
# BART-family switches Marian checkpoints sometimes carry; transformers ignores them, so a
# checkpoint that sets one was trained for an architecture neither library runs
UNSUPPORTED_SWITCHES = [
    ("normalize_before", True, "pre-LN layers"),
    ("add_final_layer_norm", True, "a final LayerNorm after each stack"),
    ("normalize_embedding", True, "a LayerNorm on the embeddings"),
    ("layernorm_embedding", True, "a LayerNorm on the embeddings"),
    ("static_position_embeddings", False, "learned position embeddings"),
    ("add_bias_logits", True, "a second logits bias"),
    ("is_decoder", True, "a decoder-only Marian (MarianForCausalLM)"),
]


# our TransformerConfig field <- (config.json key, type, default); the rest is checked by hand
FIELDS = keymap.field_spec(TransformerConfig, {
    "n_heads": ("encoder_attention_heads", None),
    "d_ff": ("encoder_ffn_dim", None),
    "max_len": ("max_position_embeddings", 1024),
    "dropout": ("dropout", 0.1),
    "scale_embeddings": ("scale_embedding", False),
})


def rules(config: TransformerConfig) -> list[Rule]:
    """The layer key map (embeddings and the logits bias are handled by :func:`load`/`export`)."""
    return (
        keymap.layer_rules(ENCODER_LAYER_MAP, config.n_layers, "encoder.layers.{i}.", "encoder.layers.{i}.")
        + keymap.layer_rules(DECODER_LAYER_MAP, config.decoder_layers, "decoder.layers.{i}.", "decoder.layers.{i}.")
    )


def config_from_hf(cfg: HFConfig, theirs: dict[str, Tensor]) -> TransformerConfig:
    for key, bad, feature in UNSUPPORTED_SWITCHES:
        cfg.refuse(key, bad, feature)
    vocab = cfg.get("vocab_size", int, required=True)
    decoder_vocab = cfg.get("decoder_vocab_size", int, vocab)
    if decoder_vocab != vocab:
        raise cfg.error(f"separate target vocabulary (decoder_vocab_size={decoder_vocab} != vocab_size={vocab}) is not supported")
    for enc, dec, what in (("encoder_attention_heads", "decoder_attention_heads", "head counts"),
                           ("encoder_ffn_dim", "decoder_ffn_dim", "feed-forward widths")):
        e, d = cfg.get(enc, int, required=True), cfg.get(dec, int, required=True)
        if e != d:
            raise cfg.error(f"different encoder and decoder {what} ({enc}={e}, {dec}={d}) are not supported")
    n_enc, n_dec = cfg.get("encoder_layers", int, required=True), cfg.get("decoder_layers", int, required=True)
    share = cfg.get("share_encoder_decoder_embeddings", bool, True)
    tie = cfg.get("tie_word_embeddings", bool, True)
    fields: dict[str, Any] = dict(
        vocab_size=vocab,
        d_model=cfg.get("d_model", int, required=True),
        **keymap.read_fields(cfg, FIELDS),
        n_layers=n_enc,
        n_decoder_layers=n_dec if n_dec != n_enc else None,
        activation=keymap.activation_from_hf(cfg, "activation_function", "gelu"),
        norm_first=False,
        layer_norm_eps=MARIAN_LAYER_NORM_EPS,
        pos_encoding="sinusoidal",
        sinusoidal_layout="halves",
        tie_embeddings=share and tie,
        output_bias="final_logits_bias" in theirs,
        pad_token_id=cfg.token_id("pad_token_id"),
        bos_token_id=cfg.token_id("bos_token_id"),
        eos_token_id=cfg.token_id("eos_token_id"),
        decoder_start_token_id=cfg.token_id("decoder_start_token_id"),
    )
    return keymap.make_config(TransformerConfig, fields, cfg.path)


def _pop_equal(theirs: dict[str, Tensor], keys: tuple[str, ...], source: str) -> Tensor | None:
    """Pop every present key; they are tied copies, so warn when one differs from the first."""
    found = [(k, theirs.pop(k)) for k in keys if k in theirs]
    if not found:
        return None
    first_key, first = found[0]
    for k, t in found[1:]:
        if t.shape != first.shape or not torch.equal(t, first):
            log.warning("%s: %s differs from %s although they are tied; using %s", source, k, first_key, first_key)
    return first


def _check_positions(theirs: dict[str, Tensor], model: Transformer, source: str, name) -> None:
    """Stored sinusoid tables (older checkpoints) must equal the one we compute."""
    table = model.src_pos.table  # (max_len, C)
    for key in POSITION_KEYS:
        stored = theirs.pop(key, None)
        if stored is None:
            continue
        if tuple(stored.shape) != tuple(table.shape):
            raise CheckpointError(f"{source}: weight {name(key)!r} has shape {tuple(stored.shape)}, the config implies {tuple(table.shape)}")
        diff = (stored.float() - table).abs().max().item()
        if diff > 1e-4:
            raise CheckpointError(
                f"{source}: {name(key)} is not Marian's sines-then-cosines table (max difference {diff:.3g}); "
                "learned or altered positions are not supported"
            )


def load(cfg: HFConfig, weights: dict[str, Tensor], source: str, directory) -> Transformer:
    """A :class:`Transformer` holding a Marian checkpoint's weights."""
    theirs, name = keymap.strip_prefix(weights, PREFIX, ("final_logits_bias", "lm_head."))
    config = config_from_hf(cfg, theirs)
    share = cfg.get("share_encoder_decoder_embeddings", bool, True)
    tie = cfg.get("tie_word_embeddings", bool, True)
    model = Transformer(config)
    _check_positions(theirs, model, source, name)
    # Which checkpoint tensor feeds each of our embedding matrices. A shared matrix may be saved
    # under several names (tied copies); they are merged into one, warning if they disagree.
    if share:
        merged = _pop_equal(theirs, SHARED_ALIASES if tie else SHARED_ALIASES[:3], source)
        src = tgt = "shared.weight"
        out = src if tie else "lm_head.weight"
    else:
        src, tgt = "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"
        merged = _pop_equal(theirs, (tgt, "lm_head.weight"), source) if tie else None
        out = tgt if tie else "lm_head.weight"
    if merged is not None:
        theirs[tgt] = merged
    embedding_rules = [Rule("src_emb.weight", (src,))]
    if not config.tie_embeddings:
        embedding_rules += [Rule("tgt_emb.weight", (tgt,)), Rule("generator.weight", (out,))]
    rules_all = embedding_rules + rules(config) + _bias_rule(config)
    state = keymap.to_ours(rules_all, _unsqueeze_bias(theirs, config), model, source, name)
    keymap.refuse_leftovers(theirs, source, "Transformer", name)
    model.load_weights(state, source=source)
    if not config.tie_embeddings:
        log.debug("%s: encoder, decoder and output embeddings are not all tied in this checkpoint; "
                 "glassformer keeps three separate matrices", source)
    return model


def _bias_rule(config: TransformerConfig) -> list[Rule]:
    return [Rule("generator.bias", ("final_logits_bias",))] if config.output_bias else []


def _unsqueeze_bias(theirs: dict[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    """Marian keeps the logits bias as a (1, V) buffer; ours is a (V,) parameter."""
    bias = theirs.get("final_logits_bias")
    if config.output_bias and bias is not None and bias.dim() == 2 and bias.shape[0] == 1:
        theirs["final_logits_bias"] = bias[0]
    return theirs


def export(model: Transformer) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Marian ``config.json`` contents and tensors (MarianMTModel layout) for ``model``."""
    c = model.config
    problems = keymap.layout_problems(c, "Marian", pre_ln=False, learned_positions=False)
    if c.pos_encoding != "sinusoidal" or c.sinusoidal_layout != "halves":
        problems.append(f"pos_encoding={c.pos_encoding!r}, sinusoidal_layout={c.sinusoidal_layout!r} "
                        "(Marian uses sinusoidal positions with layout 'halves')")
    if abs(c.layer_norm_eps - MARIAN_LAYER_NORM_EPS) > 1e-12:
        problems.append(f"layer_norm_eps={c.layer_norm_eps} (Marian's LayerNorms use {MARIAN_LAYER_NORM_EPS})")
    start = model.decoder_start_token_id if model.decoder_start_token_id is not None else c.pad_token_id
    if start is None:
        problems.append("no decoder_start_token_id, bos_token_id or pad_token_id to start decoding with")
    keymap.refuse_export(problems, "this Transformer cannot be written as Marian")
    hf = {
        "model_type": MODEL_TYPE,
        "architectures": ["MarianMTModel"],
        "vocab_size": c.vocab_size,
        "decoder_vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "encoder_layers": c.n_layers,
        "decoder_layers": c.decoder_layers,
        "encoder_attention_heads": c.n_heads,
        "decoder_attention_heads": c.n_heads,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.d_ff,
        "activation_function": {"silu": "swish", "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}[c.activation],
        "max_position_embeddings": c.max_len,
        "dropout": c.dropout,
        "attention_dropout": c.dropout,
        "activation_dropout": 0.0,
        "scale_embedding": c.scale_embeddings,
        "share_encoder_decoder_embeddings": c.tie_embeddings,
        "tie_word_embeddings": c.tie_embeddings,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "forced_eos_token_id": c.eos_token_id,
        "decoder_start_token_id": start,
        "is_encoder_decoder": True,
    }
    ours = model.state_dict()
    tensors = {PREFIX + k: v for k, v in keymap.to_theirs(rules(c), ours).items()}
    if c.tie_embeddings:
        tensors[PREFIX + "shared.weight"] = ours["src_emb.weight"].detach().clone()
    else:
        tensors[PREFIX + "encoder.embed_tokens.weight"] = ours["src_emb.weight"].detach().clone()
        tensors[PREFIX + "decoder.embed_tokens.weight"] = ours["tgt_emb.weight"].detach().clone()
        tensors["lm_head.weight"] = ours["generator.weight"].detach().clone()
    bias = ours["generator.bias"].detach() if c.output_bias else torch.zeros(c.vocab_size)
    tensors["final_logits_bias"] = bias.reshape(1, -1).clone()  # (1, V), as Marian stores it
    return hf, tensors

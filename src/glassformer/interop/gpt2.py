"""GPT-2 checkpoints (``model_type: gpt2``) <-> :class:`glassformer.GPT`.

GPT-2 is our decoder-only GPT exactly: learned positions, pre-LN blocks, a final LayerNorm,
tanh-approximated GELU ("gelu_new") and an LM head tied to the token embedding.

Transposes: GPT-2 stores its projections as ``Conv1D`` modules whose weight is (in, out), the
transpose of ``nn.Linear``. Four weights per layer are transposed: ``attn.c_attn``,
``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj``. ``attn.c_attn`` already holds W^Q, W^K, W^V side
by side, which is our fused ``w_qkv`` once transposed.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor

from glassformer.interop import keymap
from glassformer.interop.keymap import REQUIRED, HFConfig, Rule
from glassformer.models import GPT, GPTConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "gpt2"
MODEL_CLASS = GPT
PREFIX = "transformer."  # GPT2LMHeadModel nests the stack; a bare GPT2Model has no prefix

# ours (under decoder.layers.{i}.)  <-  theirs (under h.{i}.), transposed?
LAYER_MAP: list[tuple[str, tuple[str, ...], bool]] = [
    ("self_sub.norm.weight", ("ln_1.weight",), False),
    ("self_sub.norm.bias", ("ln_1.bias",), False),
    ("self_attn.w_qkv.weight", ("attn.c_attn.weight",), True),
    ("self_attn.w_qkv.bias", ("attn.c_attn.bias",), False),
    ("self_attn.w_o.weight", ("attn.c_proj.weight",), True),
    ("self_attn.w_o.bias", ("attn.c_proj.bias",), False),
    ("ffn_sub.norm.weight", ("ln_2.weight",), False),
    ("ffn_sub.norm.bias", ("ln_2.bias",), False),
    ("ffn.w_1.weight", ("mlp.c_fc.weight",), True),
    ("ffn.w_1.bias", ("mlp.c_fc.bias",), False),
    ("ffn.w_2.weight", ("mlp.c_proj.weight",), True),
    ("ffn.w_2.bias", ("mlp.c_proj.bias",), False),
]
GLOBAL_MAP = [
    Rule("tok_emb.weight", ("wte.weight",)),
    Rule("pos_emb.weight", ("wpe.weight",)),
    Rule("decoder.final_norm.weight", ("ln_f.weight",)),
    Rule("decoder.final_norm.bias", ("ln_f.bias",)),
]
UNTIED_HEAD = Rule("lm_head.weight", ("lm_head.weight",))
# causal-mask buffers that older checkpoints saved alongside the weights; we build masks ourselves
MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


# our GPTConfig field <- (config.json key, default); the types are GPTConfig's own; d_ff defaults to 4 * d_model
FIELDS = keymap.field_spec(GPTConfig, {
    "vocab_size": ("vocab_size", REQUIRED),
    "d_model": ("n_embd", REQUIRED),
    "n_heads": ("n_head", REQUIRED),
    "n_layers": ("n_layer", REQUIRED),
    "d_ff": ("n_inner", None),
    "max_len": ("n_positions", 1024),
    "dropout": ("resid_pdrop", 0.1),
    "layer_norm_eps": ("layer_norm_epsilon", 1e-5),
    "tie_embeddings": ("tie_word_embeddings", True),
})


def accepts(model: GPT) -> bool:
    """GPTs with added positions are written as GPT-2 (rotary ones as Llama)."""
    return model.config.positions != "rotary"


def rules(config: GPTConfig) -> list[Rule]:
    out = GLOBAL_MAP + keymap.layer_rules(LAYER_MAP, config.n_layers, "decoder.layers.{i}.", "h.{i}.")
    return out if config.tie_embeddings else out + [UNTIED_HEAD]


def config_from_hf(cfg: HFConfig) -> GPTConfig:
    cfg.refuse("add_cross_attention", True, "cross-attention in a decoder-only model")
    cfg.refuse("scale_attn_weights", False, "attention scores not divided by sqrt(d_head)")
    cfg.refuse("scale_attn_by_inverse_layer_idx", True, "scores also divided by the layer index")
    fields: dict[str, Any] = keymap.read_fields(cfg, FIELDS)
    vocab = fields["vocab_size"]
    if fields["d_ff"] is None:
        fields["d_ff"] = 4 * fields["d_model"]
    fields["activation"] = keymap.activation_from_hf(cfg, "activation_function", "gelu_new")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        fields[name] = in_vocab(cfg, name, vocab)
    return keymap.make_config(GPTConfig, fields, cfg.path)


def in_vocab(cfg: HFConfig, key: str, vocab: int) -> int | None:
    """A special-token id, dropped with a warning when it lies outside the vocabulary."""
    value = cfg.token_id(key)
    if value is not None and not 0 <= value < vocab:
        log.warning("%s: %s=%d is outside the vocabulary of %d; ignored", cfg.path, key, value, vocab)
        return None
    return value


def load(cfg: HFConfig, weights: dict[str, Tensor], source: str, directory) -> GPT:
    """A :class:`GPT` holding a GPT-2 checkpoint's weights."""
    config = config_from_hf(cfg)
    theirs, name = keymap.strip_prefix({k: v for k, v in weights.items() if not MASK_BUFFER.search(k)}, PREFIX, ("lm_head.",))
    model = GPT(config)
    state = keymap.to_ours(rules(config), theirs, model, source, name)
    head = theirs.pop("lm_head.weight", None)
    if head is not None and config.tie_embeddings and not torch.equal(head, state["tok_emb.weight"]):
        # transformers ties lm_head to wte whatever the file says; we do the same
        log.warning("%s: lm_head.weight differs from wte.weight but tie_word_embeddings is true; using wte", source)
    keymap.refuse_leftovers(theirs, source, "GPT", name)
    model.load_weights(state, source=source)
    return model


def export(model: GPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """GPT-2 ``config.json`` contents and tensors (GPT2LMHeadModel layout) for ``model``."""
    c = model.config
    keymap.refuse_export(keymap.layout_problems(c, "GPT-2", pre_ln=True), "this GPT cannot be written as GPT-2")
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[c.activation]
    hf = {
        "model_type": MODEL_TYPE,
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.max_len,
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.d_ff,
        "activation_function": activation,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_eps,
        "scale_attn_weights": True,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
    }
    tensors = keymap.to_theirs(rules(c), model.state_dict())
    return hf, {(k if k == "lm_head.weight" else PREFIX + k): v for k, v in tensors.items()}

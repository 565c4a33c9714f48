"""Llama, Mistral and Qwen2 checkpoints (``model_type: llama | mistral | qwen2``) <-> :class:`glassformer.GPT`.

The three are one architecture, which is our GPT with the after-2017 options: rotary positions
(the "rotate half" layout), RMSNorm before each sublayer and at the end, a SwiGLU feed-forward
network, grouped-query attention and no biases. Their differences, as config fields:

- Qwen2 has biases on W^Q, W^K, W^V (``qkv_bias=True``), none on W^O;
- Llama 3.1 and later stretch the low rotary frequencies (``rope_scaling="llama3"``);
- Mistral may attend over a sliding window of ``sliding_window`` keys. A model whose
  ``max_len`` is no longer than the window attends over every key anyway, so the loaded
  model's ``max_len`` is capped at the window: it then computes exactly what the checkpoint
  does, and longer texts go through generation's own sliding window.

Keys: Hugging Face stores W^Q, W^K and W^V as three ``nn.Linear`` (out, in) matrices, stacked
here into our ``w_qkv`` (no transposes); ``gate_proj``/``up_proj``/``down_proj`` are our
``w_gate``/``w_up``/``w_2``. Weights load one tensor at a time into a model built on the meta
device (:func:`glassformer.interop.keymap.assign_one_by_one`), so a sharded checkpoint is never
held twice in memory.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glassformer.interop import keymap
from glassformer.interop.gpt2 import in_vocab
from glassformer.interop.keymap import REQUIRED, HFConfig, Rule
from glassformer.interop.weights import iter_weights
from glassformer.models import GPT, GPTConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "llama"
MODEL_TYPES = ("llama", "mistral", "qwen2")  # the config.json model_types this file reads
MODEL_CLASS = GPT
PREFIX = "model."  # LlamaForCausalLM nests the stack; a bare LlamaModel has no prefix
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# ours (under decoder.layers.{i}.)  <-  theirs (under layers.{i}.), transposed?[, part sizes]
def layer_map(config: GPTConfig) -> list[tuple]:
    c, kv = config.d_model, config.kv_heads * config.d_head
    table: list[tuple] = [
        ("self_sub.norm.weight", ("input_layernorm.weight",), False),
        ("self_attn.w_qkv.weight", ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
         False, (c, kv, kv)),
        ("self_attn.w_o.weight", ("self_attn.o_proj.weight",), False),
        ("ffn_sub.norm.weight", ("post_attention_layernorm.weight",), False),
        ("ffn.w_gate.weight", ("mlp.gate_proj.weight",), False),
        ("ffn.w_up.weight", ("mlp.up_proj.weight",), False),
        ("ffn.w_2.weight", ("mlp.down_proj.weight",), False),
    ]
    if config.qkv_bias:  # Qwen2
        table.append(("self_attn.w_qkv.bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
                      False, (c, kv, kv)))
    return table


GLOBAL_MAP = [
    Rule("tok_emb.weight", ("embed_tokens.weight",)),
    Rule("decoder.final_norm.weight", ("norm.weight",)),
]
UNTIED_HEAD = Rule("lm_head.weight", ("lm_head.weight",))
# rotary frequency buffers that older checkpoints saved with the weights; we compute our own
ROTARY_BUFFER = re.compile(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")

# our GPTConfig field <- (config.json key, default); the types are GPTConfig's own
FIELDS = keymap.field_spec(GPTConfig, {
    "vocab_size": ("vocab_size", REQUIRED),
    "d_model": ("hidden_size", REQUIRED),
    "n_heads": ("num_attention_heads", REQUIRED),
    "n_layers": ("num_hidden_layers", REQUIRED),
    "d_ff": ("intermediate_size", REQUIRED),
    "max_len": ("max_position_embeddings", 2048),
    "n_kv_heads": ("num_key_value_heads", None),
    "layer_norm_eps": ("rms_norm_eps", 1e-6),
    "tie_embeddings": ("tie_word_embeddings", False),
})
RECIPE = dict(positions="rotary", norm="rmsnorm", ffn="swiglu", bias=False, norm_first=True, dropout=0.0)
LLAMA3_KEYS = {"rope_factor": "factor", "rope_low_freq_factor": "low_freq_factor",
               "rope_high_freq_factor": "high_freq_factor", "rope_original_max_len": "original_max_position_embeddings"}


def rope_fields(cfg: HFConfig) -> dict[str, Any]:
    """``rope_theta`` and the scaling, from transformers 4's ``rope_theta``/``rope_scaling`` or
    transformers 5's ``rope_parameters``."""
    params = cfg.data.get("rope_parameters") or cfg.data.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise cfg.error(f"rope_parameters / rope_scaling must be an object, got {params!r}")
    theta = params.get("rope_theta", cfg.data.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise cfg.error(f"rope_theta must be a number, got {theta!r}")
    fields: dict[str, Any] = {"rope_theta": float(theta)}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "llama3":
        fields["rope_scaling"] = "llama3"
        for ours, theirs in LLAMA3_KEYS.items():
            if theirs not in params:
                raise cfg.error(f"llama3 rope scaling without {theirs!r}")
            fields[ours] = params[theirs] if ours == "rope_original_max_len" else float(params[theirs])
    elif kind not in (None, "default"):
        raise cfg.error(f"rope scaling {kind!r} is not supported; glassformer has the default and 'llama3'")
    factor = cfg.data.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    if factor != 1.0:
        raise cfg.error(f"partial_rotary_factor={factor} is not supported for {cfg.data['model_type']}")
    return fields


def config_from_hf(cfg: HFConfig) -> GPTConfig:
    kind = cfg.data["model_type"]
    for key, feature in (("attention_bias", "biases on the attention projections"), ("mlp_bias", "feed-forward biases")):
        cfg.refuse(key, True, feature)
    cfg.refuse("use_sliding_window", True, "sliding-window attention on some layers")
    fields: dict[str, Any] = {**keymap.read_fields(cfg, FIELDS), **RECIPE, **rope_fields(cfg)}
    act = cfg.get("hidden_act", str, "silu")
    if act not in ("silu", "swish"):
        raise cfg.error(f"hidden_act={act!r}: glassformer's SwiGLU gate is silu")
    head_dim = cfg.get("head_dim", int, fields["d_model"] // fields["n_heads"])
    if head_dim * fields["n_heads"] != fields["d_model"]:
        raise cfg.error(f"head_dim={head_dim} is not hidden_size / num_attention_heads; glassformer needs it to be")
    fields["qkv_bias"] = kind == "qwen2"  # Qwen2's q, k, v projections always have biases
    window = cfg.get("sliding_window", int, None) if kind == "mistral" else None
    if window is not None and window < fields["max_len"]:
        log.debug("%s: sliding_window=%d: max_len capped at the window, where full attention is the same", cfg.path, window)
        fields["max_len"] = window
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        fields[name] = in_vocab(cfg, name, fields["vocab_size"])
    return keymap.make_config(GPTConfig, fields, cfg.path)


def rules(config: GPTConfig) -> list[Rule]:
    out = GLOBAL_MAP + keymap.layer_rules(layer_map(config), config.n_layers, "decoder.layers.{i}.", "layers.{i}.")
    return out if config.tie_embeddings else out + [UNTIED_HEAD]


def load_directory(cfg: HFConfig, directory: Path) -> GPT:
    """A :class:`GPT` holding a Llama-family checkpoint, read one tensor at a time (never twice in memory)."""
    config = config_from_hf(cfg)
    with torch.device("meta"):  # shapes only; the checkpoint's tensors become the parameters
        model = GPT(config)
    tensors, source = iter_weights(directory)
    untied_head = [None]

    def theirs():
        for key, t in tensors:
            short = key.removeprefix(PREFIX)
            if ROTARY_BUFFER.search(short):
                continue
            if short == "lm_head.weight" and config.tie_embeddings:
                untied_head[0] = t  # transformers ties it to the embedding whatever the file holds
                continue
            yield short, t

    keymap.assign_one_by_one(model, rules(config), theirs(), source, name=lambda k: k if k.startswith("lm_head") else PREFIX + k)
    if untied_head[0] is not None and not torch.equal(untied_head[0].float(), model.tok_emb.weight):
        log.warning("%s: lm_head.weight differs from embed_tokens.weight but tie_word_embeddings is true; using embed_tokens", source)
    return model


def load(cfg: HFConfig, weights: dict[str, Tensor], source: str, directory) -> GPT:
    """The same from tensors already in memory (the interface of the other families)."""
    config = config_from_hf(cfg)
    with torch.device("meta"):
        model = GPT(config)
    items = [(k.removeprefix(PREFIX), v) for k, v in weights.items()]
    items = [(k, v) for k, v in items if not ROTARY_BUFFER.search(k) and not (k == "lm_head.weight" and config.tie_embeddings)]
    keymap.assign_one_by_one(model, rules(config), items, source, name=lambda k: k if k.startswith("lm_head") else PREFIX + k)
    return model


def accepts(model: GPT) -> bool:
    """A GPT with rotary positions is written as Llama (or Qwen2); the others as GPT-2."""
    return model.config.positions == "rotary"


def export_problems(c: GPTConfig) -> list[str]:
    problems = []
    for field, want in (("norm", "rmsnorm"), ("ffn", "swiglu"), ("positions", "rotary"), ("bias", False), ("norm_first", True)):
        if getattr(c, field) != want:
            problems.append(f"{field}={getattr(c, field)!r} (Llama has {want!r})")
    if c.rotary_fraction != 1.0:
        problems.append(f"rotary_fraction={c.rotary_fraction} (Llama rotates whole heads)")
    if c.d_ff == 0:
        problems.append("d_ff=0, attention-only layers (Llama has a feed-forward block in every layer)")
    return problems


def export(model: GPT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``config.json`` contents and tensors of ``model`` as LlamaForCausalLM, or Qwen2ForCausalLM
    when it has biases on W^Q, W^K, W^V."""
    c = model.config
    keymap.refuse_export(export_problems(c), "this GPT cannot be written as Llama")
    kind = "qwen2" if c.qkv_bias else "llama"
    hf: dict[str, Any] = {"model_type": kind, "architectures": [ARCHITECTURES[kind]]}
    hf.update({theirs: getattr(c, ours) for ours, (theirs, _, _) in FIELDS.items()})
    hf["num_key_value_heads"] = c.kv_heads
    hf.update(hidden_act="silu", rope_theta=c.rope_theta, attention_dropout=0.0,
              bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    if kind == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    if c.rope_scaling == "llama3":
        hf["rope_scaling"] = {"rope_type": "llama3", **{theirs: getattr(c, ours) for ours, theirs in LLAMA3_KEYS.items()}}
    tensors = keymap.to_theirs(rules(c), model.state_dict())
    return hf, {(k if k == "lm_head.weight" else PREFIX + k): v for k, v in tensors.items()}

"""BERT checkpoints (``model_type: bert``) <-> :class:`glassformer.BERT`.

Any size loads: the widths, depth and head count come from ``config.json`` (e.g. 6 layers of
width 384 with 12 heads for MiniLM-style sentence encoders). The encoder is always there; the
heads are optional and load when their weights are present:

    pooler      bert.pooler.dense.*              BertModel, BertForSequenceClassification
    MLM head    cls.predictions.*                BertForMaskedLM, BertForPreTraining
    classifier  classifier.*                     BertForSequenceClassification

No transposes: every BERT projection is an ``nn.Linear``. Separate query/key/value matrices are
stacked into our fused ``w_qkv`` (and split again on save). Old checkpoints name LayerNorm
parameters ``gamma``/``beta``; they are read as ``weight``/``bias``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from glassformer.interop import keymap
from glassformer.interop.keymap import REQUIRED, HFConfig, Rule
from glassformer.models import BERT, BERTConfig

log = logging.getLogger(__name__)

MODEL_TYPE = "bert"
MODEL_CLASS = BERT
PREFIX = "bert."  # models with a head nest the encoder under "bert."; a bare BertModel has no prefix

# ours (under encoder.layers.{i}.)  <-  theirs (under encoder.layer.{i}.), transposed?
LAYER_MAP: list[tuple[str, tuple[str, ...], bool]] = [
    ("self_attn.w_qkv.weight", ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight"), False),
    ("self_attn.w_qkv.bias", ("attention.self.query.bias", "attention.self.key.bias", "attention.self.value.bias"), False),
    ("self_attn.w_o.weight", ("attention.output.dense.weight",), False),
    ("self_attn.w_o.bias", ("attention.output.dense.bias",), False),
    ("attn_sub.norm.weight", ("attention.output.LayerNorm.weight",), False),
    ("attn_sub.norm.bias", ("attention.output.LayerNorm.bias",), False),
    ("ffn.w_1.weight", ("intermediate.dense.weight",), False),
    ("ffn.w_1.bias", ("intermediate.dense.bias",), False),
    ("ffn.w_2.weight", ("output.dense.weight",), False),
    ("ffn.w_2.bias", ("output.dense.bias",), False),
    ("ffn_sub.norm.weight", ("output.LayerNorm.weight",), False),
    ("ffn_sub.norm.bias", ("output.LayerNorm.bias",), False),
]
EMBEDDING_MAP = [
    Rule("tok_emb.weight", ("embeddings.word_embeddings.weight",)),
    Rule("pos_emb.weight", ("embeddings.position_embeddings.weight",)),
    Rule("type_emb.weight", ("embeddings.token_type_embeddings.weight",)),
    Rule("emb_norm.weight", ("embeddings.LayerNorm.weight",)),
    Rule("emb_norm.bias", ("embeddings.LayerNorm.bias",)),
]
POOLER_MAP = [Rule("pooler.weight", ("pooler.dense.weight",)), Rule("pooler.bias", ("pooler.dense.bias",))]
MLM_MAP = [
    Rule("mlm_head.dense.weight", ("cls.predictions.transform.dense.weight",)),
    Rule("mlm_head.dense.bias", ("cls.predictions.transform.dense.bias",)),
    Rule("mlm_head.norm.weight", ("cls.predictions.transform.LayerNorm.weight",)),
    Rule("mlm_head.norm.bias", ("cls.predictions.transform.LayerNorm.bias",)),
    Rule("mlm_head.decoder.bias", ("cls.predictions.bias",)),  # decoder.weight is the tied embedding
]
CLASSIFIER_MAP = [Rule("classifier.weight", ("classifier.weight",)), Rule("classifier.bias", ("classifier.bias",))]
HEAD_PREFIXES = ("cls.", "classifier.")  # top-level in every BERT checkpoint, never under "bert."
# heads transformers has and we do not: refusing them beats silently computing something else
UNSUPPORTED_ARCHITECTURES = {
    "BertForTokenClassification": "a per-token classification head",
    "BertForQuestionAnswering": "a span-extraction (question answering) head",
    "BertForMultipleChoice": "a multiple-choice head",
    "BertLMHeadModel": "a causal (decoder) BERT",
}


# our BERTConfig field <- (config.json key, type, default)
FIELDS = keymap.field_spec(BERTConfig, {
    "vocab_size": ("vocab_size", REQUIRED),
    "d_model": ("hidden_size", REQUIRED),
    "n_heads": ("num_attention_heads", REQUIRED),
    "n_layers": ("num_hidden_layers", REQUIRED),
    "d_ff": ("intermediate_size", REQUIRED),
    "max_len": ("max_position_embeddings", 512),
    "dropout": ("hidden_dropout_prob", 0.1),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "type_vocab_size": ("type_vocab_size", 2),
})


def rules(config: BERTConfig) -> list[Rule]:
    out = EMBEDDING_MAP + keymap.layer_rules(LAYER_MAP, config.n_layers, "encoder.layers.{i}.", "encoder.layer.{i}.")
    if config.pooler:
        out += POOLER_MAP
    if config.mlm_head:
        out += MLM_MAP
    if config.num_labels:
        out += CLASSIFIER_MAP
    return out


def canonical(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """gamma/beta (pre-2019 names) read as LayerNorm weight/bias."""
    out = {}
    for k, v in weights.items():
        if k.endswith("LayerNorm.gamma"):
            k = k[: -len("gamma")] + "weight"
        elif k.endswith("LayerNorm.beta"):
            k = k[: -len("beta")] + "bias"
        out[k] = v
    return out


def config_from_hf(cfg: HFConfig, theirs: dict[str, Tensor], directory) -> BERTConfig:
    for arch in cfg.get("architectures", list, []):
        if arch in UNSUPPORTED_ARCHITECTURES:
            raise cfg.error(f"architecture {arch} ({UNSUPPORTED_ARCHITECTURES[arch]}) is not supported by glassformer")
    cfg.refuse("is_decoder", True, "a causal decoder BERT")
    cfg.refuse("add_cross_attention", True, "cross-attention layers")
    position_type = cfg.get("position_embedding_type", str, "absolute")
    if position_type != "absolute":
        raise cfg.error(f"position_embedding_type={position_type!r} is not supported (only 'absolute')")
    has_pooler = "pooler.dense.weight" in theirs
    has_mlm = any(k.startswith("cls.predictions.") for k in theirs)
    num_labels = theirs["classifier.weight"].shape[0] if "classifier.weight" in theirs else 0
    if num_labels and not has_pooler:
        raise cfg.error("the checkpoint has a classifier but no pooler (bert.pooler.dense.*) to feed it")
    label_names: list[str] = []
    id2label = cfg.get("id2label", dict, {})
    if num_labels and id2label:
        if len(id2label) != num_labels:
            raise cfg.error(f"id2label names {len(id2label)} labels but classifier.weight has {num_labels} rows")
        try:
            names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except ValueError:
            raise cfg.error("id2label keys must be integers") from None
        if names != [f"LABEL_{i}" for i in range(num_labels)]:  # the default names say nothing
            label_names = names
    fields: dict[str, Any] = keymap.read_fields(cfg, FIELDS)
    vocab = fields["vocab_size"]
    mask_id = keymap.special_token_id(directory, ("[MASK]", "<mask>"))
    fields.update(
        activation=keymap.activation_from_hf(cfg, "hidden_act", "gelu"),
        pad_token_id=cfg.token_id("pad_token_id"),
        pooler=has_pooler,
        mlm_head=has_mlm,
        num_labels=num_labels,
        label_names=label_names,
        mask_token_id=mask_id if mask_id is not None and mask_id < vocab else None,
    )
    return keymap.make_config(BERTConfig, fields, cfg.path)


def load(cfg: HFConfig, weights: dict[str, Tensor], source: str, directory) -> BERT:
    """A :class:`BERT` with the encoder and whichever heads the checkpoint holds."""
    theirs, name = keymap.strip_prefix(canonical(weights), PREFIX, HEAD_PREFIXES)
    config = config_from_hf(cfg, theirs, directory)
    model = BERT(config)
    state = keymap.to_ours(rules(config), theirs, model, source, name)
    theirs.pop("embeddings.position_ids", None)  # a buffer older versions saved: arange(max_len)
    dropped_nsp = theirs.pop("cls.seq_relationship.weight", None) is not None
    theirs.pop("cls.seq_relationship.bias", None)
    decoder = theirs.pop("cls.predictions.decoder.weight", None)
    if decoder is not None and not torch.equal(decoder, state["tok_emb.weight"]):
        if cfg.get("tie_word_embeddings", bool, True):
            log.warning("%s: cls.predictions.decoder.weight differs from the word embeddings but they are tied; using the embeddings", source)
        else:
            raise cfg.error("an MLM decoder untied from the word embeddings (tie_word_embeddings=false) is not supported")
    decoder_bias = theirs.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None and config.mlm_head and not torch.equal(decoder_bias, state["mlm_head.decoder.bias"]):
        log.warning("%s: cls.predictions.decoder.bias differs from cls.predictions.bias; using the latter", source)
    keymap.refuse_leftovers(theirs, source, "BERT", name)
    model.load_weights(state, source=source)
    heads = {"pooler": config.pooler, "masked-LM head": config.mlm_head,
             f"classifier ({config.num_labels} labels)" if config.num_labels else "classifier": config.num_labels > 0}
    log.debug("%s: BERT encoder loaded with %s%s", source,
             ", ".join(h for h, on in heads.items() if on) or "no heads",
             "; not in the checkpoint: " + ", ".join(h for h, on in heads.items() if not on) if not all(heads.values()) else "")
    if dropped_nsp:
        log.debug("%s: the next-sentence-prediction head (cls.seq_relationship) has no glassformer counterpart; dropped", source)
    return model


def export(model: BERT) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """BERT ``config.json`` contents and tensors for ``model``, heads included."""
    c = model.config
    keymap.refuse_export(keymap.layout_problems(c, "BERT", pre_ln=False),
                         "this BERT cannot be written in the Hugging Face BERT layout")
    if c.num_labels:
        arch = "BertForSequenceClassification"
    elif c.mlm_head:
        arch = "BertForMaskedLM"
    else:
        arch = "BertModel"
    hf: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "architectures": [arch],
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "intermediate_size": c.d_ff,
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}[c.activation],
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
        "max_position_embeddings": c.max_len,
        "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.layer_norm_eps,
        "pad_token_id": c.pad_token_id,
        "tie_word_embeddings": True,
    }
    if c.num_labels:
        names = c.label_names or [f"LABEL_{i}" for i in range(c.num_labels)]
        hf["id2label"] = {str(i): n for i, n in enumerate(names)}
        hf["label2id"] = {n: i for i, n in enumerate(names)}
    tensors = keymap.to_theirs(rules(c), model.state_dict())
    prefix = "" if arch == "BertModel" else PREFIX  # the layout transformers itself writes
    return hf, {(k if k.startswith(HEAD_PREFIXES) else prefix + k): v for k, v in tensors.items()}

"""The three families: ``Transformer`` (encoder-decoder), ``BERT`` (encoder), ``GPT`` (decoder).

Names are imported on first use (PEP 562): the configs (:mod:`.config`) need no torch, so a
command's ``--help`` that builds flags from them stays fast.
"""

from __future__ import annotations

from typing import Any

from glassformer.lazy import lazy_exports

_EXPORTS = {
    "BERT": "bert", "GPT": "gpt", "Transformer": "transformer", "Decoder": "decoder", "Encoder": "encoder",
    "BERTConfig": "config", "GPTConfig": "config", "ModelConfig": "config", "TransformerConfig": "config",
    "load_config": "config", "AttentionMap": "outputs", "ModelOutput": "outputs",
}

__all__ = sorted([*_EXPORTS, "MODEL_CLASSES"])


_lazy_getattr, __dir__ = lazy_exports(__name__, globals(), {n: f".{m}" for n, m in _EXPORTS.items()})


def __getattr__(name: str) -> Any:
    if name != "MODEL_CLASSES":
        return _lazy_getattr(name)
    classes = {"gpt": _lazy_getattr("GPT"), "bert": _lazy_getattr("BERT"), "transformer": _lazy_getattr("Transformer")}
    globals()[name] = classes
    return classes

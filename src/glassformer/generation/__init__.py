"""Generation: decoding settings, pure sampling functions and one decoding loop for both families.

* :mod:`.config` — :class:`GenerationConfig`, the frozen settings, and ``generation_config.json``;
* :mod:`.sampling` — temperature, top-k, top-p, repetition penalty, drawing the next token;
* :mod:`.loop` — the decoding loop and its strategies (greedy / sampling, beam search), with
  per-step callbacks (streaming, the generation inspector's trace);
* :mod:`.gpt` — :func:`generate` for decoder-only models (KV cache, left-padded batches,
  sliding window, eos / stop strings);
* :mod:`.seq2seq` — :func:`generate_seq2seq` for the encoder-decoder;
* :mod:`.text` — text in, text out (generate, translate, fill-mask, classify, embed): what the
  CLI and :func:`glassformer.load` run;
* :mod:`.cache`, :mod:`.layout`, :mod:`.streaming` — the preallocated KV cache, the opt-in CPU
  decoding layout (:func:`optimize_for_decoding` returns a prepared copy), :class:`TextStreamer`.

The commands themselves are in :mod:`glassformer.cli`. Names are imported on first use (PEP 562),
so ``import glassformer.generation.config`` for ``--help`` does not import torch.
"""

from __future__ import annotations

from glassformer.lazy import lazy_exports

_EXPORTS = {
    "GenerationConfig": "config", "load_generation_config": "config", "read_generation_config": "config",
    "generate": "gpt", "generate_lists": "gpt",
    "generate_seq2seq": "seq2seq", "generate_seq2seq_lists": "seq2seq",
    "Step": "loop",
    "generate_texts": "text", "translate_texts": "text", "fill_mask_texts": "text", "classify_texts": "text",
    "embed_texts": "text",
    "TextStreamer": "streaming", "optimize_for_decoding": "layout",
    "apply_repetition_penalty": "sampling", "apply_temperature": "sampling", "make_generators": "sampling",
    "sample_next": "sampling", "top_k_filter": "sampling", "top_p_filter": "sampling",
    "validate_sampling": "sampling",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), {name: f".{module}" for name, module in _EXPORTS.items()})

"""Generation: pure sampling functions and the decoding loops built on them.

* :mod:`.sampling` — temperature, top-k, top-p, repetition penalty, drawing the next token;
* :mod:`.gpt` — :func:`generate` for decoder-only models (KV cache, left-padded batches,
  sliding window, eos / stop strings, streaming);
* :mod:`.seq2seq` — :func:`generate_seq2seq` for the encoder-decoder (greedy and beam search);
* :mod:`.layout` — :func:`optimize_for_decoding`, a faster weight layout for CPU decoding;
* :mod:`.streaming` — :class:`TextStreamer`, printing text as tokens arrive;
* :mod:`.command` — the ``generate``, ``translate``, ``fill-mask``, ``classify`` and ``embed``
  commands.
"""

from glassformer.generation.gpt import generate, generate_lists
from glassformer.generation.layout import optimize_for_decoding
from glassformer.generation.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    make_generators,
    sample_next,
    top_k_filter,
    top_p_filter,
    validate_sampling,
)
from glassformer.generation.seq2seq import (
    beam_search,
    generate_seq2seq,
    generate_seq2seq_lists,
    greedy_seq2seq,
)
from glassformer.generation.streaming import TextStreamer

__all__ = [
    "TextStreamer", "apply_repetition_penalty", "apply_temperature", "beam_search", "generate",
    "generate_lists", "generate_seq2seq", "generate_seq2seq_lists", "greedy_seq2seq", "make_generators", "optimize_for_decoding",
    "sample_next",
    "top_k_filter", "top_p_filter", "validate_sampling",
]

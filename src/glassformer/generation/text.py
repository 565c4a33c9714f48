"""Text in, text out: what ``glassformer generate | translate`` and :func:`glassformer.load` run.

Both faces call these functions with the same :class:`GenerationConfig` and the same batching, so
a prompt gives the same output from the command line and from Python. Inputs are encoded,
batched (``batch_size`` at a time; with a seed, input i always draws with ``seed + i``),
decoded without end-of-sequence ids and cut at the first stop string. The weights get the layout
that decodes that many rows fastest (:func:`~glassformer.generation.optimize_for_decoding`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from glassformer.data.batching import pad
from glassformer.generation.cli_common import batches, device_of, encode_all
from glassformer.generation.config import GenerationConfig
from glassformer.generation.gpt import generate_lists
from glassformer.generation.layout import optimize_for_decoding
from glassformer.generation.loop import first_not_none
from glassformer.generation.seq2seq import generate_seq2seq_lists
from glassformer.generation.streaming import TextStreamer, cut_at_stop

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """One prompt's result."""

    prompt: str
    text: str  # the continuation: no eos, cut before the first stop string
    tokens: int  # how many tokens were generated (the eos included)


def with_special_ids(model, tokenizer, config: GenerationConfig) -> tuple[GenerationConfig, list[int]]:
    """``config`` with eos and bos filled in (the config's, else the model's, else the tokenizer's),
    and the eos ids as a list."""
    eos = first_not_none(config.eos_token_id, model.config.eos_token_id, getattr(tokenizer, "eos_id", None))
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    bos = first_not_none(config.bos_token_id, model.config.bos_token_id, getattr(tokenizer, "bos_id", None))
    return config.replace(eos_token_id=tuple(eos_ids), bos_token_id=bos), eos_ids


def _decode(tokenizer, ids: list[int], eos_ids: list[int], stop: Sequence[str]) -> str:
    return cut_at_stop(tokenizer.decode([t for t in ids if t not in eos_ids], skip_special_tokens=True), stop)


def _seeded(config: GenerationConfig, offset: int) -> GenerationConfig:
    """Input ``offset`` of the whole run is row 0 of its batch: shift the seed so it draws ``seed + offset``."""
    return config if config.seed is None or offset == 0 else config.replace(seed=config.seed + offset)


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    batch_size: int = 32,
    stream: TextIO | None = None,
    before: Callable[[int, str], None] | None = None,
    on_result: Callable[[int, Completion], None] | None = None,
) -> list[Completion]:
    """Continue each prompt with a GPT.

    With ``stream``, prompts run one at a time and each continuation is written to ``stream``
    as its tokens arrive (``before(i, prompt)`` is called first); otherwise ``batch_size``
    prompts run together. ``on_result(i, completion)`` is called as each result is ready.
    """
    ids = encode_all(tokenizer, list(prompts), "prompt")
    config, eos_ids = with_special_ids(model, tokenizer, config)
    optimize_for_decoding(model, batch_size=config.num_beams * (1 if stream is not None else min(len(ids), batch_size)))
    results: list[Completion] = []

    def done(i: int, new: list[int]) -> None:
        results.append(Completion(prompts[i], _decode(tokenizer, new, eos_ids, config.stop), len(new)))
        if on_result is not None:
            on_result(i, results[-1])

    if stream is not None:
        for i, p in enumerate(ids):
            if before is not None:
                before(i, prompts[i])
            streamer = TextStreamer(tokenizer, out=stream, eos_ids=eos_ids, stop=config.stop)
            new = generate_lists(model, [p], _seeded(config, i), tokenizer=tokenizer, streamer=streamer)[0]
            streamer.flush()
            done(i, new)
        return results
    for start, chunk in batches(ids, batch_size):
        for j, new in enumerate(generate_lists(model, chunk, _seeded(config, start), tokenizer=tokenizer)):
            done(start + j, new)
    return results


def translate_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    config: GenerationConfig,
    *,
    batch_size: int = 32,
    is_hf: bool = False,
    on_result: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Translate each text with an encoder-decoder. Our seq2seq data encodes sources without
    special tokens; Hugging Face tokenizers add their own (``is_hf``: Marian's ``</s>``)."""
    rows = encode_all(tokenizer, list(texts), "source", add_special_tokens=is_hf)
    max_len = model.config.max_len
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"source {i + 1} is empty")
        if len(r) > max_len:
            log.warning("source %d has %d tokens; keeping the first %d (max_len)", i + 1, len(r), max_len)
            rows[i] = r[:max_len]
    pad_id = first_not_none(getattr(tokenizer, "pad_id", None), model.config.pad_token_id, 0)
    config, eos_ids = with_special_ids(model, tokenizer, config)
    device = device_of(model)
    optimize_for_decoding(model, batch_size=config.num_beams * min(len(rows), batch_size))
    out: list[str] = []
    for start, chunk in batches(rows, batch_size):
        src, mask = pad(chunk, pad_id)
        new = generate_seq2seq_lists(model, src.to(device), _seeded(config, start), src_mask=mask.to(device),
                                     tokenizer=tokenizer)
        for j, ids in enumerate(new):
            out.append(_decode(tokenizer, ids, eos_ids, config.stop))
            if on_result is not None:
                on_result(start + j, out[-1])
    return out

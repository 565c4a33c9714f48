"""Text in, text out: what the inference commands and :func:`glassformer.load` run.

``generate_texts`` (GPT), ``translate_texts`` (encoder-decoder), ``fill_mask_texts``,
``classify_texts`` and ``embed_texts`` (BERT). The command line (:mod:`glassformer.cli`) and
:class:`glassformer.api.Pipeline` call these functions with the same :class:`GenerationConfig`
and the same batching, so an input gives the same output from either face. Inputs are encoded
and wrapped as the model was trained (the tokenizer knows how:
:meth:`~glassformer.tokenizers.base.Tokenizer.encode_input`), batched (``batch_size`` at a time;
with a seed, input i always draws with ``seed + i``), decoded without end-of-sequence ids and cut
at the first stop string.

These functions never change the caller's model: the faster CPU decoding layout is an explicit
step, :func:`~glassformer.generation.layout.optimize_for_decoding`, which returns a prepared copy
(the command line and ``glassformer.load`` apply it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from glassformer.data.batching import pad
from glassformer.errors import DataError, GlassformerError
from glassformer.generation.config import GenerationConfig
from glassformer.generation.gpt import generate_lists, window_keep
from glassformer.generation.loop import first_not_none
from glassformer.generation.seq2seq import generate_seq2seq_lists
from glassformer.generation.streaming import TextStreamer, cut_at_stop
from glassformer.io import check_text
from glassformer.tokenizers.base import pad_id

log = logging.getLogger(__name__)


def encode_all(texts: Sequence[str], what: str, encode: Callable[[str], list[int]]) -> list[list[int]]:
    """``encode(text)`` of each text; an error names the input that could not be encoded."""
    out = []
    for i, text in enumerate(texts):
        text = check_text(text, f"{what} {i + 1}")  # a str of valid Unicode (lone surrogates refused)
        try:
            out.append(encode(text))
        except DataError as e:
            raise DataError(f"{what} {i + 1}: {e}") from None
    return out


def batches(items: list, size: int) -> Iterator[tuple[int, list]]:
    """(offset, chunk) pairs of at most ``size`` items."""
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for i in range(0, len(items), size):
        yield i, items[i : i + size]


def device_of(model):
    """The device the model's parameters live on."""
    return next(model.parameters()).device


# ---------------------------------------------------------------- what a model can do, asked of the family protocol

# each text task and what it needs of the model
NEEDS = {"generate": "a decoder-only model with a next-token head", "translate": "an encoder-decoder",
         "fill-mask": "a masked-LM head", "classify": "a classification head", "embed": "an encoder-only model"}


class TaskError(GlassformerError, ValueError):
    """A model that lacks what a task needs (a language-model head, a classifier, an encoder ...)."""


def tasks_of(model) -> list[str]:
    """The text tasks ``model`` can do, in :data:`NEEDS` order: read from what it predicts, whether it
    needs a target, its stacks and its classifier (not from its family's name)."""
    can = {"generate": model.predicts == "next" and not model.needs_target,
           "translate": model.predicts == "next" and model.needs_target,
           "fill-mask": model.predicts == "masked",
           "classify": getattr(model, "classifier", None) is not None,
           "embed": tuple(model.stacks) == ("encoder",)}
    return [task for task in NEEDS if can[task]]


def require_task(model, task: str, where: str = "this model",
                 suggest: Callable[[str], str] | None = None) -> None:
    """Refuse, before any work, a model that cannot do ``task``: say what it lacks and what it can
    do instead (``suggest(task)`` spells an alternative; default: the task's name)."""
    can = tasks_of(model)
    if task in can:
        return
    fits = " or ".join(map(suggest or str, can)) if can else None
    hint = f"try: {fits}" if fits else "no text task fits it; explain, attention and heads look inside it"
    raise TaskError(f"{task} needs {NEEDS[task]}, which {where} lacks (it holds a {type(model).__name__}); {hint}")


@dataclass
class Completion:
    """One prompt's result."""

    prompt: str
    text: str  # the continuation: no eos, cut before the first stop string
    tokens: int  # how many tokens were generated (the eos included)


def ids_beyond_tokenizer(model, tokenizer) -> range:
    """The ids the model can score but the tokenizer cannot write: ``[tokenizer vocab, model vocab)``.

    Real checkpoints pad their embedding to a round size (Qwen2.5-0.5B: 151936 rows for 151665
    tokenizer ids); those rows were never trained as tokens, and text has no way to show them."""
    known = getattr(tokenizer, "vocab_size", None)
    rows = int(model.config.vocab_size)
    return range(rows, rows) if known is None else range(min(int(known), rows), rows)


def within_tokenizer(model, tokenizer, config: GenerationConfig) -> GenerationConfig:
    """``config`` with the ids beyond the tokenizer (:func:`ids_beyond_tokenizer`) added to
    ``suppress_tokens``, so they can never be chosen; the config itself when there are none. The
    decoding loop turns ``suppress_tokens`` into one (V,) mask before the first step."""
    extra = ids_beyond_tokenizer(model, tokenizer)
    if not extra:
        return config
    log.debug("the model has %d more ids than its tokenizer; they are never generated", len(extra))
    return config.replace(suppress_tokens=tuple(dict.fromkeys([*config.suppress_tokens, *extra])))


def with_special_ids(model, tokenizer, config: GenerationConfig) -> tuple[GenerationConfig, list[int]]:
    """``config`` with eos and bos filled in (the config's, else the model's, else the tokenizer's)
    and the ids the tokenizer lacks suppressed (:func:`within_tokenizer`), and the eos ids as a list."""
    eos = first_not_none(config.eos_token_id, model.config.eos_token_id, getattr(tokenizer, "eos_id", None))
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    bos = first_not_none(config.bos_token_id, model.config.bos_token_id, getattr(tokenizer, "bos_id", None))
    config = within_tokenizer(model, tokenizer, config)
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
    require_task(model, "generate")
    ids = encode_all(prompts, "prompt", tokenizer.encode_prompt)
    max_len = model.config.max_len
    for i, p in enumerate(ids):  # the sliding window would drop its beginning unseen: say so, as translate does
        if len(p) > max_len:
            log.warning("prompt %d has %d tokens, more than the %d the model reads; generating from its last %d",
                        i + 1, len(p), max_len, window_keep(max_len))
    config, eos_ids = with_special_ids(model, tokenizer, config)
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
    on_result: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Translate each text with an encoder-decoder; sources are encoded as the model was trained
    (:meth:`~glassformer.tokenizers.base.Tokenizer.encode_source`)."""
    require_task(model, "translate")
    rows = encode_all(texts, "source", tokenizer.encode_source)
    max_len = model.config.max_len
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"source {i + 1} is empty")
        if len(r) > max_len:
            log.warning("source %d has %d tokens; keeping the first %d (max_len)", i + 1, len(r), max_len)
            rows[i] = r[:max_len]
    fill = pad_id(model.config, tokenizer)
    config, eos_ids = with_special_ids(model, tokenizer, config)
    device = device_of(model)
    out: list[str] = []
    for start, chunk in batches(rows, batch_size):
        src, mask = pad(chunk, fill)
        new = generate_seq2seq_lists(model, src.to(device), _seeded(config, start), src_mask=mask.to(device),
                                     tokenizer=tokenizer)
        for j, ids in enumerate(new):
            out.append(_decode(tokenizer, ids, eos_ids, config.stop))
            if on_result is not None:
                on_result(start + j, out[-1])
    return out


# ------------------------------------------------------------------------ BERT: fill-mask, classify, embed
#
# Texts are wrapped the way the model was trained (``[CLS] ... [SEP]``: the tokenizer's
# :meth:`encode_input`); a text longer than the model reads (its ``max_len``, or the checkpoint's
# declared maximum) is cut, with one warning line. ``embed_texts`` on a sentence-transformers
# directory follows its ``modules.json`` (see :mod:`glassformer.interop.sentence_transformers`).


def _encode_inputs(tokenizer, texts: Sequence[str], max_len: int | None) -> list[list[int]]:
    """Wrapped, cut ids of each text (:meth:`~glassformer.tokenizers.base.Tokenizer.encode_input`)."""
    rows = []
    for i, text in enumerate(texts):
        try:
            rows.append(tokenizer.encode_input(text, max_len, what=f"text {i + 1}"))
        except DataError as e:
            raise DataError(f"text {i + 1}: {e}") from None
        if not rows[-1]:
            raise ValueError(f"text {i + 1} is empty")
    return rows


def _padded_batches(model, tokenizer, rows: list[list[int]], batch_size: int):
    """(offset, ids, mask) for each padded batch of ``batch_size`` rows, on the model's device."""
    device = device_of(model)
    for start, chunk in batches(rows, batch_size):
        ids, mask = pad(chunk, pad_id(model.config, tokenizer))
        yield start, ids.to(device), mask.to(device)


def mask_id_of(model, tokenizer) -> int | None:
    """The mask token's id: the tokenizer's, else the model config's (None: neither has one)."""
    return tokenizer.mask_id if tokenizer.mask_id is not None else model.config.mask_token_id


def visible_token(text: str) -> str:
    """A candidate as a reader should see it: its text without surrounding spaces, or, when it is
    only whitespace, that whitespace spelt out (``\\n``, ``\\t``, ``␣`` for a space)."""
    if text.strip():
        return text.strip()
    return text.encode("unicode_escape").decode("ascii").replace(" ", "␣")


def _mask_row(tokenizer, text: str, mask_text: str, mask_id: int) -> list[int]:
    """Wrapped ids of a text holding mask tokens."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except DataError:
        ids = []  # e.g. a char tokenizer that never saw "<" or "[": encode around the mask
    if mask_id not in ids:  # a tokenizer that reads the mask token as plain characters (char-level)
        pieces = [tokenizer.encode(piece, add_special_tokens=False) for piece in text.split(mask_text)]
        ids = [t for k, piece in enumerate(pieces) for t in ([mask_id] if k else []) + piece]
    return tokenizer.wrap(ids)


def fill_mask_texts(model, tokenizer, texts: Sequence[str], *, top_k: int = 5, batch_size: int = 32,
                    on_result=None) -> list[list[list[dict]]]:
    """For each text, for each of its mask tokens, the ``top_k`` candidates as ``{"token", "id", "p"}``.
    ``on_result(i, masks)`` is called as each text's result is ready."""
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    require_task(model, "fill-mask")
    mask_id = mask_id_of(model, tokenizer)
    if mask_id is None:
        raise DataError("the tokenizer has no mask token; fill-mask needs one")
    mask_text = tokenizer.id_to_token(mask_id)
    rows = []
    for i, text in enumerate(texts):
        if mask_text not in text:
            raise ValueError(f"text {i + 1} has no {mask_text} to fill: {text!r}")
        try:
            row = _mask_row(tokenizer, text, mask_text, mask_id)
        except DataError as e:
            raise DataError(f"text {i + 1}: {e}") from None
        if len(row) > model.config.max_len:
            raise ValueError(f"text {i + 1} has {len(row)} tokens, more than max_len={model.config.max_len}")
        rows.append(row)
    results: list[list[list[dict]]] = []
    for start, ids, mask in _padded_batches(model, tokenizer, rows, batch_size):
        for j, per_mask in enumerate(model.fill_mask(ids, mask, mask_token_id=mask_id, top_k=top_k)):
            results.append([[{"token": visible_token(tokenizer.decode([t])) or tokenizer.id_to_token(t), "id": t,
                              "p": round(p, 6)} for t, p in zip(cand, probs)] for cand, probs in per_mask])
            if on_result is not None:
                on_result(start + j, results[-1])
    return results


def classify_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 32, on_result=None) -> list[dict]:
    """For each text, ``{"label", "probabilities"}`` (every label's probability, rounded to 6 places).
    ``on_result(i, result)`` is called as each text's result is ready."""
    require_task(model, "classify")
    rows = _encode_inputs(tokenizer, texts, model.config.max_len)
    results: list[dict] = []
    for start, ids, mask in _padded_batches(model, tokenizer, rows, batch_size):
        probs, names = model.classify(ids, mask)
        for j, p in enumerate(probs.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            results.append({"label": names[best], "probabilities": dict(zip(names, (round(x, 6) for x in p)))})
            if on_result is not None:
                on_result(start + j, results[-1])
    return results


def embed_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 32, model_dir=None):
    """Sentence vectors, a float32 numpy array (N, C): what ``model_dir``'s sentence-transformers
    ``modules.json`` declares, else mean-pooled over the real tokens and L2-normalised."""
    from glassformer.interop.sentence_transformers import (
        SentenceConfig,
        apply_lower_case,
        embed_ids,
        read_sentence_config,
    )
    from glassformer.tokenizers.base import length_limit

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    require_task(model, "embed")
    sentence = read_sentence_config(model_dir) if model_dir is not None else None  # None without modules.json
    if sentence is not None:
        lower_text = sentence.do_lower_case and not apply_lower_case(tokenizer)
        inputs = [t.lower() for t in texts] if lower_text else list(texts)
        rows = _encode_inputs(tokenizer, inputs, length_limit(model.config.max_len, sentence.max_seq_length))
    else:
        rows = _encode_inputs(tokenizer, texts, model.config.max_len)
    return embed_ids(model, rows, pad_id(model.config, tokenizer), sentence or SentenceConfig(), batch_size)  # (N, C)

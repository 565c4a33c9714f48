"""``glassformer generate | translate | fill-mask | classify | embed MODEL_DIR ...``.

A thin layer over the Python API: read prompts (``--prompt``, repeatable, or stdin, one per
line), tokenize, call :func:`~glassformer.generation.generate` / ``Transformer.generate`` /
``BERT.fill_mask | classify | embed``, print. MODEL_DIR is a glassformer save or run directory
or a Hugging Face checkpoint; ``generation_config.json`` in it supplies decoding defaults
(see :mod:`.genconfig`), which flags override.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from glassformer.errors import DataError
from glassformer.generation.genconfig import read_generation_config

log = logging.getLogger(__name__)

DEFAULTS = dict(max_new_tokens=64, temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0, seed=None,
                beam=1, length_penalty=1.0, stop=None, eos_token_id=None, suppress_tokens=None)
FAMILY_COMMANDS = {"gpt": "generate", "transformer": "translate", "bert": "fill-mask, classify or embed"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the five inference commands."""
    from glassformer.generation import command_bert

    p = subparsers.add_parser("generate", help="continue text with a GPT", description=cmd_generate.__doc__)
    _common(p)
    _decoding(p)
    p.add_argument("--stop", action="append", help="stop a prompt's generation at this string (repeatable)")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they are produced (default: on for a single prompt)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser("translate", help="translate with an encoder-decoder", description=cmd_translate.__doc__)
    _common(p)
    _decoding(p)
    p.add_argument("--length-penalty", type=float, default=None, help="beam score = log P / length ** this (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per source")
    p.set_defaults(func=cmd_translate)

    command_bert.register(subparsers, _common)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a glassformer run/save directory or a Hugging Face checkpoint")
    p.add_argument("--prompt", "--text", dest="prompts", action="append", metavar="TEXT",
                   help="input text (repeatable); without it, one input per line of stdin")
    p.add_argument("--batch-size", type=int, default=32, help="inputs run together (default 32)")


def _decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None, help=f"default {DEFAULTS['max_new_tokens']}")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample among the most likely tokens holding mass p")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats (default 1)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--beam", type=int, default=None, help="beam width (encoder-decoder models; default 1)")


# ------------------------------------------------------------------------------ shared


def read_inputs(args: argparse.Namespace) -> list[str]:
    """``--prompt`` values, else the lines of stdin (a trailing newline does not add an input)."""
    if args.prompts is not None:
        return list(args.prompts)
    if sys.stdin is None or sys.stdin.isatty():
        raise ValueError("no input: pass --prompt TEXT or pipe one input per line on stdin")
    lines = sys.stdin.read().splitlines()
    if not lines:
        raise ValueError("no input: stdin was empty")
    return lines


def load(args: argparse.Namespace, family: str, command: str):
    """(model, tokenizer, is_hf) from MODEL_DIR, refusing a model of the wrong family."""
    from glassformer.loading import is_glassformer_dir, load_model_and_tokenizer

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    found = model.config.model_type
    if found != family:
        raise ValueError(f"{command} needs a {family} model; {args.model_dir} holds a {found} model "
                         f"(use {FAMILY_COMMANDS.get(found, 'another command')})")
    return model, tokenizer, not is_glassformer_dir(args.model_dir)


def settings(args: argparse.Namespace, keys: tuple[str, ...]) -> dict[str, Any]:
    """Flags, else generation_config.json, else built-in defaults."""
    stored = read_generation_config(args.model_dir)
    out = {}
    for key in keys:
        flag = getattr(args, key, None)
        out[key] = flag if flag is not None else stored.get(key, DEFAULTS[key])
    return out


def encode_all(tokenizer, texts: list[str], what: str, add_special_tokens: bool = False) -> list[list[int]]:
    """Token ids of each text; an error names the input that could not be encoded."""
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(tokenizer.encode(text, add_special_tokens=add_special_tokens))
        except DataError as e:
            raise DataError(f"{what} {i + 1}: {e}") from None
    return out


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield i, items[i : i + size]


def emit(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ------------------------------------------------------------------------------ generate


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue each prompt with a GPT (greedy unless --temperature > 0)."""
    from glassformer.generation import TextStreamer, generate_lists, optimize_for_decoding
    from glassformer.generation.streaming import cut_at_stop

    s = settings(args, ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "beam",
                        "stop", "eos_token_id", "suppress_tokens"))
    _check(s)
    if s["beam"] != 1:
        raise ValueError("--beam is not supported for GPT generation (beam search is for encoder-decoder "
                         "models: use translate); use greedy decoding or sampling")
    prompts = read_inputs(args)
    model, tokenizer, _ = load(args, "gpt", "generate")
    optimize_for_decoding(model)
    ids = encode_all(tokenizer, prompts, "prompt")
    eos = s["eos_token_id"]
    if eos is None:
        eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    kw = dict(max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
              repetition_penalty=s["repetition_penalty"], eos_token_id=eos_ids, stop=s["stop"],
              tokenizer=tokenizer, bos_token_id=_bos(model, tokenizer), suppress_tokens=s["suppress_tokens"])
    stop = s["stop"] or []
    stream = args.stream if args.stream is not None else (len(prompts) == 1 and not args.json)
    if stream and args.json:
        raise ValueError("--stream and --json do not mix; pass --no-stream with --json")
    if stream:  # one prompt at a time, printed as it grows
        for i, (text, p) in enumerate(zip(prompts, ids)):
            if i:
                emit("\n")
            emit(text)
            streamer = TextStreamer(tokenizer, out=sys.stdout, eos_ids=eos_ids, stop=stop)
            seed = None if s["seed"] is None else s["seed"] + i  # the seed a batched run would give it
            generate_lists(model, [p], seed=seed, streamer=streamer, **kw)
            streamer.flush()
            emit("\n")
        return 0
    for start, chunk in batches(ids, args.batch_size):
        seed = None if s["seed"] is None else s["seed"] + start
        new = generate_lists(model, chunk, seed=seed, **kw)
        for j, row in enumerate(new):
            out = cut_at_stop(tokenizer.decode([t for t in row if t not in eos_ids], skip_special_tokens=True), stop)
            prompt = prompts[start + j]
            if args.json:
                emit(json.dumps({"prompt": prompt, "completion": out, "tokens": len(row)}, ensure_ascii=False) + "\n")
            else:
                emit(("\n" if start + j else "") + prompt + out + "\n")
    return 0


def _check(s: dict[str, Any]) -> None:
    """Refuse bad settings before anything is loaded or printed."""
    from glassformer.generation.gpt import check_max_new_tokens
    from glassformer.generation.sampling import validate_sampling

    check_max_new_tokens(s["max_new_tokens"])
    validate_sampling(s["temperature"], s["top_k"], s["top_p"], s["repetition_penalty"])


def _bos(model, tokenizer) -> int | None:
    return model.config.bos_token_id if model.config.bos_token_id is not None else tokenizer.bos_id


# ----------------------------------------------------------------------------- translate


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate each source text with an encoder-decoder Transformer (greedy or --beam N)."""
    from glassformer.data.batching import pad
    from glassformer.generation import generate_seq2seq_lists, optimize_for_decoding

    s = settings(args, ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "beam",
                        "length_penalty", "eos_token_id", "suppress_tokens"))
    _check(s)
    if s["beam"] < 1:
        raise ValueError(f"--beam must be >= 1, got {s['beam']}")
    sampling = s["temperature"] != 0 or s["top_k"] is not None or s["top_p"] is not None or s["repetition_penalty"] != 1
    if s["beam"] > 1 and sampling and args.beam is None:
        s["beam"] = 1  # sampling flags beat a beam width that only came from generation_config.json
    if s["beam"] > 1 and sampling:
        raise ValueError("beam search is deterministic: drop --temperature/--top-k/--top-p/--repetition-penalty, "
                         "or use --beam 1")
    texts = read_inputs(args)
    model, tokenizer, is_hf = load(args, "transformer", "translate")
    optimize_for_decoding(model)
    # our seq2seq data encodes sources without specials; Hugging Face tokenizers add their own (Marian's </s>)
    rows = encode_all(tokenizer, texts, "source", add_special_tokens=is_hf)
    max_len = model.config.max_len
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"source {i + 1} is empty")
        if len(r) > max_len:
            log.warning("source %d has %d tokens; keeping the first %d (max_len)", i + 1, len(r), max_len)
            rows[i] = r[:max_len]
    pad_id = _first(tokenizer.pad_id, model.config.pad_token_id, 0)
    eos = s["eos_token_id"] if s["eos_token_id"] is not None else _first(model.config.eos_token_id, tokenizer.eos_id)
    for start, chunk in batches(rows, args.batch_size):
        src, mask = pad(chunk, pad_id)
        device = next(model.parameters()).device
        out = generate_seq2seq_lists(
            model, src.to(device), mask.to(device), max_new_tokens=s["max_new_tokens"], beam=s["beam"],
            length_penalty=s["length_penalty"], eos_token_id=eos, temperature=s["temperature"], top_k=s["top_k"],
            top_p=s["top_p"], repetition_penalty=s["repetition_penalty"],
            seed=None if s["seed"] is None else s["seed"] + start, suppress_tokens=s["suppress_tokens"],
        )
        eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        for j, ids in enumerate(out):
            text = tokenizer.decode([t for t in ids if t not in eos_ids], skip_special_tokens=True)
            if args.json:
                emit(json.dumps({"source": texts[start + j], "translation": text}, ensure_ascii=False) + "\n")
            else:
                emit(text + "\n")
    return 0


def _first(*values):
    return next((v for v in values if v is not None), None)


def write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same directory and rename: never half-written."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def device_of(model) -> torch.device:
    return next(model.parameters()).device

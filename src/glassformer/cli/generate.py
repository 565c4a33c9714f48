"""``glassformer generate | translate MODEL_DIR ...``.

A thin layer over :mod:`glassformer.generation.text`: read prompts (``--prompt``, repeatable,
or stdin, one per line), build the :class:`~glassformer.generation.config.GenerationConfig` from
the flags and the model's ``generation_config.json`` (:mod:`.flags`), lay the weights out for
decoding that many rows (:func:`~glassformer.generation.layout.optimize_for_decoding`, which
returns a prepared copy), run, print. MODEL_DIR is a glassformer save or run directory or a
Hugging Face checkpoint.

Only light modules are imported at the top, so ``--help`` does not pay for torch; the run
functions import the model code when they run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys

from glassformer.cli.common import add_input_args, emit, header, load, read_inputs
from glassformer.cli.flags import add_generation_flags, config_from_args, given

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate`` and ``translate``."""
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("generate", help="continue text with a GPT", description=inspect.cleandoc(cmd_generate.__doc__),
                              add_help=False, formatter_class=raw)
    add_input_args(p)
    add_generation_flags(p)
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="print tokens as they are produced (default: on for a single prompt without beams)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt")
    p.set_defaults(func=cmd_generate)

    p = subparsers.add_parser("translate", help="translate with an encoder-decoder", description=inspect.cleandoc(cmd_translate.__doc__),
                              add_help=False, formatter_class=raw)
    add_input_args(p)
    add_generation_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per source")
    p.set_defaults(func=cmd_translate)


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue each prompt with a GPT. Several prompts run as a batch; each output opens with a
    "=== i/n" line. With --stream (the default for one prompt) text appears as it is produced."""
    from glassformer.generation.layout import optimize_for_decoding
    from glassformer.generation.text import generate_texts

    config = config_from_args(args, args.model_dir)  # bad settings are refused before anything loads
    prompts = read_inputs(args)
    stream = args.stream if args.stream is not None else (len(prompts) == 1 and not args.json and config.num_beams == 1)
    if stream and args.json:
        raise ValueError("--stream and --json do not mix; pass --no-stream with --json")
    if stream and config.num_beams > 1:
        raise ValueError("--stream shows one sequence as it grows; beam search chooses at the end (use --no-stream)")
    model, tokenizer = load(args, "generate")
    n = len(prompts)
    rows = config.num_beams * (1 if stream else min(n, args.batch_size))
    model = optimize_for_decoding(model, batch_size=rows)

    def opening(i: int, prompt: str) -> None:
        emit((header(i, n, prompt) if n > 1 else "") + prompt)

    def result(i: int, c) -> None:
        if args.json:
            emit(json.dumps({"prompt": c.prompt, "completion": c.text, "tokens": c.tokens}, ensure_ascii=False) + "\n")
        elif stream:
            emit("\n")  # the text itself was streamed
        else:
            opening(i, c.prompt)
            emit(c.text + "\n")

    generate_texts(model, tokenizer, prompts, config, batch_size=args.batch_size, stream=sys.stdout if stream else None,
                   before=opening, on_result=result)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate each source text with an encoder-decoder Transformer (greedy, sampled or --beam N);
    one line per source."""
    from glassformer.generation.layout import optimize_for_decoding
    from glassformer.generation.seq2seq import max_new_tokens_limit
    from glassformer.generation.text import translate_texts

    config = config_from_args(args, args.model_dir)
    texts = read_inputs(args)
    model, tokenizer = load(args, "translate")
    limit = max_new_tokens_limit(model)
    if given(args, "max_new_tokens") and config.max_new_tokens > limit:  # only the user's own request is worth a word
        log.warning("--max-new-tokens %d: this decoder holds %d positions; generating at most %d tokens",
                    config.max_new_tokens, limit + 1, limit)

    def result(i: int, text: str) -> None:
        if args.json:
            emit(json.dumps({"source": texts[i], "translation": text}, ensure_ascii=False) + "\n")
        else:
            emit(text + "\n")

    model = optimize_for_decoding(model, batch_size=config.num_beams * min(len(texts), args.batch_size))
    translate_texts(model, tokenizer, texts, config, batch_size=args.batch_size, on_result=result)
    return 0

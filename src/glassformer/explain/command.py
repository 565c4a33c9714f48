"""``glassformer explain`` and ``glassformer attention``; the parsers of ``heads``, ``lens``,
``ablate`` and ``attribute`` too (run by :mod:`glassformer.explain.insight`).

    glassformer explain MODEL "text" [--layer L] [--head H] [--token I] [--kind K] [--target T]
    glassformer explain [MODEL "text" ...] --masks [--padding-side left|right]
    glassformer attention MODEL "text" --out FILE.png|FILE.html [--layer L] [--head H] [--kind K]

MODEL is a model directory: one saved by glassformer (a run directory or ``save_pretrained``)
or a Hugging Face checkpoint. For the encoder-decoder, "text" is the source; the target is
``--target`` or the model's own greedy translation.

This module is light to import (no torch at the top): ``--help`` builds these parsers at once;
the model code is imported inside the functions that run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

MODEL_HELP = "model directory (glassformer or Hugging Face)"
SOURCE_HELP = "the text (the source, for an encoder-decoder)"
KINDS = ["auto", "encoder-self", "decoder-self", "cross"]
ROLE_HELP = ("previous_token, induction, duplicate_token, sink (Olsson et al. 2022), scored on repeated random "
             "sequences")


def _model(path: str):
    from glassformer.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(path)


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (GPT, seq2seq)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def _model_and_text(p: argparse.ArgumentParser, text_help: str = SOURCE_HELP, *, target_help: str | None = None) -> None:
    """MODEL, "text" and, for an encoder-decoder, ``--target``."""
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("text", help=text_help)
    p.add_argument("--target", default=None, help=target_help or "encoder-decoder: the decoder's text so far")


def _insight(name: str):
    """A runner from :mod:`glassformer.explain.insight`, imported when the command runs."""
    def run(args: argparse.Namespace) -> int:
        from glassformer.explain import insight  # torch: imported only when running, keeps --help fast

        return getattr(insight, name)(args)

    return run


def register(subparsers: Any) -> None:
    """Add ``explain``, ``attention``, ``heads``, ``lens``, ``ablate`` and ``attribute``."""
    p = subparsers.add_parser(
        "explain", help="the four steps of attention, with real numbers, for one token",
        description="Walk one head through QKᵀ, ÷√d_k, softmax and ·V for one query token, and check the "
        "result against the model's own attention output (max difference ≤ 1e-5).",
    )
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("text", nargs="*", help="the text (the source, for an encoder-decoder); several with --masks")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)
    p.add_argument("--token", type=int, default=None, help="query position (default: the last)")
    p.add_argument("--kind", choices=KINDS, default="auto")
    p.add_argument("--target", default=None, help="encoder-decoder: the target text (default: greedy translation)")
    p.add_argument("--masks", action="store_true", help="show how causal and padding masks combine for a padded batch")
    p.add_argument("--padding-side", choices=["right", "left"], default="right")
    p.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    p.set_defaults(func=run_explain)

    a = subparsers.add_parser(
        "attention", help="attention heatmaps (PNG) or the interactive viewer (HTML)",
        description="PNG: --layer and --head: one head; --layer: every head of that layer; neither: every "
        "layer's mean; for an encoder-decoder's cross attention: the source/target alignment. HTML: the "
        "self-contained viewer with the head view and the generation inspector.",
    )
    _model_and_text(a, "the text (the prompt for GPT, the source for an encoder-decoder)",
                    target_help="encoder-decoder: the target text (default: greedy translation)")
    a.add_argument("--out", required=True, help="FILE.png or FILE.html")
    a.add_argument("--layer", type=int, default=None)
    a.add_argument("--head", type=int, default=None)
    a.add_argument("--kind", choices=KINDS, default="auto")
    _sampling_flags(a)
    a.set_defaults(func=run_attention)
    _register_insight(subparsers)


def _command(subparsers: Any, name: str, summary: str, description: str, run, text_help: str | None = SOURCE_HELP):
    """A parser with MODEL (and "text" and ``--target`` unless ``text_help`` is None) that runs ``run``."""
    p = subparsers.add_parser(name, help=summary, description=description)
    if text_help is None:
        p.add_argument("model", help=MODEL_HELP)
    else:
        _model_and_text(p, text_help)
    p.set_defaults(func=run)
    return p


def _register_insight(subparsers: Any) -> None:
    """``heads``, ``lens``, ``ablate`` and ``attribute``: run by :mod:`glassformer.explain.insight`."""
    h = _command(subparsers, "heads", "what each attention head does: previous-token, induction, duplicate-token, sink",
                 f"Score every head's role ({ROLE_HELP}) and print a layers × heads table of each head's top role "
                 "and score. --json gives every score.", _insight("run_heads"), text_help=None)
    h.add_argument("--json", action="store_true", help="every score of every head, as JSON")
    h.add_argument("--out", default=None, help="also write the model view (FILE.html): every layer × head, labelled")
    h.add_argument("--text", default=None, help="with --out: the text whose attention the thumbnails show")
    h.add_argument("--n", type=int, default=32, help="random tokens in one copy of the repeated sequence")
    h.add_argument("--batch", type=int, default=8, help="random sequences to average over")
    h.add_argument("--seed", type=int, default=0)

    p = _command(subparsers, "lens", "the logit lens: what each layer would predict",
                 "Read the residual stream after every layer through the final norm and the unembedding (BERT: its "
                 "MLM head) and show each position's top token with its probability. GPT's row at position t "
                 "predicts token t+1; BERT's predicts the token at t. The last layer is the model's own output.",
                 _insight("run_lens"))
    p.add_argument("--json", action="store_true", help="the top tokens of every layer and position, as JSON")
    p.add_argument("--out", default=None, help="also draw the grid as FILE.png")
    p.add_argument("--k", type=int, default=5, help="top tokens kept per cell (JSON)")

    a = _command(subparsers, "ablate", "switch heads off and see how the prediction changes",
                 "Silence heads (their output before W^O set to zero, or to its mean with --mode mean) and compare "
                 "the predicted distribution before and after: top tokens and KL(before ‖ after). GPT: the next "
                 "token; BERT: the first [MASK]; encoder-decoder: the next target token.", _insight("run_ablate"))
    a.add_argument("--head", action="append", required=True, metavar="L.H", help="layer.head, e.g. 1.3 (repeatable)")
    a.add_argument("--mode", choices=["zero", "mean"], default="zero")
    a.add_argument("--top", type=int, default=5, help="top tokens shown")
    a.add_argument("--json", action="store_true")

    t = _command(subparsers, "attribute", "direct logit attribution: which heads and FFN blocks wrote a token's logit",
                 "Each head's and each feed-forward block's direct contribution to one token's logit at the last "
                 "position, through the final LayerNorm with its scale frozen at the actual input; the embeddings "
                 "and biases are the stated remainder, and everything sums to the logit. Pre-LN models (GPT) only.",
                 _insight("run_attribute"), "the text (the prompt)")
    t.add_argument("--token", default=None, help="the token whose logit to explain (default: the model's top prediction)")
    t.add_argument("--top", type=int, default=10, help="largest parts listed")
    t.add_argument("--json", action="store_true")


# ----------------------------------------------------------------------------------- explain


def _target_ids(model, tokenizer, source_ids: list[int], target: str | None, max_new_tokens: int | None = None) -> list[int]:
    """The decoder input [start] + target: the given text, or the model's greedy output (without its
    last token, so each row is a step that emitted a token)."""
    from glassformer.explain.tokens import encode_text, start_token
    from glassformer.explain.trace import greedy_translation

    if target is not None:
        return [start_token(model, tokenizer)] + encode_text(tokenizer, target, add_special_tokens=False, what="target")
    context = greedy_translation(model, tokenizer, source_ids, max_new_tokens).context_ids
    return context[:-1] if len(context) > 1 else context


def run_explain(args: argparse.Namespace) -> int:
    if args.masks:
        return _run_masks(args)
    if args.model is None or len(args.text) != 1:
        raise ValueError('explain needs MODEL and one "text" (or --masks)')
    from glassformer.explain.capture import family  # torch: imported only when running, keeps --help fast
    from glassformer.explain.render import format_four_steps, four_steps_table
    from glassformer.explain.steps import four_steps, resolve_kind
    from glassformer.explain.tokens import encode_text, token_strings

    model, tokenizer = _model(args.model)
    kind = resolve_kind(model, args.kind)
    ids = encode_text(tokenizer, args.text[0], max_length=model.config.max_len)
    tgt = _target_ids(model, tokenizer, ids, args.target) if family(model) == "transformer" else None
    if args.target is not None and tgt is None:
        raise ValueError(f"--target is only for an encoder-decoder, not a {family(model)} model")
    q_ids = ids if kind == "encoder-self" else tgt if tgt is not None else ids
    k_ids = tgt if kind == "decoder-self" and tgt is not None else ids
    _check_layer_head(model, kind, args.layer, args.head)
    token = len(q_ids) - 1 if args.token is None else args.token
    if not 0 <= token < len(q_ids):
        raise ValueError(f"--token {token} is out of range: the {kind} queries are positions 0..{len(q_ids) - 1}")
    steps = four_steps(model, ids, args.layer, args.head, token, kind=kind, tgt_ids=tgt)
    k_tokens, q_tokens = token_strings(tokenizer, k_ids), token_strings(tokenizer, q_ids)
    if sys.stdout.isatty() and not args.plain:
        from rich.console import Console

        Console().print(four_steps_table(steps, k_tokens, q_tokens[token]))
    else:
        sys.stdout.write(format_four_steps(steps, k_tokens, q_tokens[token]))
    return 0 if steps.ok else 1


def _check_layer_head(model, kind: str, layer: int | None, head: int | None) -> None:
    from glassformer.explain.capture import attention_module, n_layers  # torch: keeps --help fast

    if layer is not None and not 0 <= layer < n_layers(model, kind):
        raise ValueError(f"--layer {layer} is out of range: the {kind} stack has layers 0..{n_layers(model, kind) - 1}")
    n_heads = attention_module(model, kind, 0).n_heads
    if head is not None and not 0 <= head < n_heads:
        raise ValueError(f"--head {head} is out of range: this model has heads 0..{n_heads - 1}")


def _run_masks(args: argparse.Namespace) -> int:
    from glassformer.explain.masks import build_mask_demo, format_masks

    model = tokenizer = None
    texts = list(args.text)
    if args.model is not None:
        if Path(args.model).is_dir():
            model, tokenizer = _model(args.model)
        else:  # no model directory: the first argument is text too
            texts.insert(0, args.model)
    demo = build_mask_demo(texts or None, tokenizer, model, padding_side=args.padding_side)
    sys.stdout.write(format_masks(demo))
    ok = demo.check is None or (demo.check.max_hidden_weight == 0.0 and demo.check.max_row_sum_error <= 1e-5)
    return 0 if ok else 1


# --------------------------------------------------------------------------------- attention


def run_attention(args: argparse.Namespace) -> int:
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise ValueError(f"--out {out}: give a .png or .html file name")
    if args.head is not None and args.layer is None and suffix == ".png":
        raise ValueError("--head needs --layer (which layer's head to draw)")
    from glassformer.explain.capture import attention_kinds, default_kind, family  # torch: keeps --help fast
    from glassformer.generation.sampling import validate_sampling

    validate_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    if args.max_new_tokens is not None and args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    model, tokenizer = _model(args.model)
    kind = default_kind(model) if args.kind == "auto" else args.kind
    if kind not in attention_kinds(model):
        raise ValueError(f"a {family(model)} model has no {kind} attention; it has {', '.join(attention_kinds(model))}")
    _check_layer_head(model, kind, args.layer, args.head)
    if args.target is not None and family(model) != "transformer":
        raise ValueError(f"--target is only for an encoder-decoder, not a {family(model)} model")
    if suffix == ".png":
        path = _png(model, tokenizer, args, kind, out)
    else:
        from glassformer.explain.viewer import save_attention_html

        path = save_attention_html(
            model, tokenizer, args.text, out, target=args.target,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            repetition_penalty=args.repetition_penalty, seed=args.seed,
            layers=None if args.layer is None else [args.layer],
        )
    print(path)
    return 0


def _png(model, tokenizer, args: argparse.Namespace, kind: str, out: Path) -> Path:
    from glassformer.explain import heatmaps
    from glassformer.explain.capture import attention_set, family
    from glassformer.explain.tokens import prepare

    if family(model) == "transformer" and kind == "cross" and args.head is None:
        weights, src_tokens, tgt_tokens = alignment(model, tokenizer, args.text, args.target, args.max_new_tokens)
        return heatmaps.save_cross_alignment(weights, src_tokens, tgt_tokens, out, layer=args.layer)
    target: Any = args.target
    if family(model) == "transformer" and target is None:
        src = prepare(model, tokenizer, args.text).input_ids
        target = _target_ids(model, tokenizer, src, None, args.max_new_tokens)[1:]
    prepared = prepare(model, tokenizer, args.text, target)
    aset = attention_set(model, prepared.input_ids, prepared.tokens, prepared.tgt_ids)
    maps, q, k = aset.get(kind), aset.q_tokens(kind), aset.k_tokens(kind)
    if args.layer is not None and args.head is not None:
        title = f"{kind} · layer {args.layer} · head {args.head}"
        return heatmaps.save_head_heatmap(maps[args.layer, args.head], q, k, out, title)
    if args.layer is not None:
        return heatmaps.save_layer_heatmaps(maps[args.layer], q, k, out, f"{kind} · layer {args.layer}, every head")
    return heatmaps.save_layer_means(maps, q, k, out, f"{kind} · every layer, mean of its heads")


def alignment(model, tokenizer, text: str, target: str | None = None, max_new_tokens: int | None = None):
    """Cross-attention between a source and the target: (L, H, T, S) weights, source and target tokens.

    Row t is the step that emitted target token t. Without ``target`` the model translates greedily
    and the rows are exactly the attention each generated token paid while being generated.
    """
    import numpy as np

    from glassformer.explain.capture import attention_set
    from glassformer.explain.tokens import prepare, token_strings
    from glassformer.explain.trace import greedy_translation

    src = prepare(model, tokenizer, text).input_ids
    if target is None:
        trace = greedy_translation(model, tokenizer, src, max_new_tokens)
        if not trace.steps:
            raise ValueError("the model generated nothing to align")
        weights = np.stack([s.attention["cross"] for s in trace.steps], axis=2)  # (L, H, T, S)
        return weights, token_strings(tokenizer, src), token_strings(tokenizer, trace.generated_ids)
    prepared = prepare(model, tokenizer, text, target)
    tgt_in = prepared.tgt_ids[:-1] if len(prepared.tgt_ids) > 1 else prepared.tgt_ids
    aset = attention_set(model, src, prepared.tokens, tgt_in)
    out_tokens = prepared.tokens["target"][1:] or prepared.tokens["target"]
    return aset.get("cross"), prepared.tokens["source"], out_tokens

"""``glassformer explain`` and ``glassformer attention``; the parsers of ``heads``, ``lens``,
``ablate``, ``patch`` and ``attribute`` too (run by :mod:`glassformer.cli.insight`). The work is the library's
(:mod:`glassformer.explain.texts`, :mod:`glassformer.explain.insight`); this module reads the line.

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
ROLE_HELP = ("previous_token, induction, duplicate_token (Olsson et al. 2022), current_token, sink, scored on repeated random "
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
    """A runner from :mod:`glassformer.cli.insight`, imported when the command runs."""
    def run(args: argparse.Namespace) -> int:
        from glassformer.cli import insight  # torch: imported only when running, keeps --help fast

        return getattr(insight, name)(args)

    return run


def register(subparsers: Any) -> None:
    """Add ``explain``, ``attention``, ``heads``, ``lens``, ``ablate``, ``patch`` and ``attribute``."""
    p = subparsers.add_parser(
        "explain", help="the four steps of attention, with real numbers, for one token",
        description="Walk one head through QKᵀ, ÷√d_k, softmax and ·V for one query token, and check the "
        "result against the model's own attention output (max difference ≤ 1e-5). With rotary positions "
        "(Llama, Mistral, Qwen2), also q and k before and after their rotation, and the scores without and "
        "with positions, checked against the model's own scores.",
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
    """``heads``, ``lens``, ``ablate``, ``patch`` and ``attribute``: run by :mod:`glassformer.cli.insight`."""
    h = _command(subparsers, "heads", "what each attention head does: previous-token, induction, duplicate-token, current-token, sink",
                 f"Score every head's role ({ROLE_HELP}) and print a layers × heads table of each head's top role "
                 "and score. --json gives every score.", _insight("run_heads"), text_help=None)
    h.add_argument("--json", action="store_true", help="every score of every head, as JSON")
    h.add_argument("--out", default=None, help="also write the model view (FILE.html): every layer × head, labelled")
    h.add_argument("--text", default=None, help="with --out: the text whose attention the thumbnails show")
    h.add_argument("--n", type=int, default=32, help="random tokens in one copy of the repeated sequence")
    h.add_argument("--batch", type=int, default=8, help="random sequences to average over")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--kind", choices=KINDS, default="auto",
                   help="the self-attention to score (default: the first the model runs; an encoder-decoder's "
                   "decoder-self reads the repeats as its target)")

    p = _command(subparsers, "lens", "the logit lens: what each layer would predict",
                 "Read the residual stream after every layer through the final norm and the unembedding (BERT: its "
                 "MLM head) and show each position's top token with its probability. GPT's row at position t "
                 "predicts token t+1; BERT's predicts the token at t. The last layer is the model's own output.",
                 _insight("run_lens"))
    p.add_argument("--json", action="store_true", help="the top tokens of every layer and position, as JSON")
    p.add_argument("--out", default=None, help="also draw the grid as FILE.png")
    p.add_argument("--k", type=int, default=5, help="top tokens kept per cell (JSON)")

    a = _command(subparsers, "ablate", "switch heads off and see how the output changes",
                 "Silence heads (their output before W^O set to zero, or to its mean with --mode mean) and compare "
                 "what the model reads out before and after. A classifier: its class probabilities and KL(before ‖ "
                 "after); GPT: the next token; BERT with its masked-LM head: the first [MASK]; encoder-decoder: the "
                 "next target token (top tokens and KL); an embedding model (sentence-transformers, train embed): the "
                 "cosine similarity of the sentence vector before and after (--pair: of the similarity to a second "
                 "text). With --each: silence every head of one attention alone and rank them by what the model "
                 "loses (a language model: its loss on the text), beside each head's role on random tokens; heads "
                 "that matter with no named role are flagged.", _insight("run_ablate"))
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--head", action="append", metavar="HEAD",
                       help="a head as `heads` labels it: encoder.L.H, decoder.L.H or cross.L.H; a bare L.H (e.g. 1.3) "
                       "means the model's main attention (GPT's and the encoder-decoder's decoder self-attention, "
                       "BERT's encoder self-attention); repeatable")
    which.add_argument("--each", action="store_true",
                       help="every head of one attention (--kind), one at a time, ranked by the change")
    a.add_argument("--kind", choices=KINDS, default="auto",
                   help="with --each: the attention whose heads are silenced (default: the model's main attention)")
    a.add_argument("--mode", choices=["zero", "mean"], default="zero")
    a.add_argument("--top", type=int, default=None, help="top tokens shown (default 5); with --each: heads shown (default: all)")
    _readout_flag(a)
    a.add_argument("--pair", default=None, metavar="TEXT",
                   help="embedding model: a second text; report its cosine similarity to the text before and after")
    a.add_argument("--json", action="store_true")

    p = subparsers.add_parser(
        "patch", help="activation patching: which activation carries the difference between two texts",
        description="Run the clean text, the corrupted text, and the corrupted text with one named activation "
        "(--site, e.g. encoder.1.attn.z or decoder.0.resid_post) taken from the clean run. The texts must tokenise "
        "to the same length. Reports, for each run: a classifier's class probabilities, a language model's top "
        "tokens, and the logit difference logit(A) − logit(B) (A: the clean answer, B: the corrupted one) with the "
        "share patching restores; an embedding model's cosine similarity to the clean and corrupted vectors.")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--clean", required=True, metavar="TEXT", help="the text whose activation is copied")
    p.add_argument("--corrupted", required=True, metavar="TEXT", help="the text the model runs on")
    p.add_argument("--site", required=True, metavar="NAME",
                   help="a named activation, {stack}.{layer}.{site}: e.g. encoder.1.attn.z, decoder.0.resid_post")
    p.add_argument("--positions", type=int, nargs="+", default=None, metavar="T",
                   help="patch only these positions (default: all)")
    p.add_argument("--target", default=None, help="encoder-decoder: the decoder's text so far (both runs)")
    p.add_argument("--label", default=None, help="classifier: the class A of the logit difference (default: the clean one)")
    p.add_argument("--token", default=None, help="language model: the token A of the logit difference (default: the clean one)")
    p.add_argument("--vs", default=None, metavar="B", help="the class or token B (default: the corrupted run's answer)")
    p.add_argument("--top", type=int, default=5, help="top tokens shown")
    _readout_flag(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_insight("run_patch"))

    t = _command(subparsers, "attribute", "which heads and FFN blocks wrote a token's or a class's logit",
                 "Each head's and each feed-forward block's share of one logit. --token: a token's logit at the last "
                 "position, directly through the final LayerNorm with its scale frozen (pre-LN models, GPT). --label: "
                 "a classifier's class logit, every LayerNorm's scale frozen and the pooler's tanh shared by DeepLIFT's "
                 "rescale rule (the default for a classifier: its predicted class). --vs B: the logit difference "
                 "logit(A) − logit(B). The direct parts sum to the logit exactly; --method ablation shows instead each "
                 "part's total effect (the logit minus the logit with it switched off), which does not sum.",
                 _insight("run_attribute"), "the text (the prompt)")
    t.add_argument("--token", default=None, help="the token whose logit to explain (default: the model's top prediction)")
    t.add_argument("--label", default=None, help="classifier: the class whose logit to explain (name or index)")
    t.add_argument("--vs", default=None, metavar="B", help="explain logit(A) − logit(B): a token, or a class with --label")
    t.add_argument("--method", choices=["direct", "ablation"], default="direct",
                   help="direct: shares that sum to the logit; ablation: each part's total effect (one run each)")
    t.add_argument("--top", type=int, default=10, help="largest parts listed")
    t.add_argument("--json", action="store_true")


def _readout_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--readout", choices=["auto", "classes", "tokens", "embedding"], default="auto",
                   help="what to compare (default: what the model's forward gives: a classifier's classes, a language "
                   "model's tokens, an encoder's sentence vector)")


# ----------------------------------------------------------------------------------- explain


def run_explain(args: argparse.Namespace) -> int:
    if args.masks:
        return _run_masks(args)
    if args.model is None or len(args.text) != 1:
        raise ValueError('explain needs MODEL and one "text" (or --masks)')
    from glassformer.explain.render import format_four_steps, four_steps_table  # torch: keeps --help fast
    from glassformer.explain.texts import explain_token

    model, tokenizer = _model(args.model)
    e = explain_token(model, tokenizer, args.text[0], args.layer, args.head, args.token, args.kind, args.target)
    if sys.stdout.isatty() and not args.plain:
        from rich.console import Console

        Console().print(four_steps_table(e.steps, e.k_tokens, e.q_token))
    else:
        sys.stdout.write(format_four_steps(e.steps, e.k_tokens, e.q_token))
    if e.rotary is not None:
        from glassformer.explain.rotary import format_rotary_view

        sys.stdout.write("\nwhere the rotation enters (rotary positions, before step 1): q and each k turned by their "
                         "positions; the scores above are the turned ones\n")
        sys.stdout.write(format_rotary_view(e.rotary, e.k_tokens) + "\n")
    return 0 if e.ok else 1


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
    from glassformer.explain.texts import check_layer_head, check_target, figure_kind, save_attention_png
    from glassformer.generation.sampling import validate_sampling

    validate_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    if args.max_new_tokens is not None and args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    model, tokenizer = _model(args.model)
    kind = figure_kind(model, args.kind)
    check_layer_head(model, kind, args.layer, args.head)
    check_target(model, args.target)
    if suffix == ".png":
        path = save_attention_png(model, tokenizer, args.text, out, kind, args.layer, args.head, args.target,
                                  args.max_new_tokens)
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

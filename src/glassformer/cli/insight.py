"""``glassformer heads | lens | ablate | patch | attribute``: the runners of the parsers in
:mod:`glassformer.cli.explain` (imported when one of these commands runs, so ``--help`` stays light).

    glassformer heads MODEL [--json] [--out heads.html] [--kind encoder-self|decoder-self]
    glassformer lens MODEL "text" [--json] [--out lens.png] [--k 5]
    glassformer ablate MODEL "text" --head HEAD [--head HEAD ...] [--mode zero|mean] [--pair TEXT] [--json]
    glassformer ablate MODEL "text" --each [--kind KIND] [--top N] [--json]
    glassformer patch MODEL --clean TEXT --corrupted TEXT --site NAME [--positions T ...] [--json]
    glassformer attribute MODEL "text" [--token WORD | --label CLASS] [--vs B] [--method direct|ablation] [--json]

HEAD is a label as ``heads`` prints it (``encoder.1.3``, ``decoder.1.3``, ``cross.1.3``) or a bare
``1.3`` for the model's main attention. The work is :mod:`glassformer.explain.insight`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from glassformer.explain import insight
from glassformer.explain.hooks import InterventionError


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def check_heads_memory(model, n: int, batch: int) -> None:
    """Refuse, before anything is drawn, a ``--batch`` × ``--n`` whose activations cannot fit: each
    of the ``batch`` rows of about 2n tokens keeps every layer's attention pattern (H, T, T), its
    residual streams and a row of logits per position (a generous estimate)."""
    from glassformer.memory import FP32, MemoryLimitError, available_bytes, format_bytes

    free = available_bytes(next(model.parameters()).device)
    if free is None:
        return
    t = 2 * n + 2  # the random tokens, repeated, and the tokenizer's framing
    specs = model.attentions_spec()
    row = sum(s.n_layers * s.n_heads * t * t * 2 for s in specs) * FP32  # scores and probabilities
    row += (sum(s.n_layers for s in specs) * 16 * model.config.d_model + 2 * model.config.vocab_size) * t * FP32
    if batch * row <= free:
        return
    fits = free // row
    hint = f"use --batch {fits} or less" if fits else "use a smaller --n"
    raise MemoryLimitError(f"--batch {batch} with --n {n}: scoring the heads needs about {format_bytes(batch * row)} "
                           f"but {format_bytes(free)} is available; {hint}")


def run_heads(args: argparse.Namespace) -> int:
    from glassformer.explain.heads import format_heads

    if args.out is not None and not args.out.lower().endswith((".html", ".htm")):
        raise InterventionError(f"--out {args.out}: the model view is written as .html")
    if args.text is not None and args.out is None:
        raise InterventionError("--text is the model view's text; give --out FILE.html too")
    if args.n < 2 or args.batch < 1:
        raise InterventionError("--n must be >= 2 and --batch >= 1")
    model, tokenizer = insight.load(args.model, require_tokenizer=args.out is not None)
    check_heads_memory(model, args.n, args.batch)
    if args.out is not None and args.text is None:  # the default text: checked before the scores are printed
        try:
            tokenizer.encode(insight.SAMPLE_TEXT)
        except ValueError as e:  # DataError too
            raise InterventionError(f"the model view's default text {insight.SAMPLE_TEXT!r} does not fit this "
                                    f"model's tokenizer ({e}); choose one with --text") from None
    kind = None if getattr(args, "kind", "auto") == "auto" else args.kind
    scores = insight.score_heads(model, tokenizer, n=args.n, batch=args.batch, seed=args.seed, kind=kind)
    if args.json:
        _emit_json({"model": args.model, **scores.to_json()})
    else:
        sys.stdout.write(format_heads(scores))
    if args.out is not None:
        from glassformer.explain.viewer import save_attention_html

        path = save_attention_html(model, tokenizer, args.text or insight.SAMPLE_TEXT, args.out, max_new_tokens=0,
                                   head_roles=scores)
        sys.stderr.write(f"model view: {path}\n")
    return 0


def run_lens(args: argparse.Namespace) -> int:
    from glassformer.explain.lens import format_lens, lens_json, save_lens_png

    if args.k < 1:
        raise InterventionError(f"--k must be >= 1, got {args.k}")
    if args.out is not None and not args.out.lower().endswith(".png"):
        raise InterventionError(f"--out {args.out}: the lens figure is written as .png")
    model, tokenizer = insight.load(args.model)
    lens, tokens, cells, top1 = insight.lens_report(model, tokenizer, args.text, args.target, args.k)
    word, sentence = insight.lens_predicts(model)
    if args.json:
        _emit_json({"model": args.model, "text": args.text, "family": model.config.model_type, "predicts": word,
                    **lens_json(lens, tokens, cells)})
    else:
        sys.stdout.write(f"logit lens: each layer's top guess for {sentence}, with its probability\n")
        sys.stdout.write(format_lens(lens, tokens, top1))
        sys.stdout.write(f"last layer == the model's logits (max difference {lens.max_error:.1e})\n")
    if args.out is not None:
        path = save_lens_png(lens, tokens, top1, args.out, title=f"logit lens — {args.text[:50]}")
        sys.stderr.write(f"wrote {path}\n")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    if args.top is not None and args.top < 1:
        raise InterventionError(f"--top must be >= 1, got {args.top}")
    if args.each:
        return _ablate_each(args)
    if args.kind != "auto":
        raise InterventionError("--kind chooses the attention of --each; with --head, name it in the label (cross.1.3)")
    for spec in args.head:
        parts = spec.split(".")
        if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts[-2:]):
            raise InterventionError(f"--head {spec!r}: write it as LAYER.HEAD (e.g. 1.3) or ATTENTION.LAYER.HEAD "
                                    "(e.g. cross.1.3)")
    model, tokenizer = insight.load(args.model)
    result = insight.ablation(model, tokenizer, args.text, args.head, mode=args.mode, top=args.top or 5, target=args.target,
                              readout=args.readout, pooling=_pooling(args), pair=args.pair)
    result["model"] = args.model
    if args.json:
        _emit_json(result)
    else:
        sys.stdout.write(insight.format_ablation(result))
    return 0


def _ablate_each(args: argparse.Namespace) -> int:
    """``ablate --each``: every head of one attention silenced alone, ranked, beside its role."""
    from glassformer.explain.importance import format_importance, head_importance

    if args.pair is not None:
        raise InterventionError("--pair compares two texts for chosen heads; use it with --head, not --each")
    model, tokenizer = insight.load(args.model)
    kind = None if args.kind == "auto" else args.kind
    spec = model.main_attention if kind is None else _attention(model, kind)
    roles = None
    if spec.site == "attn":  # roles are scored on self-attention only
        check_heads_memory(model, 32, 8)
        roles = insight.score_heads(model, tokenizer, kind=spec.kind)
    imp = head_importance(model, tokenizer, args.text, kind=spec.kind, mode=args.mode, target=args.target,
                          readout=args.readout, pooling=_pooling(args), roles=roles)
    if args.json:
        _emit_json({"model": args.model, "text": args.text, **imp.to_json()})
    else:
        sys.stdout.write(format_importance(imp, args.top))
    return 0


def _attention(model, kind: str):
    from glassformer.models.family import HeadError

    try:
        return model.attention_spec(kind)
    except HeadError as e:
        raise InterventionError(f"--kind {kind}: {e}") from None


def _pooling(args: argparse.Namespace) -> tuple[str, ...]:
    """The sentence pooling the model directory declares, when the readout may be a sentence vector."""
    from glassformer.explain.readouts import sentence_pooling

    return sentence_pooling(args.model) if args.readout in ("auto", "embedding") else ("mean",)


def run_patch(args: argparse.Namespace) -> int:
    from glassformer.explain.patching import format_patching, patching

    if args.label is not None and args.token is not None:
        raise InterventionError("give --label (a class of a classifier) or --token (a token), not both")
    model, tokenizer = insight.load(args.model)
    result = patching(model, tokenizer, args.clean, args.corrupted, args.site, args.positions, target=args.target,
                      readout=args.readout, pooling=_pooling(args), answer=args.label or args.token, vs=args.vs,
                      top=args.top)
    result["model"] = args.model
    if args.json:
        _emit_json(result)
    else:
        sys.stdout.write(format_patching(result))
    return 0


def run_attribute(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise InterventionError(f"--top must be >= 1, got {args.top}")
    model, tokenizer = insight.load(args.model)
    a, name = insight.attribution_report(model, tokenizer, args.text, args.token, args.target, label=args.label,
                                         vs=args.vs, method=args.method)
    if args.json:
        _emit_json({"model": args.model, "text": args.text, **insight.attribution_json(a, name)})
    else:
        sys.stdout.write(insight.format_attribution(a, name, args.text, args.top))
    return 0


__all__ = ["run_ablate", "run_attribute", "run_heads", "run_lens", "run_patch"]

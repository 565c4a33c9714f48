"""``glassformer heads | lens | ablate | attribute``: why the model does what it does.

    glassformer heads MODEL [--json] [--out heads.html]
    glassformer lens MODEL "text" [--json] [--out lens.png] [--k 5]
    glassformer ablate MODEL "text" --head L.H [--head L.H ...] [--mode zero|mean] [--json]
    glassformer attribute MODEL "text" [--token WORD] [--json]

MODEL is any model directory (a glassformer run or save, or a Hugging Face checkpoint). For the
encoder-decoder, "text" is the source and ``--target`` the decoder's text so far. Options may
stand anywhere on the line. The parsers live in :mod:`glassformer.explain.command` (light, for
``--help``); this module runs the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from glassformer.explain.hooks import InterventionError, model_family

SAMPLE_TEXT = "The cat sat on the mat. The cat sat on the"  # the model view's default text: a repeat, for induction


# ------------------------------------------------------------------------------- helpers


def _load(path: str, require_tokenizer: bool = True):
    from glassformer.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, require_tokenizer=require_tokenizer)
    return model.eval(), tokenizer


def _inputs(model, tokenizer, text: str, target: str | None) -> tuple[list[int], list[int] | None]:
    from glassformer.explain.tokens import encode_text, start_token

    ids = encode_text(tokenizer, text, max_length=model.config.max_len)
    if model_family(model) != "transformer":
        if target is not None:
            raise InterventionError(f"--target is only for an encoder-decoder, not a {model_family(model)} model")
        return ids, None
    tgt = [start_token(model, tokenizer)]
    if target:
        tgt += encode_text(tokenizer, target, add_special_tokens=False, what="target")
    return ids, tgt


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _names(tokenizer, ids) -> list[str]:
    from glassformer.explain.tokens import token_strings

    return token_strings(tokenizer, [int(i) for i in ids])


# --------------------------------------------------------------------------------- heads


def run_heads(args: argparse.Namespace) -> int:
    from glassformer.explain.heads import format_heads, head_scores, sequence_for_model

    if args.n < 2 or args.batch < 1:
        raise InterventionError("--n must be >= 2 and --batch >= 1")
    if args.out is not None and not args.out.lower().endswith((".html", ".htm")):
        raise InterventionError(f"--out {args.out}: the model view is written as .html")
    if args.text is not None and args.out is None:
        raise InterventionError("--text is the model view's text; give --out FILE.html too")
    model, tokenizer = _load(args.model, require_tokenizer=args.out is not None)
    scores = head_scores(model, n=args.n, batch=args.batch, seed=args.seed, **sequence_for_model(model, tokenizer))
    if args.json:
        _emit_json({"model": args.model, **scores.to_json()})
    else:
        sys.stdout.write(format_heads(scores))
    if args.out is not None:
        from glassformer.explain.viewer import save_attention_html

        text = args.text or SAMPLE_TEXT
        path = save_attention_html(model, tokenizer, text, args.out, max_new_tokens=0, head_roles=scores)
        sys.stderr.write(f"model view: {path}\n")
    return 0


# ---------------------------------------------------------------------------------- lens


def run_lens(args: argparse.Namespace) -> int:
    from glassformer.explain.lens import format_lens, lens_json, logit_lens, save_lens_png

    if args.k < 1:
        raise InterventionError(f"--k must be >= 1, got {args.k}")
    if args.out is not None and not args.out.lower().endswith(".png"):
        raise InterventionError(f"--out {args.out}: the lens figure is written as .png")
    model, tokenizer = _load(args.model)
    ids, tgt = _inputs(model, tokenizer, args.text, args.target)
    lens = logit_lens(model, torch.tensor([ids]), k=args.k, tgt_ids=None if tgt is None else torch.tensor([tgt]))
    tokens = _names(tokenizer, tgt if tgt is not None else ids)
    names = [[_names(tokenizer, lens.top_ids[r, t].tolist()) for t in range(lens.top_ids.shape[1])]
             for r in range(len(lens.rows))]
    top1 = [[cell[0] for cell in row] for row in names]
    if args.json:
        _emit_json({"model": args.model, "text": args.text, "family": model_family(model),
                    "predicts": "next token" if model_family(model) != "bert" else "token at the position",
                    **lens_json(lens, tokens, names)})
    else:
        what = "the token at each position" if model_family(model) == "bert" else "the next token after each position"
        sys.stdout.write(f"logit lens: each layer's top guess for {what}, with its probability\n")
        sys.stdout.write(format_lens(lens, tokens, top1))
        sys.stdout.write(f"last layer == the model's logits (max difference {lens.max_error:.1e})\n")
    if args.out is not None:
        path = save_lens_png(lens, tokens, top1, args.out, title=f"logit lens — {args.text[:50]}")
        sys.stderr.write(f"wrote {path}\n")
    return 0


# -------------------------------------------------------------------------------- ablate


def parse_head(spec: str) -> tuple[int, int]:
    """``"1.3"`` -> (1, 3)."""
    parts = spec.split(".")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InterventionError(f"--head {spec!r}: write it as LAYER.HEAD, e.g. 1.3")
    return int(parts[0]), int(parts[1])


def _prediction_position(model, tokenizer, ids: list[int]) -> int:
    if model_family(model) != "bert":
        return -1
    if model.mlm_head is None:
        from glassformer.explain.lens import NO_MLM_HEAD

        raise InterventionError(NO_MLM_HEAD.replace("the logit lens", "ablate (it compares the [MASK] prediction)"))
    mask = getattr(tokenizer, "mask_id", None)
    if mask is None:
        mask = model.config.mask_token_id
    if mask is None or mask not in ids:
        raise InterventionError("for BERT, put a mask token (e.g. [MASK]) in the text: ablate compares its prediction")
    return ids.index(mask)


def run_ablate(args: argparse.Namespace) -> int:
    from glassformer.explain.hooks import ablate_heads, parse_heads

    heads = [parse_head(s) for s in args.head]
    if args.top < 1:
        raise InterventionError(f"--top must be >= 1, got {args.top}")
    model, tokenizer = _load(args.model)
    parse_heads(model, heads)  # refuse bad heads before running anything
    ids, tgt = _inputs(model, tokenizer, args.text, args.target)
    pos = _prediction_position(model, tokenizer, ids)
    x = torch.tensor([ids])
    kwargs: dict[str, Any] = {}
    if tgt is not None:
        kwargs["tgt_ids"] = torch.tensor([tgt])
    if model_family(model) == "bert":
        kwargs["head"] = "mlm"
    with torch.no_grad():
        before = model(x, **kwargs).logits[0, pos].double().log_softmax(-1)
        after = ablate_heads(model, x, heads, mode=args.mode, **kwargs).logits[0, pos].double().log_softmax(-1)
    kl = float((before.exp() * (before - after)).sum())

    def top(logp):
        p, i = logp.exp().topk(min(args.top, logp.shape[-1]))
        return [{"token": n, "id": int(j), "p": round(float(q), 6)} for n, j, q in zip(_names(tokenizer, i.tolist()), i, p)]

    result = {"model": args.model, "text": args.text, "heads": [f"{layer}.{h}" for layer, h in heads], "mode": args.mode,
              "position": pos if pos >= 0 else len(ids) + pos if tgt is None else len(tgt) - 1,
              "before": top(before), "after": top(after), "kl_before_after": kl}
    best = int(before.argmax())
    result["top_token"] = {"token": _names(tokenizer, [best])[0], "id": best,
                           "p_before": round(float(before[best].exp()), 6), "p_after": round(float(after[best].exp()), 6)}
    if args.json:
        _emit_json(result)
        return 0
    rows = [("before", "p", "after", "p")]
    for b, a in zip(result["before"], result["after"]):
        rows.append((repr(b["token"]), f"{b['p']:.3f}", repr(a["token"]), f"{a['p']:.3f}"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    sys.stdout.write(f"ablated heads {', '.join(result['heads'])} ({args.mode}); prediction at position {result['position']}\n")
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    tt = result["top_token"]
    sys.stdout.write(f"KL(before ‖ after) = {kl:.4f} nats; {tt['token']!r}: {tt['p_before']:.3f} -> {tt['p_after']:.3f}\n")
    return 0


# ----------------------------------------------------------------------------- attribute


def resolve_token(tokenizer, word: str) -> int:
    """One token id for ``word``: as written, else with a leading space (byte-level BPE), else ``#ID``."""
    if word.startswith("#") and word[1:].isdigit():
        return int(word[1:])
    tried = []
    for candidate in (word, " " + word) if not word.startswith(" ") else (word,):
        try:
            ids = tokenizer.encode(candidate, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(candidate)
        ids = list(getattr(ids, "ids", ids))
        if len(ids) == 1:
            return int(ids[0])
        tried.append(ids)
    pieces = _names(tokenizer, tried[0]) if tried and tried[0] else []
    raise InterventionError(f"--token {word!r} is {len(pieces)} tokens {pieces}; give a single token (or #ID)")


def run_attribute(args: argparse.Namespace) -> int:
    from glassformer.explain.attribution import direct_logit_attribution

    if args.top < 1:
        raise InterventionError(f"--top must be >= 1, got {args.top}")
    model, tokenizer = _load(args.model)
    ids, tgt = _inputs(model, tokenizer, args.text, args.target)
    tgt_t = None if tgt is None else torch.tensor([tgt])
    if args.token is None:
        with torch.no_grad():
            kw = {"tgt_ids": tgt_t} if tgt_t is not None else {}
            token = int(model(torch.tensor([ids]), **kw).logits[0, -1].argmax())
    else:
        token = resolve_token(tokenizer, args.token)
    a = direct_logit_attribution(model, torch.tensor([ids]), token, tgt_ids=tgt_t)
    name = _names(tokenizer, [token])[0]
    if args.json:
        _emit_json({
            "model": args.model, "text": args.text, "token": name, "token_id": token, "position": a.position,
            "logit": a.logit, "heads": [[round(float(v), 6) for v in row] for row in a.heads],
            "ffn": [round(float(v), 6) for v in a.ffn],
            "cross_heads": None if a.cross_heads is None else [[round(float(v), 6) for v in row] for row in a.cross_heads],
            "remainder": {k: round(v, 6) for k, v in a.remainder.items()}, "sum": a.total, "check_error": a.check_error,
            "note": "direct effects through the final LayerNorm, its scale frozen at the actual input",
        })
        return 0
    out = [f"direct logit attribution of {name!r} (id {token}) after {args.text!r}: logit {a.logit:.4f}",
           "(through the final LayerNorm with its scale frozen at the actual input)", ""]
    layers, heads = a.heads.shape
    header = ["layer"] + [f"head {h}" for h in range(heads)] + ["ffn"]
    rows = [header] + [[str(layer)] + [f"{float(v):+.3f}" for v in a.heads[layer]] + [f"{float(a.ffn[layer]):+.3f}"]
                       for layer in range(layers)]
    if a.cross_heads is not None:  # encoder-decoder attention heads, one row per layer
        rows += [[f"{layer} cross"] + [f"{float(v):+.3f}" for v in a.cross_heads[layer]] + [""] for layer in range(layers)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    out += ["", "remainder: " + ", ".join(f"{k} {v:+.3f}" for k, v in a.remainder.items()),
            f"sum of all parts {a.total:.4f} = logit {a.logit:.4f} (difference {a.check_error:.1e})",
            "largest: " + ", ".join(f"{k} {v:+.3f}" for k, v in a.ranked(args.top))]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


__all__ = ["run_heads", "run_lens", "run_ablate", "run_attribute", "parse_head", "resolve_token"]

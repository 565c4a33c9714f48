"""Why the model does what it does, on a text: head roles, the logit lens, ablation, attribution.

    model, tokenizer = load("runs/gpt")
    result = ablation(model, tokenizer, "The cat sat on the", ["decoder.1.3"])
    sys.stdout.write(format_ablation(result))

Each report is JSON-ready data plus a ``format_*`` function giving the table the command line
prints (``glassformer heads | lens | ablate | attribute``; their parsers are in
:mod:`glassformer.cli.explain`). Heads are named as everywhere (:mod:`glassformer.models.family`):
``encoder.L.H``, ``decoder.L.H``, ``cross.L.H``, and a bare ``L.H`` means ``model.main_attention``.
For the encoder-decoder, the text is the source and ``target`` the decoder's text so far.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from glassformer.explain.hooks import InterventionError, ablate_heads, parse_heads
from glassformer.explain.lens import model_token_logits, require_readout
from glassformer.explain.tokens import encode_text, start_token, token_strings

SAMPLE_TEXT = "The cat sat on the mat. The cat sat on the"  # the model view's default text: a repeat, for induction


def load(path: str, require_tokenizer: bool = True) -> tuple[nn.Module, Any]:
    """A model directory (glassformer or Hugging Face) -> the model in eval mode and its tokenizer."""
    from glassformer.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(path, require_tokenizer=require_tokenizer)
    return model.eval(), tokenizer


def text_inputs(model: nn.Module, tokenizer: Any, text: str, target: str | None) -> tuple[list[int], list[int] | None]:
    """The ids the model reads, and for the encoder-decoder its decoder input (start + target)."""
    ids = encode_text(tokenizer, text, max_length=model.config.max_len)
    if not model.needs_target:
        if target is not None:
            raise InterventionError(f"--target is only for an encoder-decoder, not a {type(model).__name__}")
        return ids, None
    tgt = [start_token(model, tokenizer)]
    if target:
        tgt += encode_text(tokenizer, target, add_special_tokens=False, what="target")
    return ids, tgt


def names(tokenizer: Any, ids) -> list[str]:
    """Display strings of token ids."""
    return token_strings(tokenizer, [int(i) for i in ids])


def _batch(ids: list[int] | None) -> torch.Tensor | None:
    return None if ids is None else torch.tensor([ids])  # (1, T)


# --------------------------------------------------------------------------------- heads


def score_heads(model: nn.Module, tokenizer: Any | None, *, n: int = 32, batch: int = 8, seed: int = 0,
                kind: str | None = None):
    """:func:`~glassformer.explain.heads.head_scores` on random tokens the tokenizer frames as a text."""
    from glassformer.explain.heads import head_scores, sequence_for_model

    if n < 2 or batch < 1:
        raise InterventionError("--n must be >= 2 and --batch >= 1")
    return head_scores(model, n=n, batch=batch, seed=seed, kind=kind, **sequence_for_model(model, tokenizer))


# ---------------------------------------------------------------------------------- lens


def lens_report(model: nn.Module, tokenizer: Any, text: str, target: str | None = None, k: int = 5):
    """The logit lens of a text: ``(lens, tokens, top-k names per cell, top-1 names)``."""
    from glassformer.explain.lens import logit_lens

    if k < 1:
        raise InterventionError(f"--k must be >= 1, got {k}")
    require_readout(model, "the logit lens")
    ids, tgt = text_inputs(model, tokenizer, text, target)
    lens = logit_lens(model, torch.tensor([ids]), k=k, tgt_ids=_batch(tgt))
    tokens = names(tokenizer, tgt if tgt is not None else ids)
    cells = [[names(tokenizer, lens.top_ids[r, t].tolist()) for t in range(lens.top_ids.shape[1])]
             for r in range(len(lens.rows))]
    return lens, tokens, cells, [[cell[0] for cell in row] for row in cells]


def lens_predicts(model: nn.Module) -> tuple[str, str]:
    """What a lens row is about: (JSON's word, the sentence the table starts with)."""
    if model.predicts == "masked":
        return "token at the position", "the token at each position"
    return "next token", "the next token after each position"


# -------------------------------------------------------------------------------- ablate


def prediction_position(model: nn.Module, tokenizer: Any, ids: list[int]) -> int:
    """Where the prediction ablation compares is read: the last position, or the first mask token
    of a masked-LM (``model.predicts == "masked"``)."""
    require_readout(model, "ablate (it compares the prediction)")
    if model.predicts == "next":
        return -1
    mask = getattr(tokenizer, "mask_id", None)
    if mask is None:
        mask = getattr(model.config, "mask_token_id", None)
    if mask is None or mask not in ids:
        raise InterventionError(f"for a masked-LM {type(model).__name__}, put a mask token (e.g. [MASK]) in the text: "
                                "ablate compares its prediction")
    return ids.index(mask)


@torch.no_grad()
def ablation(model: nn.Module, tokenizer: Any, text: str, heads: list[str], *, mode: str = "zero", top: int = 5,
             target: str | None = None) -> dict[str, Any]:
    """Silence ``heads`` (labels) and compare the predicted distribution before and after: the top
    tokens and KL(before ‖ after). JSON-ready; ``heads`` lists the labels acted on, ``attention``
    their attentions (a bare ``L.H`` is the model's main attention)."""
    if top < 1:
        raise InterventionError(f"--top must be >= 1, got {top}")
    refs = parse_heads(model, heads)  # refuse bad heads before running anything
    ids, tgt = text_inputs(model, tokenizer, text, target)
    pos = prediction_position(model, tokenizer, ids)
    x = torch.tensor([ids])
    kwargs: dict[str, Any] = {} if tgt is None else {"tgt_ids": _batch(tgt)}
    before = model_token_logits(model, model(x, **kwargs))[0, pos].double().log_softmax(-1)
    after = model_token_logits(model, ablate_heads(model, x, refs, mode=mode, **kwargs))[0, pos].double().log_softmax(-1)
    kl = float((before.exp() * (before - after)).sum())

    def best(logp):
        p, i = logp.exp().topk(min(top, logp.shape[-1]))
        return [{"token": s, "id": int(j), "p": round(float(q), 6)} for s, j, q in zip(names(tokenizer, i.tolist()), i, p)]

    result = {"model": None, "text": text, "heads": [ref.label for ref in refs],
              "attention": list(dict.fromkeys(ref.kind for ref in refs)), "mode": mode,
              "position": pos if pos >= 0 else len(ids) + pos if tgt is None else len(tgt) - 1,
              "before": best(before), "after": best(after), "kl_before_after": kl}
    top_id = int(before.argmax())
    result["top_token"] = {"token": names(tokenizer, [top_id])[0], "id": top_id,
                           "p_before": round(float(before[top_id].exp()), 6), "p_after": round(float(after[top_id].exp()), 6)}
    return result


def format_ablation(result: dict[str, Any]) -> str:
    """The before/after table of :func:`ablation`, ending with a newline."""
    rows = [("before", "p", "after", "p")]
    for b, a in zip(result["before"], result["after"]):
        rows.append((repr(b["token"]), f"{b['p']:.3f}", repr(a["token"]), f"{a['p']:.3f}"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"ablated heads {', '.join(result['heads'])} ({result['mode']}; {', '.join(result['attention'])} attention); "
             f"prediction at position {result['position']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    tt = result["top_token"]
    lines.append(f"KL(before ‖ after) = {result['kl_before_after']:.4f} nats; {tt['token']!r}: "
                 f"{tt['p_before']:.3f} -> {tt['p_after']:.3f}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- attribute


def resolve_token(tokenizer: Any, word: str) -> int:
    """One token id for ``word``: as written, else with a leading space (byte-level BPE), else ``#ID``.
    A word the vocabulary lacks (it would come back as the unknown token) is refused."""
    if word.startswith("#") and word[1:].isdigit():
        return int(word[1:])
    unk = getattr(tokenizer, "unk_id", None)
    tried = []
    for candidate in (word, " " + word) if not word.startswith(" ") else (word,):
        try:
            ids = tokenizer.encode(candidate, add_special_tokens=False)
        except TypeError:
            ids = tokenizer.encode(candidate)
        ids = list(getattr(ids, "ids", ids))
        if len(ids) == 1 and (unk is None or int(ids[0]) != unk or names(tokenizer, ids)[0] == word):
            return int(ids[0])
        tried.append(ids)
    if unk is not None and any(unk in ids for ids in tried):
        raise InterventionError(f"--token {word!r} is not in the vocabulary (it reads as the unknown token); "
                                "give a token the model knows (or #ID)")
    pieces = names(tokenizer, tried[0]) if tried and tried[0] else []
    raise InterventionError(f"--token {word!r} is {len(pieces)} tokens {pieces}; give a single token (or #ID)")


@torch.no_grad()
def attribution_report(model: nn.Module, tokenizer: Any, text: str, token: str | None = None,
                       target: str | None = None):
    """Direct logit attribution of ``token`` (default: the model's top prediction) at the last
    position: ``(attribution, token display string)``."""
    from glassformer.explain.attribution import direct_logit_attribution

    require_readout(model, "attribute")
    ids, tgt = text_inputs(model, tokenizer, text, target)
    kwargs = {} if tgt is None else {"tgt_ids": _batch(tgt)}
    if token is None:
        token_id = int(model_token_logits(model, model(torch.tensor([ids]), **kwargs))[0, -1].argmax())
    else:
        token_id = resolve_token(tokenizer, token)
    a = direct_logit_attribution(model, torch.tensor([ids]), token_id, tgt_ids=_batch(tgt))
    return a, names(tokenizer, [token_id])[0]


def attribution_json(a, name: str) -> dict[str, Any]:
    """JSON-ready attribution (rounded to 6 digits)."""
    return {
        "token": name, "token_id": a.token_id, "position": a.position, "logit": a.logit,
        "heads": [[round(float(v), 6) for v in row] for row in a.heads], "head_labels": a.label,
        "ffn": [round(float(v), 6) for v in a.ffn],
        "cross_heads": None if a.cross_heads is None else [[round(float(v), 6) for v in row] for row in a.cross_heads],
        "remainder": {k: round(v, 6) for k, v in a.remainder.items()}, "sum": a.total, "check_error": a.check_error,
        "note": "direct effects through the final LayerNorm, its scale frozen at the actual input",
    }


def format_attribution(a, name: str, text: str, top: int = 10) -> str:
    """The attribution table (a row per layer: its heads and its FFN block), ending with a newline."""
    if top < 1:
        raise InterventionError(f"--top must be >= 1, got {top}")
    out = [f"direct logit attribution of {name!r} (id {a.token_id}) after {text!r}: logit {a.logit:.4f}",
           "(through the final LayerNorm with its scale frozen at the actual input)", ""]
    layers, heads = a.heads.shape
    header = ["layer"] + [f"head {h}" for h in range(heads)] + ["ffn"]
    rows = [header] + [[f"{a.label}.{layer}"] + [f"{float(v):+.3f}" for v in a.heads[layer]] + [f"{float(a.ffn[layer]):+.3f}"]
                       for layer in range(layers)]
    if a.cross_heads is not None:  # encoder-decoder attention heads, one row per layer
        rows += [[f"{a.cross_label}.{layer}"] + [f"{float(v):+.3f}" for v in a.cross_heads[layer]] + [""]
                 for layer in range(layers)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    out += ["", "remainder: " + ", ".join(f"{k} {v:+.3f}" for k, v in a.remainder.items()),
            f"sum of all parts {a.total:.4f} = logit {a.logit:.4f} (difference {a.check_error:.1e})",
            "largest: " + ", ".join(f"{k} {v:+.3f}" for k, v in a.ranked(top))]
    return "\n".join(out) + "\n"


__all__ = ["SAMPLE_TEXT", "ablation", "attribution_json", "attribution_report", "format_ablation", "format_attribution",
           "lens_predicts", "lens_report", "load", "prediction_position", "resolve_token", "score_heads", "text_inputs"]

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

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from glassformer.explain.hooks import InterventionError, ablation_hooks, parse_heads
from glassformer.explain.lens import model_token_logits, require_readout
from glassformer.explain.readouts import choose_readout, class_rows, cosine, kl, mask_position, top_tokens
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
    return -1 if model.predicts == "next" else mask_position(model, tokenizer, ids)


@torch.no_grad()
def ablation(model: nn.Module, tokenizer: Any, text: str, heads: list[str], *, mode: str = "zero", top: int = 5,
             target: str | None = None, readout: str = "auto", pooling: Sequence[str] = ("mean",),
             pair: str | None = None) -> dict[str, Any]:
    """Silence ``heads`` (labels) and compare what the model reads out before and after
    (:mod:`glassformer.explain.readouts`): the top tokens and KL(before ‖ after) for a language
    model, the class probabilities and KL for a classifier, the cosine similarity of the sentence
    vectors for an embedding model (and, with ``pair``, the similarity to a second text before and
    after). JSON-ready; ``heads`` lists the labels acted on (none: nothing changes, exactly)."""
    if top < 1:
        raise InterventionError(f"--top must be >= 1, got {top}")
    refs = parse_heads(model, heads) if heads else []  # refuse bad heads before running anything
    ids, tgt = text_inputs(model, tokenizer, text, target)
    r = choose_readout(model, tokenizer, ids, readout, pooling, tgt)
    if pair is not None and r.kind != "embedding":
        raise InterventionError("--pair compares two sentence vectors; it is for an embedding model (--readout embedding)")
    x = torch.tensor([ids])
    kwargs: dict[str, Any] = {} if tgt is None else {"tgt_ids": _batch(tgt)}
    hooks = ablation_hooks(model, refs, mode) if refs else {}
    before = r.read(model, model(x, **kwargs))[0]
    after = r.read(model, model.run_with_hooks(x, hooks=hooks, **kwargs))[0]
    result: dict[str, Any] = {"model": None, "text": text, "heads": [ref.label for ref in refs],
                              "attention": list(dict.fromkeys(ref.kind for ref in refs)), "mode": mode,
                              "readout": r.kind, "measures": r.measures}
    if r.kind == "classes":
        rows = class_rows(r, {"before": before, "after": after})
        b, a = int(before.argmax()), int(after.argmax())
        result.update(classes=rows, kl_before_after=kl(before, after), predicted_before=r.labels[b],
                      predicted_after=r.labels[a],
                      top_class={"label": r.labels[b], "p_before": rows[b]["p_before"], "p_after": rows[b]["p_after"]})
        return result
    if r.kind == "embedding":
        result.update(cosine_before_after=cosine(before, after), pooling=list(r.pooling))
        if pair is not None:
            y = torch.tensor([text_inputs(model, tokenizer, pair, None)[0]])
            other_before = r.read(model, model(y))[0]
            other_after = r.read(model, model.run_with_hooks(y, hooks=hooks))[0]
            result["pair"] = {"text": pair, "cosine_before": cosine(before, other_before),
                              "cosine_after": cosine(after, other_after)}
        return result
    pos = r.position
    result.update(position=pos, before=top_tokens(tokenizer, before, top), after=top_tokens(tokenizer, after, top),
                  kl_before_after=kl(before, after))
    top_id = int(before.argmax())
    pb, pa = before.double().softmax(-1)[top_id], after.double().softmax(-1)[top_id]
    result["top_token"] = {"token": names(tokenizer, [top_id])[0], "id": top_id,
                           "p_before": round(float(pb), 6), "p_after": round(float(pa), 6)}
    return result


def format_ablation(result: dict[str, Any]) -> str:
    """The before/after table of :func:`ablation`, ending with a newline."""
    heads = ", ".join(result["heads"]) or "none"
    where = f" ({result['mode']}; {', '.join(result['attention'])} attention)" if result["heads"] else ""
    if result.get("readout") == "classes":
        lines = [f"ablated heads {heads}{where}; class probabilities before and after"]
        rows = [("class", "before", "after")] + [(c["label"], f"{c['p_before']:.3f}", f"{c['p_after']:.3f}")
                                                 for c in result["classes"]]
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.append(f"KL(before ‖ after) = {result['kl_before_after']:.4f} nats; predicted "
                     f"{result['predicted_before']!r} -> {result['predicted_after']!r}")
        return "\n".join(lines) + "\n"
    if result.get("readout") == "embedding":
        lines = [f"ablated heads {heads}{where}; sentence vector ({'+'.join(result['pooling'])} pooling)",
                 f"cosine(before, after) = {result['cosine_before_after']:.6f}"]
        if "pair" in result:
            p = result["pair"]
            lines.append(f"cosine with {p['text']!r}: {p['cosine_before']:.6f} -> {p['cosine_after']:.6f}")
        return "\n".join(lines) + "\n"
    rows = [("before", "p", "after", "p")]
    for b, a in zip(result["before"], result["after"]):
        rows.append((repr(b["token"]), f"{b['p']:.3f}", repr(a["token"]), f"{a['p']:.3f}"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [f"ablated heads {heads}{where}; prediction at position {result['position']}"]
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


ATTRIBUTION_METHODS = ("direct", "ablation")


@torch.no_grad()
def attribution_report(model: nn.Module, tokenizer: Any, text: str, token: str | None = None,
                       target: str | None = None, *, label: str | None = None, vs: str | None = None,
                       method: str = "direct"):
    """Each head's and block's share of one logit: ``(attribution, display name)``.

    The logit is a class's (``label``, a class name or index; the default for a classifier is its
    predicted class) or a token's at the last position (``token``; default the top prediction), or
    with ``vs`` the difference logit(label or token) − logit(vs). ``method="direct"`` splits it into
    parts that sum to it exactly (a pre-LN language model through its final norm; a classifier as
    :mod:`glassformer.explain.class_attribution` states); ``"ablation"`` gives each part's total
    effect (the logit minus the logit without that part), which does not sum."""
    from glassformer.explain.attribution import direct_logit_attribution
    from glassformer.explain.class_attribution import ablation_effects, class_attribution, difference
    from glassformer.explain.readouts import resolve_label

    if method not in ATTRIBUTION_METHODS:
        raise InterventionError(f"unknown method {method!r}; choose {', '.join(ATTRIBUTION_METHODS)}")
    if label is not None and token is not None:
        raise InterventionError("give --label (a class of a classifier) or --token (a token), not both")
    ids, tgt = text_inputs(model, tokenizer, text, target)
    x = torch.tensor([ids])
    kwargs = {} if tgt is None else {"tgt_ids": _batch(tgt)}
    if label is not None or (token is None and model.readout_kind == "classes"):
        labels = model.class_labels
        if label is not None:
            target_id = resolve_label(model, label)
        else:
            target_id = int(model.class_readout(model(x).last_hidden_state)[0].argmax())
        vs_id = None if vs is None else resolve_label(model, vs)
        if vs_id == target_id:
            raise InterventionError(f"--vs {vs!r} is the class being explained; name another class")
        name = labels[target_id] + ("" if vs_id is None else f" − {labels[vs_id]}")
        if method == "direct":
            return class_attribution(model, x, target_id, vs_id), name

        def class_metric(out) -> float:
            logits = model.class_readout(out.last_hidden_state)[0].float()
            return float(logits[target_id] - (logits[vs_id] if vs_id is not None else 0.0))

        return ablation_effects(model, (x,), kwargs, class_metric, target=target_id, position=0, kind="class",
                                vs=vs_id), name

    require_readout(model, "attribute")
    if token is None:
        token_id = int(model_token_logits(model, model(x, **kwargs))[0, -1].argmax())
    else:
        token_id = resolve_token(tokenizer, token)
    vs_id = None if vs is None else resolve_token(tokenizer, vs)
    if vs_id == token_id:
        raise InterventionError(f"--vs {vs!r} is the token being explained; name another token")
    name = names(tokenizer, [token_id])[0]
    if vs_id is not None:
        name = f"{name!r} − {names(tokenizer, [vs_id])[0]!r}"
    if method == "direct":
        a = direct_logit_attribution(model, x, token_id, tgt_ids=_batch(tgt))
        if vs_id is not None:
            a = difference(a, direct_logit_attribution(model, x, vs_id, tgt_ids=_batch(tgt)))
        return a, name
    pos = prediction_position(model, tokenizer, ids)

    def token_metric(out) -> float:
        logits = model_token_logits(model, out)[0, pos].float()
        return float(logits[token_id] - (logits[vs_id] if vs_id is not None else 0.0))

    t = len(tgt) if tgt is not None else len(ids)
    return ablation_effects(model, (x,), kwargs, token_metric, target=token_id, position=pos % t, kind="token",
                            vs=vs_id), name


def attribution_json(a, name: str) -> dict[str, Any]:
    """JSON-ready attribution (rounded to 6 digits)."""
    what = "label" if a.kind == "class" else "token"
    out = {
        what: name, f"{what}_id": a.token_id, "kind": a.kind, "method": a.method, "position": a.position,
        "logit": a.logit, "heads": [[round(float(v), 6) for v in row] for row in a.heads], "head_labels": a.label,
        "ffn": [round(float(v), 6) for v in a.ffn],
        "cross_heads": None if a.cross_heads is None else [[round(float(v), 6) for v in row] for row in a.cross_heads],
        "remainder": {k: round(v, 6) for k, v in a.remainder.items()}, "note": a.note,
    }
    if a.vs_id is not None:
        out["vs_id"] = a.vs_id
    if a.method == "direct":
        out.update(sum=a.total, check_error=a.check_error)
    return out


def format_attribution(a, name: str, text: str, top: int = 10) -> str:
    """The attribution table (a row per layer: its heads and its FFN block), ending with a newline."""
    if top < 1:
        raise InterventionError(f"--top must be >= 1, got {top}")
    what = f"class {name}" if a.kind == "class" else repr(name) if a.vs_id is None else name
    where = "" if a.kind == "class" else f" (id {a.token_id})" if a.vs_id is None else ""
    value = "logit difference" if a.vs_id is not None else "logit"
    title = "direct logit attribution" if a.method == "direct" else "ablation effects (zero each part)"
    out = [f"{title} of {what}{where} after {text!r}: {value} {a.logit:.4f}", f"({a.note})", ""]
    layers, heads = a.heads.shape
    header = ["layer"] + [f"head {h}" for h in range(heads)] + ["ffn"]
    rows = [header] + [[f"{a.label}.{layer}"] + [f"{float(v):+.3f}" for v in a.heads[layer]] + [f"{float(a.ffn[layer]):+.3f}"]
                       for layer in range(layers)]
    if a.cross_heads is not None:  # encoder-decoder attention heads, one row per layer
        rows += [[f"{a.cross_label}.{layer}"] + [f"{float(v):+.3f}" for v in a.cross_heads[layer]] + [""]
                 for layer in range(layers)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    out.append("")
    if a.method == "direct":
        out += ["remainder: " + ", ".join(f"{k} {v:+.3f}" for k, v in a.remainder.items()),
                f"sum of all parts {a.total:.4f} = {value} {a.logit:.4f} (difference {a.check_error:.1e})"]
    else:
        out.append(f"each number: the {value} minus the {value} with that part switched off; they do not add up")
    out.append("largest: " + ", ".join(f"{k} {v:+.3f}" for k, v in a.ranked(top)))
    return "\n".join(out) + "\n"


__all__ = ["ATTRIBUTION_METHODS", "SAMPLE_TEXT", "ablation", "attribution_json", "attribution_report", "format_ablation", "format_attribution",
           "lens_predicts", "lens_report", "load", "prediction_position", "resolve_token", "score_heads", "text_inputs"]

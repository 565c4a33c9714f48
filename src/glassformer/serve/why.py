"""The explorer's "why" views: the logit lens, direct logit attribution, ablation, and every head
ranked by what silencing it costs. One function per API endpoint, as in :mod:`.handlers` (whose
text encoding and head roles they share): checked arguments in, the library's numbers out as
JSON-ready dicts; input errors raise :class:`~.handlers.RequestError`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from glassformer.explain.class_attribution import DIRECT_NOTE, class_logit_parts
from glassformer.explain.hooks import ablation_hooks
from glassformer.explain.importance import head_importance
from glassformer.explain.lens import lens_json, logit_lens
from glassformer.explain.readouts import Readout, class_rows, cosine, kl, resolve_label, sentence_pooling
from glassformer.explain.tokens import token_strings
from glassformer.models.activations import decomposition_names
from glassformer.serve.handlers import Encoded, RequestError, Served, encode, roles, text_ids

# ------------------------------------------------------------------------------ readouts


def _final_name(m) -> str:
    stack = m.readout_stack
    return f"{stack}.{len(m.stack_module(stack).layers) - 1}.resid_post"


def _top(served: Served, logits: Tensor, k: int) -> list[dict[str, Any]]:
    p = logits.float().softmax(-1)
    top = p.topk(min(k, p.numel()))
    ids = top.indices.tolist()
    return [{"id": i, "text": s, "p": round(float(q), 6)}
            for i, s, q in zip(ids, token_strings(served.tokenizer, ids), top.values.tolist())]


def _position(served: Served, enc: Encoded, position: int | None) -> int:
    """The position whose prediction is shown: given, else the last (next-token models) or the first mask."""
    m = served.model
    stream = enc.stream("target" if m.needs_target else "tokens")
    if position is None:
        mask = getattr(served.tokenizer, "mask_id", None)
        if m.predicts == "masked" and mask in stream:
            return stream.index(mask)
        return len(stream) - 1
    if not 0 <= position < len(stream):
        raise RequestError(f"position {position} is out of range 0..{len(stream) - 1}")
    return position


def lens(served: Served, text: str, k: int, target: str | None = None) -> dict[str, Any]:
    """The logit lens: each layer's top guesses at each position."""
    m = served.model
    enc = encode(served, text, target)
    result = logit_lens(m, torch.tensor([enc.ids]), k=k,
                        tgt_ids=None if enc.tgt_ids is None else torch.tensor([enc.tgt_ids]))
    names = [[token_strings(served.tokenizer, row) for row in layer] for layer in result.top_ids.tolist()]
    stream = "target" if m.needs_target else "tokens"
    return {"predicts": m.predicts, **lens_json(result, [t["text"] for t in enc.streams[stream]], names)}


@torch.no_grad()
def attribution(served: Served, text: str, token: str | int | None, position: int | None,
                target: str | None = None) -> dict[str, Any]:
    """Direct logit attribution of one token's logit at one position, from the activation cache:
    each part's share through the final norm with its scale frozen (they add up to the logit).
    A classifier: ``token`` names a class (its name or index; default the predicted one), and the
    parts are its class logit's (:mod:`glassformer.explain.class_attribution`)."""
    m = served.model
    if m.readout_kind == "classes":
        return _class_attribution(served, text, token)
    enc = encode(served, text, target)
    pos = _position(served, enc, position)
    args, kwargs = enc.args(m)
    _, cache = m.run_with_cache(*args, names=decomposition_names(m) + [_final_name(m)], **kwargs)
    logits = m.readout(cache[_final_name(m)][0, pos])  # (V,)
    if token is None or token == "":
        token_id = int(logits.argmax())
    elif isinstance(token, int):
        token_id = token
    else:
        ids = text_ids(served, token, "target token", specials=False)
        if len(ids) != 1:
            raise RequestError(f"the target token {token!r} is {len(ids)} tokens; give one token (or its id)")
        token_id = ids[0]
    labels, parts = cache.decompose_resid(pos)
    attrs = cache.logit_attrs(parts, token_id, pos)[:, 0]  # (N,)
    const = float(cache.logit_constant(token_id)[()])
    logit = float(logits[token_id])
    rows = sorted(zip(labels, attrs.tolist()), key=lambda kv: -abs(kv[1]))
    return {
        "token": {"id": token_id, "text": token_strings(served.tokenizer, [token_id])[0]}, "position": pos,
        "logit": logit, "constant": const, "check_error": abs(float(attrs.sum()) + const - logit),
        "parts": [{"label": k, "value": round(float(v), 6)} for k, v in rows],
    }


def _class_attribution(served: Served, text: str, label: str | int | None) -> dict[str, Any]:
    m = served.model
    enc = encode(served, text)
    labels, shares, logits = class_logit_parts(m, torch.tensor([enc.ids]))  # (N, K), (K,)
    if label is None or label == "":
        k = int(logits.argmax())
    elif isinstance(label, int):
        if not 0 <= label < len(m.class_labels):
            raise RequestError(f"class {label} is out of range 0..{len(m.class_labels) - 1}")
        k = label
    else:
        k = resolve_label(m, label)
    constant = float(shares[-1, k])  # the classifier's bias: no part wrote it
    rows = sorted(zip(labels[:-1], shares[:-1, k].tolist()), key=lambda kv: -abs(kv[1]))
    return {
        "token": {"id": k, "text": m.class_labels[k]}, "class": m.class_labels[k], "position": 0,
        "logit": float(logits[k]), "constant": constant, "note": DIRECT_NOTE,
        "check_error": abs(float(shares[:, k].sum()) - float(logits[k])),
        "parts": [{"label": name, "value": round(float(v), 6)} for name, v in rows],
    }


# ------------------------------------------------------------------------------ ablation


@torch.no_grad()
def ablate(served: Served, text: str, heads: list[str], mode: str, k: int, position: int | None,
           target: str | None = None) -> dict[str, Any]:
    """Switch heads off (zero or mean) and compare: top predictions, KL(before ‖ after), loss."""
    m = served.model
    refs = [m.parse_head(h) for h in heads]
    enc = encode(served, text, target)
    pos = _position(served, enc, position)
    args, kwargs = enc.args(m)
    final = _final_name(m)
    hooks = ablation_hooks(m, refs, mode)  # one hook per attention site, whatever the heads' kinds
    caught: dict[str, Tensor] = {}

    def run(extra: dict[str, Any]) -> Tensor:
        def grab(x: Tensor) -> None:
            caught["x"] = x

        caught["out"] = m.run_with_hooks(*args, hooks={**extra, final: grab} if final not in extra else extra, **kwargs)
        return caught["x"][0]  # (T, C) the stream that reaches the final norm

    before, out_before = run({}), caught["out"]
    after, out_after = run(hooks), caught["out"]
    result: dict[str, Any] = {"heads": [r.label for r in refs], "mode": mode, "position": pos,
                              "stream_change": float((after[pos] - before[pos]).norm() / before[pos].norm().clamp_min(1e-12))}
    if m.has_classifier:  # class probabilities before and after (what the classifier answers)
        read = Readout("classes", labels=tuple(m.class_labels))
        cb, ca = read.read(m, out_before)[0], read.read(m, out_after)[0]
        result.update(classes=class_rows(read, {"before": cb, "after": ca}), kl_classes=kl(cb, ca))
    elif m.readout_kind == "embedding":  # a sentence-embedding model: how far its vector turned
        read = Readout("embedding", pooling=sentence_pooling(str(served.path)))
        result["cosine"] = cosine(read.read(m, out_before)[0], read.read(m, out_after)[0])
    if m.predicts == "none":
        return result  # no head to read tokens with: the change of the final stream is what there is
    lb, la = m.readout(before).float(), m.readout(after).float()  # (T, V)
    logp, logq = lb[pos].log_softmax(-1), la[pos].log_softmax(-1)
    result.update(before=_top(served, lb[pos], k), after=_top(served, la[pos], k),
                  kl=float((logp.exp() * (logp - logq)).sum()))
    if m.predicts == "next":  # the loss on the text itself: position t predicts token t + 1
        stream = torch.tensor(enc.stream("target" if m.needs_target else "tokens"))
        if len(stream) > 1:
            lb_loss = torch.nn.functional.cross_entropy(lb[:-1], stream[1:])
            la_loss = torch.nn.functional.cross_entropy(la[:-1], stream[1:])
            result.update(loss_before=float(lb_loss), loss_after=float(la_loss))
    return result


# ------------------------------------------------------------------------------ every head, ranked


def importance(served: Served, text: str, attention: str | None, mode: str, target: str | None = None) -> dict[str, Any]:
    """Every head of one attention (its label: ``encoder``, ``decoder``, ``cross``; default the main
    one) silenced alone and ranked by the change (:mod:`glassformer.explain.importance`), with the
    roles the model view shows where they score the same attention."""
    m = served.model
    specs = {s.label: s for s in m.attentions_spec()}
    if attention is not None and attention not in specs:
        raise RequestError(f"no {attention!r} attention in this model; it has {', '.join(specs)}")
    spec = specs[attention] if attention is not None else m.main_attention
    encode(served, text, target)  # the explorer's own checks of the text: length, tokens
    roles(served)
    scores = served.role_scores if served.role_scores is not None and served.role_scores.kind == spec.kind else None
    return head_importance(m, served.tokenizer, text, kind=spec.kind, mode=mode, target=target, roles=scores).to_json()

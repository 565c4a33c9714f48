"""Activation patching on a text pair: does one activation carry what makes the clean run differ?

    result = patching(model, tokenizer, "the film was great", "the film was awful", "encoder.1.attn.z")
    sys.stdout.write(format_patching(result))

Three runs: the clean text, the corrupted text, and the corrupted text with one named activation
(``encoder.1.attn.z``, ``decoder.0.resid_post``, ...; ``model.activation_names()`` lists them)
taken from the clean run, at every position or only at ``positions``
(:func:`glassformer.explain.hooks.patch`; Meng et al. 2022, Wang et al. 2022). The two texts must
tokenise to the same length, so the activation fits. Each run is read out as the model reads
out (:mod:`glassformer.explain.readouts`):

* a classifier or a language model: the logit difference logit(A) − logit(B), where A is the clean
  run's answer (class or token) and B the corrupted run's (``label``/``token`` and ``vs`` choose
  them), and how much of it patching restores: (patched − corrupted) / (clean − corrupted), 1 when
  the patched run is as the clean one, 0 when patching changed nothing; plus each run's class
  probabilities or top tokens;
* an embedding model: the cosine similarity of the patched sentence vector to the clean and to the
  corrupted one.

Patching every position of the last layer's output restores the clean run exactly; patching clean
into clean changes nothing (both are tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.explain.hooks import InterventionError, patch
from glassformer.explain.insight import names, resolve_token, text_inputs
from glassformer.explain.readouts import choose_readout, class_rows, cosine, resolve_label, top_tokens
from glassformer.models.hooks import check_names

RUNS = ("clean", "corrupted", "patched")


def _answers(model: nn.Module, tokenizer: Any, kind: str, clean: Tensor, corrupted: Tensor,
             answer: str | None, vs: str | None) -> tuple[int, int | None]:
    """A: the named answer or the clean run's; B: the named one, or the corrupted run's (the clean
    run's runner-up when both runs agree)."""
    resolve = (lambda name: resolve_label(model, name)) if kind == "classes" else (lambda name: resolve_token(tokenizer, name))
    a = resolve(answer) if answer is not None else int(clean.argmax())
    if vs is not None:
        b = resolve(vs)
        if b == a:
            raise InterventionError(f"--vs {vs!r} is the answer itself; name another one")
        return a, b
    if clean.shape[-1] < 2:
        return a, None
    b = int(corrupted.argmax())
    if b == a:
        b = int(clean.topk(2).indices[1])
    return a, b


@torch.no_grad()
def patching(model: nn.Module, tokenizer: Any, clean: str, corrupted: str, site: str,
             positions: Sequence[int] | None = None, *, target: str | None = None, readout: str = "auto",
             pooling: Sequence[str] = ("mean",), answer: str | None = None, vs: str | None = None,
             top: int = 5) -> dict[str, Any]:
    """Run clean, corrupted and corrupted-with-``site``-patched-from-clean, and compare them (module
    docstring). JSON-ready. ``answer`` is a class (classifier) or a token (language model)."""
    if top < 1:
        raise InterventionError(f"--top must be >= 1, got {top}")
    check_names(model, [site])  # a wrong name is refused (with close names) before anything runs
    clean_ids, tgt = text_inputs(model, tokenizer, clean, target)
    corrupted_ids, _ = text_inputs(model, tokenizer, corrupted, target)
    if len(clean_ids) != len(corrupted_ids):
        raise InterventionError(
            f"clean and corrupted texts must tokenise to the same length to patch: clean is {len(clean_ids)} tokens "
            f"{names(tokenizer, clean_ids)}, corrupted is {len(corrupted_ids)} {names(tokenizer, corrupted_ids)}")
    r = choose_readout(model, tokenizer, clean_ids, readout, pooling, tgt)
    if r.kind == "embedding" and (answer is not None or vs is not None):
        raise InterventionError("an embedding model has no answers to compare; it is measured by cosine similarity")
    x, y = torch.tensor([clean_ids]), torch.tensor([corrupted_ids])
    kwargs: dict[str, Any] = {} if tgt is None else {"tgt_ids": torch.tensor([tgt])}
    runs = {"clean": r.read(model, model(x, **kwargs))[0], "corrupted": r.read(model, model(y, **kwargs))[0],
            "patched": r.read(model, patch(model, x, y, site, positions, **kwargs))[0]}
    result: dict[str, Any] = {
        "model": None, "clean": clean, "corrupted": corrupted, "site": site,
        "positions": None if positions is None else [int(p) for p in positions], "readout": r.kind,
        "measures": r.measures, "tokens": {"clean": names(tokenizer, clean_ids), "corrupted": names(tokenizer, corrupted_ids)},
    }
    if r.kind == "embedding":
        result["cosine"] = {"clean_corrupted": cosine(runs["clean"], runs["corrupted"]),
                            "patched_clean": cosine(runs["patched"], runs["clean"]),
                            "patched_corrupted": cosine(runs["patched"], runs["corrupted"])}
        return result
    a, b = _answers(model, tokenizer, r.kind, runs["clean"], runs["corrupted"], answer, vs)
    diff = {run: float(v[a] - (v[b] if b is not None else 0.0)) for run, v in runs.items()}
    span = diff["clean"] - diff["corrupted"]
    show = (lambda i: r.labels[i]) if r.kind == "classes" else (lambda i: names(tokenizer, [i])[0])
    result["logit_diff"] = {"a": show(a), "a_id": a, "b": None if b is None else show(b), "b_id": b, **diff,
                            "restored": (diff["patched"] - diff["corrupted"]) / span if abs(span) > 1e-9 else None}
    if r.kind == "classes":
        result["classes"] = class_rows(r, runs)
        result["predicted"] = {run: r.labels[int(v.argmax())] for run, v in runs.items()}
    else:
        result["position"] = r.position
        result["top"] = {run: top_tokens(tokenizer, v, top) for run, v in runs.items()}
    return result


def format_patching(result: dict[str, Any]) -> str:
    """The three runs of :func:`patching` side by side, ending with a newline."""
    where = "every position" if result["positions"] is None else "positions " + ", ".join(map(str, result["positions"]))
    lines = [f"patched {result['site']} ({where}) from the clean run into the corrupted run; {result['measures']}",
             f"clean:     {result['clean']!r}", f"corrupted: {result['corrupted']!r}"]
    if result["readout"] == "embedding":
        c = result["cosine"]
        lines += [f"cosine(clean, corrupted) = {c['clean_corrupted']:.6f}",
                  f"cosine(patched, clean) = {c['patched_clean']:.6f}; cosine(patched, corrupted) = {c['patched_corrupted']:.6f}"]
        return "\n".join(lines) + "\n"
    if result["readout"] == "classes":
        rows = [("class", *RUNS)] + [(c["label"], *(f"{c['p_' + run]:.3f}" for run in RUNS)) for c in result["classes"]]
    else:
        lines.append(f"prediction at position {result['position']}")
        rows = [("rank", *RUNS)] + [(str(i + 1), *(f"{result['top'][run][i]['token']!r} {result['top'][run][i]['p']:.3f}"
                                                   for run in RUNS)) for i in range(len(result["top"]["clean"]))]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    d = result["logit_diff"]
    what = f"logit({d['a']!r})" + ("" if d["b"] is None else f" − logit({d['b']!r})")
    restored = "n/a (clean and corrupted agree)" if d["restored"] is None else f"{100 * d['restored']:.1f}%"
    lines.append(f"{what}: clean {d['clean']:+.4f}, corrupted {d['corrupted']:+.4f}, patched {d['patched']:+.4f}; "
                 f"restored {restored}")
    return "\n".join(lines) + "\n"


__all__ = ["format_patching", "patching"]

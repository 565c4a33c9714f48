"""``glassformer demo bert``: a small BERT learns masked subwords of the Python docs, using context.

The tokenizer is byte-level BPE trained here on ``python-docs``, so a masked unit is a word or a
piece of one, not a character that its neighbours give away. The measure is the one that shows
whether the model reads context: **top-1 accuracy on masked tokens of held-out text** (the
validation split, every chosen token replaced by ``<mask>``), against the best guess that ignores
context, always answering the most frequent training token. Then fill-mask examples from
held-out sentences, the true word beside the model's guesses, misses included.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from glassformer.demos import common
from glassformer.demos.common import DemoRun, say, train_and_load

DESCRIPTION = "a BERT with a BPE vocabulary learns masked-language modelling on python-docs"
MINUTES = 2.25
VOCAB = 1024
CONTEXT = 32  # BPE tokens (~110 characters): fewer position vectors to learn, and they are learnt sooner
MASK_PROB = 0.25
POSITIONS = "learned"
N_LAYERS = 2  # two layers take half the time of four, so twice the steps fit: it is steps that BERT lacks
EVAL_WINDOWS = 256  # held-out windows scored at the end
EXAMPLES = 8  # fill-mask examples shown


def config(steps: int, init: str):
    from glassformer.training.config import TrainConfig

    return TrainConfig(task="bert", data="python-docs", init=init, context=CONTEXT, batch_size=128, lr=3e-3,
                       min_lr=3e-4, dropout=0.0, weight_decay=0.01, eval_batches=8, mask_prob=MASK_PROB,
                       dtype="auto", **common.schedule(steps))


def model_config(tokenizer=None):
    """The demo's BERT: 2 layers, d_model 128, and pre-LN (``norm_first``), which learns several times
    faster from scratch than the original post-LN in a few hundred steps (as GPT-2 found for GPTs)."""
    from glassformer.models import BERTConfig

    ids = dict(pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
               mask_token_id=tokenizer.mask_id) if tokenizer is not None else dict(mask_token_id=4)
    return BERTConfig(vocab_size=tokenizer.vocab_size if tokenizer is not None else VOCAB, d_model=128, n_heads=4,
                      n_layers=N_LAYERS, d_ff=512, max_len=CONTEXT, dropout=0.0, norm_first=True, pos_encoding=POSITIONS,
                      **ids)


def untrained_model(directory, seed: int) -> None:
    """Write the demo's untrained BERT and its BPE tokenizer (trained here on python-docs) to
    ``directory``; training starts from it with ``--init`` (TrainConfig has no pre-LN switch).

    A masked token says nothing about itself, so BERT must learn to look at its neighbours, by
    position, before it can beat token frequencies; position vectors that start with the
    sinusoids' structure (neighbours are similar, shifts are rotations) shorten that plateau."""
    from glassformer.data import load_corpus
    from glassformer.layers import sinusoidal_table
    from glassformer.models import BERT
    from glassformer.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("bpe", load_corpus("python-docs"), VOCAB)
    torch.manual_seed(seed)
    model = BERT(model_config(tokenizer))
    with torch.no_grad():  # learned positions that start as the paper's sinusoids (§3.5), at the token vectors' scale
        table = sinusoidal_table(CONTEXT, model.config.d_model).float()  # (T, C)
        model.pos_emb.weight.copy_(table * (model.tok_emb.weight.std() / table.std()))
    model.save_pretrained(directory)
    tokenizer.save(directory)


def timer(seed: int):
    from glassformer.models import BERT

    torch.manual_seed(seed)
    model = BERT(model_config())
    g = torch.Generator().manual_seed(seed)

    def batch():
        labels = torch.full((128, CONTEXT), -100)
        labels[:, ::5] = torch.randint(5, VOCAB, (128, CONTEXT), generator=g)[:, ::5]
        return {"input_ids": torch.randint(5, VOCAB, (128, CONTEXT), generator=g),
                "attention_mask": torch.ones(128, CONTEXT, dtype=torch.long), "labels": labels}

    return common.step_timer(model, batch)


# ------------------------------------------------------------------------------ measurements


def held_out_windows(tokens: np.ndarray, body: int, n: int) -> torch.Tensor:
    """Up to ``n`` consecutive, non-overlapping windows of ``body`` tokens: (N, body)."""
    count = min(n, len(tokens) // body)
    return torch.from_numpy(np.asarray(tokens[: count * body], dtype=np.int64)).view(count, body)


def mask_for_eval(windows: torch.Tensor, special: set[int], seed: int, mask_prob: float = MASK_PROB) -> torch.Tensor:
    """(N, T) True where a token is hidden: ``mask_prob`` of the ordinary tokens, at least one a row."""
    g = torch.Generator().manual_seed(seed)
    ordinary = ~torch.isin(windows, torch.tensor(sorted(special)))
    chosen = (torch.rand(windows.shape, generator=g) < mask_prob) & ordinary
    first = ordinary.float().argmax(1)
    chosen[torch.arange(len(windows)), first] |= ~chosen.any(1)
    return chosen


@torch.no_grad()
def masked_predictions(model, tokenizer, windows: torch.Tensor, hidden: torch.Tensor, top_k: int = 3,
                       batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top ids (M, k), their probabilities (M, k))`` at the hidden positions, row by row.

    Each window is wrapped ``<bos> ... <eos>`` as in training and every hidden token becomes
    ``<mask>`` (no random or kept tokens: the model sees only the context).
    """
    model.eval()
    b = len(windows)
    bos = torch.full((b, 1), tokenizer.bos_id)
    eos = torch.full((b, 1), tokenizer.eos_id)
    ids = torch.cat([bos, windows.masked_fill(hidden, tokenizer.mask_id), eos], 1)  # (N, T + 2)
    where = torch.cat([torch.zeros(b, 1, dtype=torch.bool), hidden, torch.zeros(b, 1, dtype=torch.bool)], 1)
    tops, probs = [], []
    for i in range(0, b, batch_size):
        logits = model(ids[i: i + batch_size], attention_mask=torch.ones_like(ids[i: i + batch_size])).logits
        p = torch.softmax(logits[where[i: i + batch_size]].float(), -1)  # (m, V)
        pr, top = p.topk(top_k, -1)
        tops.append(top)
        probs.append(pr)
    return torch.cat(tops), torch.cat(probs)


def most_frequent_token(train_tokens: np.ndarray, vocab_size: int, special: set[int]) -> int:
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size)
    counts[sorted(special)] = -1
    return int(counts.argmax())


def fill_mask_examples(model, tokenizer, tokens: np.ndarray, seed: int, n: int = EXAMPLES) -> list[dict]:
    """Held-out lines with one whole word (a token of 3+ letters after a space) masked."""
    rng = np.random.default_rng(seed)
    body = CONTEXT - 2
    word_ids = {i for i in range(tokenizer.vocab_size)
                if (t := tokenizer.decode([i])).startswith(" ") and t[1:].isalpha() and len(t) >= 4}
    examples = []
    starts = rng.permutation(max(1, len(tokens) // body))
    for s in starts:
        window = np.asarray(tokens[s * body: (s + 1) * body], dtype=np.int64)
        spots = [j for j in range(8, len(window) - 8) if int(window[j]) in word_ids]
        if len(window) < body or not spots:
            continue
        j = int(rng.choice(spots))
        left, right = window[j - 8: j], window[j + 1: j + 9]  # what a reader sees around the blank
        w = torch.from_numpy(window)[None]
        hidden = torch.zeros_like(w, dtype=torch.bool)
        hidden[0, j] = True
        top, prob = masked_predictions(model, tokenizer, w, hidden, top_k=3)
        guesses = [(tokenizer.decode([int(t)]), float(p)) for t, p in zip(top[0], prob[0])]
        examples.append({"left": tokenizer.decode(left.tolist()), "right": tokenizer.decode(right.tolist()),
                         "true": tokenizer.decode([int(window[j])]), "guesses": guesses,
                         "right_guess": int(top[0, 0]) == int(window[j])})
        if len(examples) == n:
            break
    return examples


def one_line(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------ the demo


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="glassformer-demo-bert-") as init:
        untrained_model(init, args.seed)
        demo, cfg = DemoRun.begin("bert", args, MINUTES, DESCRIPTION, timer, lambda steps: config(steps, init),
                                  low=500, high=2500)
        trained = train_and_load(demo, cfg)
    if trained is None:
        return 0  # stopped early: said so
    result, setup, model, tokenizer = trained
    special = set(tokenizer.special_ids)

    windows = held_out_windows(setup.val_data.tokens, CONTEXT - 2, EVAL_WINDOWS)
    hidden = mask_for_eval(windows, special, demo.seed)
    top, _ = masked_predictions(model, tokenizer, windows, hidden, top_k=1)
    truth = windows[hidden]
    accuracy = float((top[:, 0] == truth).float().mean())
    frequent = most_frequent_token(setup.train_data.tokens, tokenizer.vocab_size, special)
    baseline = float((truth == frequent).float().mean())
    say("")
    say(f"trained {result.step} steps in {demo.elapsed() / 60:.1f} min; best validation loss "
        f"{result.best_val_loss:.3f} nats per masked token")
    say(f"held-out text, {len(truth)} masked tokens in {len(windows)} windows of {CONTEXT - 2} BPE tokens:")
    say(f"  top-1 accuracy {accuracy:.1%}; always guessing the most frequent token "
        f"({tokenizer.decode([frequent])!r}) gets {baseline:.1%} ({accuracy / max(baseline, 1e-9):.1f}x)")

    examples = fill_mask_examples(model, tokenizer, setup.val_data.tokens, demo.seed)
    hits = sum(e["right_guess"] for e in examples)
    say("")
    say(f"fill-mask on held-out sentences (the true word in brackets; {hits} of {len(examples)} right):")
    for e in examples:
        guesses = ", ".join(f"{g!r} {p:.0%}" for g, p in e["guesses"])
        mark = "ok  " if e["right_guess"] else "miss"
        say(f"  {mark} ...{one_line(e['left'])} ___ {one_line(e['right'])}...")
        say(f"       [{e['true']!r}]  model: {guesses}")
    say("")
    common.show_attention(model, tokenizer, "The return value is None.", model.main_attention.kind, demo.out, token=2)
    return demo.finish({
        "steps": result.step, "val_loss": result.best_val_loss, "masked_top1": round(accuracy, 4),
        "masked_top1_baseline": round(baseline, 4), "masked_tokens": int(len(truth)),
        "baseline_token": tokenizer.decode([frequent]), "tokenizer": f"byte-level BPE, {tokenizer.vocab_size} ids",
        "fill_mask_examples": examples,
    }, "the model, metrics.jsonl, loss.png, attention.png, {summary}", [
        f'glassformer fill-mask {demo.out} --prompt "Return the <mask> of the object."',
        f"glassformer train classifier --init {demo.out} --data date-order --out runs/demo-bert-classifier",
        f'glassformer explain {demo.out} "import os" --layer 0 --head 0',
        f'glassformer embed {demo.out} --prompt "a list of numbers"',
    ])

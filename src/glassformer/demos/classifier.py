"""``glassformer demo classifier``: a task that only word order can solve.

Each example is two dates as people write them, "3 March 1999, then Fri 27 Nov 2026"; the label
says whether they are ``in order`` or ``out of order`` (:mod:`glassformer.data.date_order`). The
two orders of a pair have the same words and length, so two baselines that ignore order are
printed beside the model, each trained on the same training split and scored on the same
held-out examples:

- **length only**: logistic regression on the length in characters and in tokens;
- **bag of words**: logistic regression on the count of every vocabulary token.

A small BERT, trained from scratch, must read the order of the tokens to beat them. The demo ends
with its confusion matrix and some of the pairs it gets wrong.
"""

from __future__ import annotations

import argparse

import torch

from glassformer.demos import common
from glassformer.demos.common import DemoRun, say, train_and_load

DESCRIPTION = "a BERT reads two dates and tells whether they are in order (the words alone cannot tell)"
MINUTES = 2.25
EXAMPLES = 20000
CONTEXT = 32
VOCAB = 512


def config(steps: int):
    from glassformer.training.config import TrainConfig

    return TrainConfig(task="classifier", data="date-order", num_examples=EXAMPLES, tokenizer="bpe",
                       vocab_size=VOCAB, context=CONTEXT, n_layers=4, n_heads=4, d_model=128, batch_size=64,
                       lr=1e-3, min_lr=1e-4, dropout=0.1, weight_decay=0.01, eval_batches=20, dtype="auto",
                       **common.schedule(steps, evals=6))


def timer(seed: int):
    from glassformer.models import BERT, BERTConfig

    torch.manual_seed(seed)
    model = BERT(BERTConfig(vocab_size=VOCAB, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=CONTEXT,
                            mlm_head=False, num_labels=2, dropout=0.1))
    g = torch.Generator().manual_seed(seed)
    length = 16  # a typical pair of dates, in BPE tokens
    return common.step_timer(model, lambda: {"input_ids": torch.randint(5, VOCAB, (64, length), generator=g),
                                      "attention_mask": torch.ones(64, length, dtype=torch.long),
                                      "labels": torch.randint(0, 2, (64,), generator=g)})


# ------------------------------------------------------------------------------- baselines


def logistic_regression(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int,
                        l2: float = 1e-3, steps: int = 200) -> torch.Tensor:
    """Fit multinomial logistic regression (standardised features, L2) by L-BFGS; predict ``x_test``."""
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    a, b = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(a.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, y_train) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1)


def length_features(texts: list[str], ids: list[list[int]]) -> torch.Tensor:
    return torch.tensor([[len(t), len(i)] for t, i in zip(texts, ids)], dtype=torch.float32)


def count_features(ids: list[list[int]], vocab_size: int) -> torch.Tensor:
    x = torch.zeros(len(ids), vocab_size)
    for row, seq in enumerate(ids):
        x[row].index_add_(0, torch.tensor(seq, dtype=torch.long), torch.ones(len(seq)))
    return x


def texts_and_ids(dataset, tokenizer) -> tuple[list[str], list[list[int]], torch.Tensor]:
    """The examples of a ClassificationDataset back as (texts, token ids without specials, labels)."""
    special = tokenizer.special_ids
    ids = [[t for t in row if t not in special] for row in dataset.rows]
    return [tokenizer.decode(r) for r in ids], ids, torch.tensor(dataset.labels)


def baselines(train_data, val_data, tokenizer, n_classes: int) -> dict[str, float]:
    """Held-out accuracy of the length-only and the bag-of-words logistic regressions."""
    tr_text, tr_ids, y_tr = texts_and_ids(train_data, tokenizer)
    va_text, va_ids, y_va = texts_and_ids(val_data, tokenizer)
    length = logistic_regression(length_features(tr_text, tr_ids), y_tr, length_features(va_text, va_ids), n_classes)
    bow = logistic_regression(count_features(tr_ids, tokenizer.vocab_size), y_tr,
                              count_features(va_ids, tokenizer.vocab_size), n_classes, l2=1e-2)
    return {"baseline_length": float((length == y_va).float().mean()),
            "baseline_bag_of_words": float((bow == y_va).float().mean())}


@torch.no_grad()
def predict(model, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted labels, probability of the prediction)`` for every example, in dataset order."""
    model.eval()
    preds = torch.empty(len(dataset), dtype=torch.long)
    probs = torch.empty(len(dataset))
    for start in range(0, len(dataset), 128):
        index = list(range(start, min(start + 128, len(dataset))))
        batch = dataset.collate(index)
        p = torch.softmax(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1)
        probs[index], preds[index] = p.max(-1)
    return preds, probs


# ------------------------------------------------------------------------------------ the demo


def run(args: argparse.Namespace) -> int:
    demo, cfg = DemoRun.begin("classifier", args, MINUTES, DESCRIPTION, timer, config, low=300, high=2000)
    if (trained := train_and_load(demo, cfg)) is None:
        return 0  # stopped early: said so
    result, setup, model, tokenizer = trained
    names = setup.label_names
    val_texts = texts_and_ids(setup.val_data, tokenizer)[0]
    preds, probs = predict(model, setup.val_data)
    truth = torch.tensor(setup.val_data.labels)
    accuracy = float((preds == truth).float().mean())
    base = baselines(setup.train_data, setup.val_data, tokenizer, len(names))
    best = max(base.values())
    say("")
    say(f"trained {result.step} steps in {demo.elapsed() / 60:.1f} min")
    say(f"held-out accuracy on {len(val_texts)} pairs of dates it never saw:")
    say(f"  the model (reads token order)          {accuracy:.1%}")
    say(f"  length only (logistic regression)      {base['baseline_length']:.1%}")
    say(f"  bag of words (logistic regression)     {base['baseline_bag_of_words']:.1%}")
    say(f"  -> {100 * (accuracy - best):+.1f} points over the best baseline: both orders of a pair have the same "
        f"words and length, so only order tells")
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    for t, p in zip(truth.tolist(), preds.tolist()):
        confusion[t, p] += 1
    say("")
    say("confusion matrix (rows: true label, columns: the model's answer):")
    say("  " + " " * 14 + "".join(f"{n:>14}" for n in names))
    for i, n in enumerate(names):
        say(f"  {n:>14}" + "".join(f"{int(c):>14}" for c in confusion[i]))
    wrong = [i for i in range(len(val_texts)) if preds[i] != truth[i]]
    say("")
    say(f"some pairs it gets wrong ({len(wrong)} of {len(val_texts)}):")
    shown = []
    for i in wrong[:8]:
        text = val_texts[i]
        shown.append({"text": text, "true": names[int(truth[i])], "predicted": names[int(preds[i])],
                      "probability": round(float(probs[i]), 3)})
        say(f"  {names[int(truth[i])]:>12} read as {names[int(preds[i])]:<12} ({float(probs[i]):.0%}): {text!r}")
    return demo.finish({
        "steps": result.step, "val_loss": result.best_val_loss, "accuracy": round(accuracy, 4),
        **{k: round(v, 4) for k, v in base.items()}, "margin_over_best_baseline": round(accuracy - best, 4),
        "held_out": len(val_texts), "labels": names, "confusion": confusion.tolist(), "misclassified": shown,
    }, "the model, metrics.jsonl, loss.png, {summary}", [
        f'glassformer classify {demo.out} --prompt "20 July 2019, then 4 July 1996"',
        f'glassformer classify {demo.out} --prompt "4 July 1996, then 20 July 2019"',
        f'glassformer attention {demo.out} "4 July 1996, then 20 July 2019" --out attention.html',
        "glassformer train classifier --data labelled.csv --out runs/my-classifier",
    ])

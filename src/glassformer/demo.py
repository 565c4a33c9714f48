"""``glassformer demo [gpt|seq2seq|bert]``: the product's main job, on built-in data, in minutes.

- ``gpt`` (the default): a small character-level GPT learns to write like the Python reference
  documentation (``python-docs``).
- ``seq2seq``: the paper's encoder-decoder learns to rewrite dates ("Fri, 27 Nov 2026") as ISO
  8601 ("2026-11-27").
- ``bert``: a small BERT learns masked-character modelling on ``python-docs``.

Each demo trains with the progress bar, reports its validation loss against a baseline, prints
what the model does (samples, translations, filled masks), walks one attention head through the
four steps (QKᵀ, ÷√d_k, softmax, ·V) with the trained model's numbers, writes the loss curve and
an attention heatmap, and ends with the next commands to try.

By default the number of steps is fitted to about ``--minutes`` of training on this machine,
from a short timing of the model's training step; ``--max-steps`` fixes it instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

FAMILIES = ("gpt", "seq2seq", "bert")
DESCRIPTION = {
    "gpt": "a character-level GPT on python-docs, the Python reference documentation",
    "seq2seq": "the encoder-decoder Transformer on the dates task (human-written dates -> ISO 8601)",
    "bert": "a character-level BERT with masked-language modelling on python-docs",
}
SENTENCE = {"gpt": "def add(a, b): return a + b", "bert": "The return value is None.", "seq2seq": "Fri, 27 Nov 2026"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train a small model on built-in data and look inside it (a few minutes)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("family", nargs="?", choices=FAMILIES, default="gpt", help="which model family (default: gpt)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="training steps (default: fit --minutes)")
    p.add_argument("--minutes", type=float, default=2.5, help="training time to aim for when --max-steps is not given")
    p.add_argument("--out", default=None, help="run directory (default: runs/demo-FAMILY, replaced on each demo)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in an --out you chose")
    p.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto", help="progress display")
    p.add_argument("--seed", type=int, default=1337, help="random seed")
    p.set_defaults(func=run_demo)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def demo_config(family: str, max_steps: int, out: Path, overwrite: bool, progress: str, seed: int):
    """The demo's TrainConfig: small enough for a 2-core laptop, big enough to learn something."""
    from glassformer.training.config import TrainConfig

    evals = max(1, min(5, max_steps // 20))
    common = dict(max_steps=max_steps, eval_every=max(1, math.ceil(max_steps / evals)),
                  log_every=max(1, min(10, max_steps // 10)),
                  warmup_steps=min(50, max(1, max_steps // 10)), out=str(out), overwrite=overwrite,
                  progress=progress, seed=seed, tokenizer="char", dtype="auto")
    if family == "gpt":
        return TrainConfig(task="gpt", data="python-docs", context=64, n_layers=4, n_heads=4, d_model=128,
                           batch_size=32, lr=3e-3, min_lr=3e-4, dropout=0.0, eval_batches=8, sample_tokens=80, **common)
    if family == "bert":
        # short windows, more of them: BERT must learn its position vectors to use neighbouring
        # characters, and does so far sooner at context 32 (val 2.25 vs 2.57 after 600 steps at 64)
        return TrainConfig(task="bert", data="python-docs", context=32, n_layers=4, n_heads=4, d_model=128,
                           batch_size=64, lr=2e-3, min_lr=2e-4, dropout=0.0, weight_decay=0.01, eval_batches=8,
                           **common)
    return TrainConfig(task="seq2seq", data="dates", num_examples=20000, context=40, n_layers=2, n_heads=4,
                       d_model=128, batch_size=32, lr=2e-3, min_lr=2e-4, dropout=0.1, beta2=0.98,
                       weight_decay=0.01, eval_batches=4, **common)


def steps_for_budget(family: str, seconds: float, seed: int) -> tuple[int, float]:
    """How many steps fit in ``seconds`` here: time a few training steps of the demo's model shape."""
    from glassformer.training.objectives import token_loss_sum
    from glassformer.training.optim import build_optimizer
    from glassformer.training.tasks import _build_model

    cfg = demo_config(family, 100, Path("unused"), False, "none", seed)
    vocab = 112  # about the size of the demo's character vocabularies

    class _Tok:  # just the ids a model needs to be built
        vocab_size, pad_id, bos_id, eos_id, mask_id = vocab, 0, 1, 2, 4

    from glassformer.training.tasks import TrainingSetup

    model = _build_model(cfg, TrainingSetup(None, _Tok(), None, None), None)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    b, t = cfg.batch_size, cfg.context
    if family == "seq2seq":
        t = 24  # a typical padded date pair
        batch = {"src_ids": torch.randint(5, vocab, (b, t), generator=g), "tgt_ids": torch.randint(5, vocab, (b, 11), generator=g)}
        labels = torch.randint(5, vocab, (b, 11), generator=g)
    else:
        batch = {"input_ids": torch.randint(5, vocab, (b, t), generator=g)}
        labels = torch.randint(5, vocab, (b, t), generator=g)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        token_loss_sum(model(**batch).logits, labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    per_step = min(times[1:]) * 1.15  # the first step warms up; add evaluation and logging overhead
    return max(50, min(3000, int(seconds / per_step))), per_step


def run_demo(args: argparse.Namespace) -> int:
    from glassformer.training.command import run_training
    from glassformer.training.tasks import bits_per_character

    family = args.family
    default_out = args.out is None
    out = Path(args.out) if args.out is not None else Path("runs") / f"demo-{family}"
    say = _printer()
    say(f"glassformer demo: {DESCRIPTION[family]}.")
    if args.max_steps is None:
        steps, per_step = steps_for_budget(family, args.minutes * 60, args.seed)
        say(f"this machine runs a training step in about {per_step * 1000:.0f} ms: training for {steps} steps "
            f"(about {args.minutes:g} minutes; --max-steps sets it)")
    else:
        steps = args.max_steps
    overwrite = args.overwrite or (default_out and (out / "train_config.json").is_file())
    if overwrite and (out / "train_config.json").is_file():
        say(f"replacing the previous run in {out}")
    config = demo_config(family, steps, out, overwrite, args.progress, args.seed)
    if args.max_steps is None:  # a machine busier than the timing showed still finishes near the budget
        config = config.replace(max_minutes=args.minutes * 1.25)
    started = time.perf_counter()
    result, setup, trainer = run_training(config, echo=say)
    minutes = (time.perf_counter() - started) / 60
    if result.stopped_by:
        say(f"stopped by {result.stopped_by}; the run so far is in {out}")
        return 0
    from glassformer.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(out)  # the best checkpoint, as a user would load it
    val = result.best_val_loss
    say("")
    say(f"trained {result.step} steps in {minutes:.1f} min; best validation loss {val:.3f} nats/token")
    if setup.baseline is not None:
        if val < setup.baseline:
            say(f"  {setup.baseline - val:.3f} nats ({1 - val / setup.baseline:.0%}) below the unigram baseline "
                f"{setup.baseline:.3f} (predicting characters by their frequency alone)")
        else:
            say(f"  not yet below the unigram baseline {setup.baseline:.3f}; train longer (--max-steps)")
    if family != "seq2seq":  # one character per token: bits per character = nats / ln 2
        what = "bits per character" if family == "gpt" else "bits per masked character (it sees both sides)"
        say(f"  {bits_per_character(val, 1, 1):.2f} {what} "
            f"(unigram: {bits_per_character(setup.baseline, 1, 1):.2f}; 8 for raw bytes)")
    say("")
    {"gpt": _show_gpt, "bert": _show_bert, "seq2seq": _show_seq2seq}[family](model, tokenizer, say, args.seed)
    _show_attention(model, tokenizer, family, out, say)
    say("")
    say(f"files in {out}/: the model (config.json, model.safetensors, tokenizer.json), metrics.jsonl, "
        f"loss.png (the loss curve), attention.png (one head's attention), checkpoints/")
    say(_next_commands(family, out))
    return 0


def _printer():
    def say(text: str) -> None:
        print(text, flush=True)

    return say


# ------------------------------------------------------------------------ what the model does


def _show_gpt(model, tokenizer, say, seed: int) -> None:
    say("samples (temperature 0.8, top-k 40):")
    for i, prompt in enumerate(("The ", "def ", "Return ")):
        ids = torch.tensor([tokenizer.encode(prompt)])
        new = model.generate(ids, max_new_tokens=160, temperature=0.8, top_k=40, seed=seed + i, eos_token_id=[])
        text = tokenizer.decode(new[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        say(f"  --- {prompt!r}\n" + "\n".join(f"  | {line}" for line in (prompt + text).splitlines()))


def _show_bert(model, tokenizer, say, seed: int) -> None:
    text = "The return value is None."
    hide = [5, 13, 18, 21]  # r_turn, va_ue, i_, N_ne: letters the neighbours on both sides give away
    ids = tokenizer.encode(text)
    masked = [tokenizer.mask_id if i in hide else t for i, t in enumerate(ids)]
    masked = [tokenizer.bos_id, *masked, tokenizer.eos_id]  # wrapped as in training
    shown = "".join("_" if i in hide else c for i, c in enumerate(text))
    say(f"fill-mask: {shown!r} (each _ is a <mask>)")
    results = model.fill_mask(torch.tensor([masked]), mask_token_id=tokenizer.mask_id, top_k=3)[0]
    right = 0
    for p, (top_ids, probs) in zip(hide, results):
        guesses = ", ".join(f"{tokenizer.decode([t])!r} {pr:.0%}" for t, pr in zip(top_ids, probs))
        right += tokenizer.decode([top_ids[0]]) == text[p]
        say(f"  position {p:2d} (was {text[p]!r}): {guesses}")
    say(f"  {right} of {len(hide)} masks filled with the right character")


def _show_seq2seq(model, tokenizer, say, seed: int) -> None:
    from glassformer.data import builtin_pairs, pad

    fresh = builtin_pairs("dates", 200, seed=seed + 12345)  # dates the model never trained on
    rows = [tokenizer.encode(s, add_special_tokens=False) for s, _ in fresh]
    src_ids, src_mask = pad(rows, tokenizer.pad_id)
    out = model.generate(src_ids, src_mask, max_new_tokens=16)
    preds = [tokenizer.decode(r, skip_special_tokens=True) for r in out.tolist()]
    correct = sum(p == t for p, (_, t) in zip(preds, fresh))
    say(f"translations of dates it never saw (greedy): {correct} of {len(fresh)} exactly right")
    for (src, tgt), pred in list(zip(fresh, preds))[:6]:
        say(f"  {'ok ' if pred == tgt else 'BAD'} {src!r:34} -> {pred!r}" + ("" if pred == tgt else f" (want {tgt!r})"))


# ---------------------------------------------------------------------------- attention


def _show_attention(model, tokenizer, family: str, out: Path, say) -> None:
    """The four steps for one head, with this model's numbers, and that head's heatmap."""
    try:
        from glassformer.explain.heatmaps import save_head_heatmap
        from glassformer.explain.steps import format_four_steps, four_steps
        from glassformer.explain.tokens import prepare
    except ImportError as e:  # pragma: no cover - the explain package ships with glassformer
        say(f"(attention walk-through unavailable: {e})")
        return
    text = SENTENCE[family]
    target = None
    if family == "seq2seq":
        src = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        target = model.generate(src, max_new_tokens=16)[0].tolist()
        target = [t for t in target if t not in tokenizer.special_ids]
    prepared = prepare(model, tokenizer, text, target)
    kind = {"gpt": "decoder-self", "bert": "encoder-self", "seq2seq": "cross"}[family]
    layer = len(model.decoder.layers) - 1 if kind != "encoder-self" else len(model.encoder.layers) - 1
    head = 0
    q_tokens = prepared.tokens.get("tokens") or prepared.tokens["target"]
    k_tokens = prepared.tokens.get("tokens") or prepared.tokens["source"]
    token = len(q_tokens) - 1 if family != "bert" else 1
    steps = four_steps(model, prepared.input_ids, layer, head, token, kind=kind, tgt_ids=prepared.tgt_ids)
    say(f"the four steps of attention, {kind} layer {layer} head {head}, for query token {token} "
        f"({q_tokens[token]!r}) of {text!r}:")
    say("  1: q·kⱼ scores each key against the query (QKᵀ)   2: ÷√d_k keeps the scores' scale steady\n"
        "  3: softmax turns scores into weights that sum to 1   4: z = Σ weightⱼ·vⱼ mixes the values (·V)")
    say(format_four_steps(steps, k_tokens, q_tokens[token], plain=not sys.stdout.isatty(), max_rows=16).rstrip())
    with torch.no_grad():
        if family == "seq2seq":
            res = model(torch.tensor([prepared.input_ids]), torch.tensor([prepared.tgt_ids]), return_attentions=True)
        else:
            res = model(torch.tensor([prepared.input_ids]), return_attentions=True)
    if family == "seq2seq":  # the alignment: every cross-attention head and layer, averaged
        from glassformer.explain.heatmaps import save_cross_alignment

        cross = torch.stack([a.weights[0] for a in res.attentions if a.kind == "cross"])  # (L, H, T, S)
        path = save_cross_alignment(cross, k_tokens, q_tokens, out / "attention.png")
        say(f"cross-attention alignment (target rows, source columns; mean of all heads): {path}")
        return
    weights = res.attention(kind, layer)[0, head]  # (Tq, Tk)
    path = save_head_heatmap(weights, q_tokens, k_tokens, out / "attention.png",
                             title=f"{kind} attention, layer {layer}, head {head}")
    say(f"attention heatmap of that head: {path}")


def _next_commands(family: str, out: Path) -> str:
    cmds = {
        "gpt": [f'glassformer generate {out} --prompt "The " --max-new-tokens 200',
                f'glassformer explain {out} "def add(a, b):" --layer 0 --head 1',
                f'glassformer attention {out} "for x in range(10):" --out attention.html',
                "glassformer train gpt --data YOUR_TEXT.txt --out runs/mine",
                "glassformer demo seq2seq   |   glassformer demo bert"],
        "seq2seq": [f'glassformer translate {out} --prompt "November 27th, 2026"',
                    f'glassformer attention {out} "Fri, 27 Nov 2026" --out alignment.png',
                    f'glassformer explain {out} "27.11.2026" --layer 0 --head 0',
                    "glassformer train seq2seq --data pairs.tsv --out runs/my-translator"],
        "bert": [f'glassformer fill-mask {out} --prompt "The <mask>eturn value"',
                 f"glassformer train classifier --init {out} --out runs/demo-classifier",
                 f'glassformer explain {out} "import os" --layer 0 --head 0',
                 f'glassformer embed {out} --prompt "a list of numbers"'],
    }[family]
    return "next, try:\n" + "\n".join(f"  {c}" for c in cmds)

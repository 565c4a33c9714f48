"""``glassformer demo induction``: watch induction heads form ("In-context Learning and Induction
Heads", Olsson et al., 2022).

A 2-layer GPT trains on random letters that hold a segment of distinct letters written twice
(:mod:`glassformer.data.induction`). Nothing in the letters themselves predicts the next one,
but the second copy can be read off the first, by an *induction head*: a head that, from the
current token, attends to the token that followed the same token earlier, and copies it. It
needs a previous-token head in the layer below, so it cannot exist in one layer, and it forms
suddenly: the loss on the repeat sits on a plateau, then drops (the *phase change*). How long
the plateau lasts varies from seed to seed: 1,200-2,200 steps over five seeds with this config
(RESULTS.md, issue 28), where the demo's time budget buys about 7,000 steps on 2 cores.

What makes the head form within a minute on a CPU: a segment of 8-16 distinct letters with no
other copies around it (one earlier occurrence to find, and a third to a half of every sequence
predictable), the loss on every token, 128 sequences per step (Adam follows the faint signal of
the plateau only when the noise around it is averaged away), a flat learning rate of 2e-3, heads
of 16 dimensions (4 per layer at d_model 64), and rotary positions, with which attending to the
previous token is a fixed rotation rather than something learned for every position. With
learned positions, or segments of 4-11 letters, or 2 heads at d_model 32, some seeds were still
on the plateau after 4,000-5,000 steps.

The demo records, at each evaluation, every head's **induction score** (the mean attention from a
repeated token to the token after its earlier occurrence) and the loss on the repeat; it marks
the phase change on ``induction.png``, prints the final score table, and saves the attention of a
probe at each evaluation as a gallery (``attention/index.html``) where the head can be seen forming.

The model is all but attention-only: each layer keeps a feed-forward block of width 4
(``d_ff = 4``), next to nothing beside its heads. The config can drop it (``d_ff = 0``, as in
the paper's small models); at the former d_model 32 that model stayed on its plateau longer.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from glassformer.demos.common import (
    DemoRun,
    next_commands,
    report_steps,
    say,
    step_timer,
    stopped,
    train,
)

DESCRIPTION = "a 2-layer GPT on repeated random letters: induction heads form, with a phase change"
MINUTES = 2.75
CONTEXT = 32
N_HEADS = 4  # of 16 dimensions: 8 heads of 8 at the same width stayed on the plateau longer
D_MODEL = 64
D_FF = 4  # a token feed-forward block: with d_ff = 0 the demo's seed stays on the plateau past its budget
POSITIONS = "rotary"  # a previous-token head is one rotation away: every seed left the plateau by step 2,200
BATCH = 128
PROBE_LENGTH = 10
SHARP = 0.5  # an induction score that names a head the induction head


def config(steps: int, probe: str):
    from glassformer.training.config import TrainConfig

    evals = max(1, min(32, steps // 40))  # the drop takes a few hundred steps: see it in the plot
    # a flat learning rate: the phase change comes after a plateau whose length varies from seed to
    # seed, and a decaying rate would stretch it
    return TrainConfig(task="gpt", data="induction", tokenizer="char", context=CONTEXT, n_layers=2, n_heads=N_HEADS,
                       d_model=D_MODEL, d_ff=D_FF, positions=POSITIONS, dropout=0.0, batch_size=BATCH, lr=2e-3, schedule="constant",
                       beta2=0.98, weight_decay=0.0, warmup_steps=min(50, max(1, steps // 20)), max_steps=steps,
                       eval_every=max(1, math.ceil(steps / evals)), log_every=max(1, min(100, steps // 10)),
                       eval_batches=4, sample_tokens=0, snapshot_attention=probe, dtype="auto",
                       # eager always: compiling a 10K-parameter model never pays, and compiled sums would
                       # move the end of the plateau, so --max-steps runs would differ from the timed ones
                       compile=False)


def timer(seed: int):
    from glassformer.data.induction import ALPHABET, RepeatedTokensDataset
    from glassformer.models import GPT, GPTConfig

    torch.manual_seed(seed)
    vocab = 5 + len(ALPHABET)  # the special tokens, then the letters
    model = GPT(GPTConfig(vocab_size=vocab, d_model=D_MODEL, n_heads=N_HEADS, n_layers=2, d_ff=D_FF, max_len=CONTEXT,
                          positions=POSITIONS))
    data = RepeatedTokensDataset(list(range(5, vocab)), CONTEXT)
    g = torch.Generator().manual_seed(seed)
    return step_timer(model, lambda: data.batch(BATCH, g))


def phase_change(records: list[dict]) -> int | None:
    """The first evaluation at which the loss on the repeat has fallen past half-way from its
    plateau (the first evaluation's value) to its final value; None when it never fell by half a nat."""
    if len(records) < 2:
        return None
    start, end = records[0]["repeated_loss"], records[-1]["repeated_loss"]
    if start - end < 0.5:
        return None
    half = (start + end) / 2
    return next(r["step"] for r in records if r["repeated_loss"] <= half)


def plot(records: list[dict], change: int | None, path) -> None:
    """Loss on the repeat and the best head's score per evaluation, the phase change marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from glassformer.io import atomic_write

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["repeated_loss"] for r in records], "o-", color="tab:blue", label="loss on the repeat")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    right = ax.twinx()
    right.plot(steps, [max(max(h) for h in r["scores"]) for r in records], "s--", color="tab:green",
               label="best induction score")
    right.set_ylim(0, 1)
    right.set_ylabel("induction score")
    if change is not None:
        ax.axvline(change, color="tab:red", ls=":", label=f"phase change (step {change})")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    ax.set_title("induction heads forming")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


@torch.no_grad()
def final_scores(model, seed: int) -> torch.Tensor:
    """(L, H) induction scores of ``model`` on fresh sequences (not the ones probed in training)."""
    from glassformer.data.induction import RepeatedTokensDataset, induction_scores

    model.eval()
    data = RepeatedTokensDataset(list(range(5, model.config.vocab_size)), CONTEXT)
    seqs, periods, starts = data.sample(256, torch.Generator().manual_seed(seed + 99))
    spec = model.main_attention
    _, cache = model.run_with_cache(seqs[:, :-1], names=[spec.activation(i, "pattern") for i in range(spec.n_layers)])
    return induction_scores(cache, periods, CONTEXT, starts)  # the cache's stacked patterns (L, B, H, T, T)


def run(args: argparse.Namespace) -> int:
    from glassformer.data.induction import probe_text
    from glassformer.io import atomic_write_json
    from glassformer.loading import load_model_and_tokenizer
    from glassformer.training.callbacks import INDUCTION_LOG

    demo = DemoRun.from_args("induction", args, MINUTES)
    say(f"glassformer demo induction: {DESCRIPTION}.")
    steps, per_step = demo.fit_steps(timer(demo.seed), low=200, high=8000)
    report_steps(demo, steps, per_step)
    probe = probe_text(PROBE_LENGTH, seed=demo.seed)
    cfg = demo.train_config(config(steps, probe))
    result, _setup, _trainer = train(demo, cfg)
    if stopped(result, demo.out):
        return 0
    model, _tokenizer = load_model_and_tokenizer(demo.out)
    log_path = demo.out / INDUCTION_LOG
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    change = phase_change(records)
    plot(records, change, demo.out / "induction.png")
    scores = final_scores(model, demo.seed)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    best = float(scores[layer, head])
    say("")
    say(f"trained {result.step} steps in {demo.elapsed() / 60:.1f} min; loss on the repeat "
        f"{records[0]['repeated_loss']:.2f} -> {records[-1]['repeated_loss']:.2f} nats "
        f"(ln {model.config.vocab_size - 5} = {math.log(model.config.vocab_size - 5):.2f} is a blind guess)")
    if change is not None:
        say(f"phase change: the loss on the repeat fell past half-way at step {change} (marked on induction.png)")
    else:
        say("no phase change yet: the loss on the repeat has not dropped; train longer (--max-steps)")
    say("")
    say("induction score per head (mean attention from a repeated token to the token after its earlier "
        "occurrence; 1 = always):")
    say("          " + "".join(f"  head {h}" for h in range(scores.shape[1])))
    sharp = best >= SHARP
    for i, row in enumerate(scores.tolist()):
        mark = ("   <- induction head" if sharp else "   <- highest") if i == layer else ""
        say(f"  layer {i}" + "".join(f"{v:8.2f}" for v in row) + mark)
    say(f"best: layer {layer} head {head}, score {best:.2f}")
    if not sharp:
        say(f"  no single head puts {SHARP:.0%} of its attention on that token yet: the repeat is predicted, but the "
            f"heads share the work and spread their attention (train longer: --max-steps)")
    atomic_write_json(demo.out / "head_scores.json", {"induction": scores.double().round(decimals=4).tolist(),
                                                      "best_head": [layer, head], "score": round(best, 4)})
    path = demo.write_summary({
        "steps": result.step, "induction_score_best": round(best, 4), "best_head": [layer, head],
        "phase_change_step": change, "repeated_loss_start": records[0]["repeated_loss"],
        "repeated_loss_end": records[-1]["repeated_loss"], "scores": scores.double().round(decimals=4).tolist(),
        "probe": probe,
    })
    say("")
    say(f"files in {demo.out}/: induction.png (the phase change), {INDUCTION_LOG} (scores at every evaluation), "
        f"head_scores.json, attention/index.html (the probe's attention at every evaluation, head by head), "
        f"loss.png, {path.name}")
    # --n: a copy as long as the segments it trained on (8 to 16 letters); longer ones it has never seen
    next_commands([f"glassformer heads {demo.out} --n 10",
                   f'glassformer attention {demo.out} "{probe}" --out induction.html',
                   f'glassformer ablate {demo.out} "{probe}" --head {layer}.{head}',
                   "python docs/walkthrough.py   (its last chapter finds and ablates this head)"])
    return 0

"""``glassformer demo gpt`` (the default): a GPT learns to write like the Python reference docs.

The corpus is ``python-docs`` (the ``help()`` topics that ship with every Python, ~0.5 MB). A
byte-level BPE vocabulary of 2,048 pieces, trained here on the corpus, makes most words one or
two tokens, so a 128-token context sees about a paragraph. The demo then measures what it
promises, on samples at temperature 0.8:

- **word hit rate**: the share of generated words (runs of letters) that occur in the training
  split; **pair hit rate**: the share of consecutive word pairs that occur there too;
- **bits per character** on the validation split, against the unigram baseline (predicting every
  token by its frequency alone), both per character of text so they compare across tokenizers;
- **degenerate runs**: a character repeated 20+ times where the corpus never repeats it so.
"""

from __future__ import annotations

import argparse
import math
import re

import numpy as np
import torch

from glassformer.demos import common
from glassformer.demos.common import DemoRun, say, train_and_load

DESCRIPTION = "a GPT with a BPE vocabulary learns to write like the Python reference documentation (python-docs)"
MINUTES = 2.25  # training budget; data, tokenizer and the measurements take the rest of 3 minutes

VOCAB = 2048
# rotary positions (RoFormer): in equal training time on this data and model, 0.22 bits/char below
# learned positions on each of 3 seeds (benchmarks/after_2017.py; README "after 2017")
POSITIONS = "rotary"
CONTEXT = 128
TEMPERATURE, TOP_K = 0.8, 40
PROMPTS = ("The", "This", "If the", "Return", "A", "When", "For example,", "The default")
SAMPLE_TOKENS = 160
SAMPLES_PER_PROMPT = 4  # 32 samples, ~2,400 word pairs: one sample per prompt (~550 pairs) swings the pair rate by 5+ points
WORD = re.compile(r"[A-Za-z]+")
RUN = re.compile(r"(.)\1{19,}", re.DOTALL)  # a character 20+ times in a row


def config(steps: int):
    from glassformer.training.config import TrainConfig

    return TrainConfig(task="gpt", data="python-docs", tokenizer="bpe", vocab_size=VOCAB, context=CONTEXT,
                       n_layers=4, n_heads=4, d_model=128, positions=POSITIONS, batch_size=32, lr=3e-3, min_lr=3e-4, dropout=0.0,
                       eval_batches=8, sample_tokens=60, dtype="auto", **common.schedule(steps))


def timer(seed: int):
    from glassformer.models import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=CONTEXT,
                          positions=POSITIONS))
    g = torch.Generator().manual_seed(seed)
    return common.step_timer(model, lambda: {"input_ids": torch.randint(0, VOCAB, (32, CONTEXT), generator=g),
                                      "labels": torch.randint(0, VOCAB, (32, CONTEXT), generator=g)})


# --------------------------------------------------------------------------- measurements


def sample(model, tokenizer, prompts, max_new_tokens: int, seed: int, top_k: int | None = TOP_K) -> list[str]:
    """The demo's one call into glassformer.generation: sampled continuations, as text."""
    from glassformer.generation import generate_lists

    new = generate_lists(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=max_new_tokens,
                         temperature=TEMPERATURE, top_k=top_k, seed=seed, eos_token_id=[])
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


def unigram_samples(tokenizer, train_tokens: np.ndarray, prompts, max_new_tokens: int, seed: int) -> list[str]:
    """The same number of tokens drawn from the training token frequencies alone (temperature
    and top-k as for the model): what the hit rates are worth without any context."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=tokenizer.vocab_size).astype(np.float64)
    counts[sorted(tokenizer.special_ids)] = 0
    logits = np.log(np.maximum(counts, 1e-12)) / TEMPERATURE
    keep = np.argsort(logits)[-TOP_K:]
    p = np.exp(logits[keep] - logits[keep].max())
    p /= p.sum()
    rng = np.random.default_rng(seed)
    return [prompt + tokenizer.decode(keep[rng.choice(len(keep), max_new_tokens, p=p)].tolist())
            for prompt in prompts]


def words_and_pairs(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    words = WORD.findall(text)
    return set(words), set(zip(words, words[1:]))


def hit_rates(samples: list[str], corpus_words: set[str], corpus_pairs: set[tuple[str, str]]) -> dict[str, float]:
    """Shares of generated words and consecutive word pairs that occur in the corpus.

    The last word of each sample is left out: the token budget may cut it short.
    """
    hits = total = pair_hits = pair_total = 0
    for text in samples:
        words = WORD.findall(text)[:-1]
        hits += sum(w in corpus_words for w in words)
        total += len(words)
        pairs = list(zip(words, words[1:]))
        pair_hits += sum(p in corpus_pairs for p in pairs)
        pair_total += len(pairs)
    return {"word_hit_rate": hits / max(total, 1), "bigram_hit_rate": pair_hits / max(pair_total, 1),
            "words_generated": total, "pairs_generated": pair_total}


def degenerate_runs(samples: list[str], corpus: str) -> list[str]:
    """Runs of one character 20+ long in the samples that the corpus never has."""
    found = []
    for text in samples:
        for m in RUN.finditer(text):
            if m.group(1) * 20 not in corpus:
                found.append(m.group(0))
    return found


@torch.no_grad()
def bits_per_char(model, tokenizer, tokens: np.ndarray, context: int, batch_size: int = 16) -> tuple[float, int]:
    """Validation cross-entropy in bits per character of text, over the whole split.

    Consecutive windows: each token after the first is predicted once; the characters are those
    of the predicted tokens' text.
    """
    model.eval()
    n = (len(tokens) - 1) // context * context
    ids = torch.from_numpy(np.asarray(tokens[: n + 1], dtype=np.int64))
    x, y = ids[:-1].view(-1, context), ids[1:].view(-1, context)  # (N, T)
    nats = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i: i + batch_size]).logits.float()  # (B, T, V)
        nats += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i: i + batch_size].flatten(),
                                                  reduction="sum").item()
    chars = len(tokenizer.decode(y.flatten().tolist()))
    return nats / (chars * math.log(2)), chars


# --------------------------------------------------------------------------------- the demo


def run(args: argparse.Namespace) -> int:
    demo, cfg = DemoRun.begin("gpt", args, MINUTES, DESCRIPTION, timer, config, low=200, high=900)
    if (trained := train_and_load(demo, cfg)) is None:
        return 0  # stopped early: said so
    result, setup, model, tokenizer = trained  # the best checkpoint, as a user loads it

    train_tokens, val_tokens = setup.train_data.tokens, setup.val_data.tokens
    corpus = tokenizer.decode(np.asarray(train_tokens).tolist())
    words, pairs = words_and_pairs(corpus)
    val_bpc, val_chars = bits_per_char(model, tokenizer, val_tokens, cfg.context)
    val_text_tokens = (len(val_tokens) - 1) // cfg.context * cfg.context
    unigram_bpc = setup.baseline * val_text_tokens / (val_chars * math.log(2))
    say("")
    say(f"trained {result.step} steps in {demo.elapsed() / 60:.1f} min; best validation loss "
        f"{result.best_val_loss:.3f} nats/token")
    say(f"  {val_bpc:.2f} bits per character on the validation text (unigram baseline {unigram_bpc:.2f}; "
        f"8 for raw bytes); {val_chars / val_text_tokens:.2f} characters per token")

    prompts = list(PROMPTS) * SAMPLES_PER_PROMPT
    texts = sample(model, tokenizer, prompts, SAMPLE_TOKENS, demo.seed)
    samples = [p + t for p, t in zip(prompts, texts)]
    rates = hit_rates(samples, words, pairs)
    runs = degenerate_runs(samples, corpus)
    plain = hit_rates([p + t for p, t in zip(prompts, sample(model, tokenizer, prompts, SAMPLE_TOKENS, demo.seed, None))],
                      words, pairs)
    unigram = hit_rates(unigram_samples(tokenizer, train_tokens, prompts, SAMPLE_TOKENS, demo.seed), words, pairs)
    say("")
    say(f"samples (temperature {TEMPERATURE}, top-k {TOP_K}; {SAMPLE_TOKENS} tokens each):")
    for text in samples[:3]:
        say("  ---\n" + "\n".join(f"  | {line}" for line in text.splitlines()))
    say(f"of {rates['words_generated']} words in {len(samples)} samples, {rates['word_hit_rate']:.1%} occur in the "
        f"training text, and {rates['bigram_hit_rate']:.1%} of {rates['pairs_generated']} consecutive word pairs do")
    say("  (a word is a run of letters; the pairs show whether words follow each other as in the corpus)")
    say(f"  without top-k (temperature {TEMPERATURE} alone): {plain['word_hit_rate']:.1%} words, "
        f"{plain['bigram_hit_rate']:.1%} pairs; tokens drawn by frequency alone (no context, top-k {TOP_K}): "
        f"{unigram['word_hit_rate']:.1%} words, {unigram['bigram_hit_rate']:.1%} pairs")
    say("  (frequent words are corpus words, so the word rate alone says little; the pairs and the bits per "
        "character show what context adds)")
    say(f"  degenerate runs (a character 20+ times where the corpus never repeats it so): {len(runs)}")
    say("")
    common.show_attention(model, tokenizer, "def add(a, b): return a + b", model.main_attention.kind, demo.out)
    metrics = common.read_metrics(demo.out)
    figures = {
        "steps": result.step, "val_loss": result.best_val_loss, "val_bits_per_char": round(val_bpc, 4),
        "unigram_bits_per_char": round(unigram_bpc, 4), "word_hit_rate": round(rates["word_hit_rate"], 4),
        "bigram_hit_rate": round(rates["bigram_hit_rate"], 4), "words_generated": rates["words_generated"],
        "degenerate_runs": len(runs), "temperature": TEMPERATURE, "top_k": TOP_K,
        "word_hit_rate_no_top_k": round(plain["word_hit_rate"], 4),
        "bigram_hit_rate_no_top_k": round(plain["bigram_hit_rate"], 4),
        "unigram_word_hit_rate": round(unigram["word_hit_rate"], 4),
        "unigram_bigram_hit_rate": round(unigram["bigram_hit_rate"], 4),
        "tokenizer": f"byte-level BPE, {tokenizer.vocab_size} ids", "context": cfg.context,
        "train_seconds": metrics[-1]["elapsed_s"] if metrics else None, "samples": samples,
    }
    return demo.finish(figures, "the model (config.json, model.safetensors, tokenizer.json), metrics.jsonl, "
                       "loss.png, attention.png, {summary}, checkpoints/", [
        f'glassformer generate {demo.out} --prompt "The" --max-new-tokens 120 --seed 0',
        f'glassformer explain {demo.out} "def add(a, b):" --layer 0 --head 1',
        f'glassformer attention {demo.out} "for x in range(10):" --out attention.html',
        "glassformer train gpt --data YOUR_TEXT.txt --tokenizer bpe --out runs/mine",
        "glassformer demo bert | seq2seq | classifier | induction",
        "glassformer demo real   (a real pretrained model, all-MiniLM-L6-v2)",
    ])

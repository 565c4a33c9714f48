"""A minimal single-file character GPT trainer: the baseline ``time_to_loss.py`` races ``glassformer train gpt`` against.

Written the obvious way with plain PyTorch and its defaults (threads, OpenMP, allocator, AdamW's
default implementation); it imports nothing of glassformer's. It mirrors what ``glassformer train
gpt`` does with the same flags, so the two differ only in the code around the same work:

* data: the file's characters, ids ``reserved .. reserved + n - 1`` in code-point order (glassformer's
  char tokenizer puts its 5 special tokens first); the last ``val_fraction`` is validation. Training
  windows of ``context + 1`` at uniform random starts from a generator seeded ``seed``; validation:
  the first ``eval_batches * batch_size`` non-overlapping windows of the validation split;
* model: pre-LN GPT, learned positions, GELU (tanh) feed-forward of width 4 * d_model, a final
  LayerNorm, LM head tied to the token embedding; N(0, 0.02) weights, 0.02 / sqrt(2 * n_layers) on
  the projections into the residual stream, zero biases;
* optimisation: AdamW with weight decay on matrices and embeddings only, linear warm-up then a
  cosine to ``min_lr``, gradient clipping; cross-entropy as the mean over the targets.

It writes a JSON report (``--report``): the wall-clock time of its first step, of each evaluation
(and the seconds since the first step at which each began), the validation losses and the end.

    python benchmarks/minimal_train.py --data corpus.txt --n-layers 4 --d-model 128 --context 64 --report r.json
"""

import time

STARTED = time.time()  # before importing torch: the script's own start-up is part of its wall time

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # (B, T, C) each
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, d: int, n_layers: int, n_heads: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(Block(d, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, V)


def lr_at(step: int, a: argparse.Namespace) -> float:
    if step <= a.warmup_steps:
        return a.lr * step / max(a.warmup_steps, 1)
    progress = min(1.0, (step - a.warmup_steps) / max(a.max_steps - a.warmup_steps, 1))
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (a.lr - a.min_lr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--report", required=True)
    for name, kind, default in [("n-layers", int, 4), ("n-heads", int, 4), ("d-model", int, 128), ("context", int, 64),
                                ("batch-size", int, 12), ("max-steps", int, 500), ("eval-every", int, 250),
                                ("eval-batches", int, 10), ("lr", float, 1e-3), ("min-lr", float, 1e-4),
                                ("warmup-steps", int, 100), ("weight-decay", float, 0.1), ("beta1", float, 0.9),
                                ("beta2", float, 0.99), ("grad-clip", float, 1.0), ("val-fraction", float, 0.1),
                                ("seed", int, 1337), ("reserved", int, 5)]:
        p.add_argument("--" + name, type=kind, default=default)
    a = p.parse_args()

    text = open(a.data, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i + a.reserved for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = int(round(len(data) * a.val_fraction))
    train, val = data[: len(data) - n_val], data[len(data) - n_val:]
    t = a.context
    starts = list(range(0, len(val) - t, t))[: a.eval_batches * a.batch_size]
    windows = torch.stack([val[s: s + t + 1] for s in starts])  # (N, T+1)
    val_batches = windows.split(a.batch_size)

    torch.manual_seed(a.seed)
    model = GPT(a.reserved + len(chars), t, a.d_model, a.n_layers, a.n_heads)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(a.beta1, a.beta2))
    gen = torch.Generator().manual_seed(a.seed)
    report = {"started_unix": STARTED, "params": sum(q.numel() for q in model.parameters()),
              "vocab_size": a.reserved + len(chars), "evals": [], "first_loss": None}
    step_s = []
    t0 = time.perf_counter()
    report["first_step_unix"] = time.time()
    for step in range(1, a.max_steps + 1):
        ts = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a)
        idx = torch.randint(0, len(train) - t, (a.batch_size,), generator=gen)[:, None] + torch.arange(t + 1)
        batch = train[idx]  # (B, T+1)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()
        if report["first_loss"] is None:
            report["first_loss"] = value
        step_s.append(time.perf_counter() - ts)
        if step % a.eval_every == 0 or step == a.max_steps:
            at, began = time.perf_counter() - t0, time.time()
            model.eval()
            with torch.no_grad():
                losses = [F.cross_entropy(model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten(), reduction="sum")
                          for b in val_batches]
            model.train()
            val_loss = float(sum(losses)) / sum(b[:, 1:].numel() for b in val_batches)
            report["evals"].append({"step": step, "val_loss": val_loss, "elapsed_s": at, "unix": began,
                                    "eval_s": time.time() - began})
    report["end_unix"] = time.time()
    report["step_s_median"] = statistics.median(step_s)
    report["steps_s"] = sum(step_s)
    with open(a.report, "w", encoding="utf-8") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()

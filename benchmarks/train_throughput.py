"""Training throughput: our GPT training step against ``transformers``' ``GPT2LMHeadModel``.

    python benchmarks/train_throughput.py            # the issue's shape, fp32 and bf16 (~10 min on 2 cores)
    python benchmarks/train_throughput.py --shape gpt2 --precision fp32 --curve-steps 0 --steps 1   # GPT-2-124M
    python benchmarks/train_throughput.py --quick    # a tiny model, seconds (run by the tests)
    python benchmarks/train_throughput.py --separate --precision fp32 --curve-steps 0   # each side in its own process

Shape (default): 6 layers, 6 heads, d_model 384, d_ff 1536, context 256, vocab 65, batch 8,
dropout 0, on the CPU. Both models hold the same weights (ours exported through
``glassformer.interop``; the script checks that the logits agree), and both run a full step:
forward, loss, backward, gradient clipping to 1.0, AdamW (foreach) with the same decay groups.

- ours: ``glassformer.training.Trainer.train_step``, the exact step ``glassformer train`` runs;
- peer: ``GPT2LMHeadModel(input_ids, labels=...)`` with ``attn_implementation="sdpa"``.

Each repeat times ``--steps`` steps of each side, alternating which goes first, for fp32 and for
bf16 autocast (on a CPU without native bf16 units, where a bf16 step is ~20x slower, bf16 gets at
most 3 repeats of 1 step). The ratio (ours / peer tokens per second) is taken per repeat and the
median is reported. In one process both sides share the process's allocator settings, including
the one our trainer makes (:func:`glassformer.training.runtime.keep_freed_memory`); ``--separate``
runs each side in a fresh process of its own instead, as each user's run would be. GFLOP/s uses
the usual training estimate, 6·N + 12·L·d·T FLOPs per token (N = weights that multiply:
everything but the position table), and is compared with a 2048² matmul timed in the same run,
in the same precision (the best of one timing per round).

``--curve-steps`` also trains our GPT twice from the same initial weights on the same
``python-docs`` batches (demo shape), in fp32 and under bf16 autocast, and reports how far apart
the two loss curves are.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `glassformer` runs (see glassformer/__init__.py)

import torch  # noqa: E402

from glassformer.models import GPT, GPTConfig  # noqa: E402
from glassformer.training.config import TrainConfig  # noqa: E402
from glassformer.training.optim import param_groups  # noqa: E402
from glassformer.training.runtime import cpu_has_native_bf16  # noqa: E402
from glassformer.training.trainer import Trainer  # noqa: E402

SHAPES = {  # name -> (n_layers, n_heads, d_model, context, vocab, batch)
    "issue": (6, 6, 384, 256, 65, 8),  # 10.8M parameters
    "gpt2": (12, 12, 768, 256, 50257, 4),  # GPT-2-124M
    "tiny": (2, 2, 64, 32, 65, 2),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class RandomTokens:
    """A dataset of uniformly random windows: throughput does not depend on the text."""

    def __init__(self, vocab: int, context: int) -> None:
        self.vocab, self.context = vocab, context

    def batch(self, batch_size: int, generator: torch.Generator) -> dict:
        x = torch.randint(0, self.vocab, (batch_size, self.context + 1), generator=generator)  # (B, T+1)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}


def build_pair(shape: str, seed: int = 0):
    """Our GPT and a GPT2LMHeadModel holding the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from glassformer.interop import export_hf

    n_layers, n_heads, d_model, context, vocab, _ = SHAPES[shape]
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(vocab_size=vocab, d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_ff=4 * d_model,
                         max_len=context, dropout=0.0))
    hf_config, tensors = export_hf(ours)
    config = GPT2Config(**{**hf_config, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    config._attn_implementation = "sdpa"
    peer = GPT2LMHeadModel(config)
    missing, unexpected = peer.load_state_dict(tensors, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"weights did not map: missing {missing}, unexpected {unexpected}")
    peer.tie_weights()
    x = torch.randint(0, vocab, (2, context))
    with torch.no_grad():
        diff = (ours(x).logits - peer(input_ids=x).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"the two models disagree (max logit difference {diff:.2e}); not the same function")
    return ours, peer, diff


def flops_per_token(model: GPT) -> float:
    """6·N + 12·L·d·T: N counts every weight that multiplies (the tied LM head once), not the position table."""
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pos_emb"))
    return 6 * n + 12 * c.n_layers * c.d_model * c.max_len


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> tuple[float, int]:
    """(GFLOP/s, n) of an n×n matmul in ``dtype``: the best of ``repeats`` through ``@`` and ``F.linear``.

    n shrinks (by halves, down to 256) while one ``@`` would take over a second: without native
    bf16 units a 2048² bf16 matmul takes tens of seconds on a small CPU.
    """
    while n > 256:
        a, b = torch.randn(256, 256).to(dtype), torch.randn(256, 256).to(dtype)
        a @ b
        t = time.perf_counter()
        a @ b
        if (time.perf_counter() - t) * (n / 256) ** 3 < 1.0:
            break
        n //= 2
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = math.inf
    # both entry points: without native bf16, F.linear reaches oneDNN's bf16 kernel and `@` does not
    for matmul in (torch.matmul, torch.nn.functional.linear):
        matmul(a, b)
        for _ in range(repeats):
            t = time.perf_counter()
            matmul(a, b)
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9, n


COMPILE = False  # --compile: ours runs torch.compile'd, as `glassformer train` does by default on long runs


def make_ours(model: GPT, shape: str, precision: str) -> Trainer:
    _, _, _, context, vocab, batch = SHAPES[shape]
    # by default eager against eager (the peer is not compiled)
    cfg = TrainConfig(batch_size=batch, context=context, max_steps=10**6, warmup_steps=0, lr=1e-4, min_lr=1e-4,
                      schedule="constant", device="cpu", dtype="float32" if precision == "fp32" else "bfloat16",
                      progress="none", compile=COMPILE)
    return Trainer(model, cfg, RandomTokens(vocab, context))


class Peer:
    """The same step written the way a ``transformers`` user would write it."""

    def __init__(self, model, shape: str, precision: str) -> None:
        _, _, _, context, vocab, batch = SHAPES[shape]
        self.model, self.dtype = model, PRECISIONS[precision]
        self.optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.99), foreach=True)
        self.data, self.batch_size = RandomTokens(vocab, context), batch
        self.generator = torch.Generator().manual_seed(0)
        model.train()

    def train_step(self, step: int) -> None:
        b = self.data.batch(self.batch_size, self.generator)
        amp = torch.autocast("cpu", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with amp:
            # labels = input_ids: GPT2LMHeadModel shifts them inside
            loss = self.model(input_ids=b["input_ids"], labels=b["input_ids"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def time_steps(runner, steps: int, start: int) -> float:
    t = time.perf_counter()
    for i in range(steps):
        runner.train_step(start + i)
    return (time.perf_counter() - t) / steps


def throughput(shape: str, precisions: list[str], repeats: int, steps: int, peak_n: int = 2048) -> tuple[list[dict], dict]:
    ours_model, peer_model, diff = build_pair(shape)
    tokens = SHAPES[shape][3] * SHAPES[shape][5]
    fpt = flops_per_token(ours_model)
    rows, info = [], {"max_logit_diff": diff, "flops_per_token": fpt, "tokens_per_step": tokens}
    for precision in precisions:
        # separate copies per precision, so an optimiser's state never crosses rows
        ours = make_ours(GPT(ours_model.config), shape, precision)
        ours.model.load_state_dict(ours_model.state_dict())
        peer_copy = type(peer_model)(peer_model.config)
        peer_copy.load_state_dict(peer_model.state_dict())
        peer = Peer(peer_copy, shape, precision)
        n_repeats, n_steps, warmup = repeats, steps, 3
        if precision == "bf16" and not cpu_has_native_bf16():  # emulated bf16 is ~20x slower: fewer, shorter rounds
            n_repeats, n_steps, warmup = min(repeats, 3), 1, 1
        for i in range(warmup):  # warm-up: allocator, oneDNN kernels, optimiser state
            ours.train_step(i + 1), peer.train_step(i + 1)
        peak, n = 0.0, 0
        times = {"ours": [], "peer": []}
        for r in range(n_repeats):
            # the peak is re-measured each round and the best kept: neighbours only ever slow it down
            peak, n = max((peak, n), matmul_peak(PRECISIONS[precision] or torch.float32, peak_n))
            order = (("ours", ours), ("peer", peer)) if r % 2 == 0 else (("peer", peer), ("ours", ours))
            for name, runner in order:
                times[name].append(time_steps(runner, n_steps, warmup + 1 + r * n_steps))
        ratios = [p / o for o, p in zip(times["ours"], times["peer"])]  # ours / peer in tokens per second
        row = {"shape": shape, "precision": precision, "matmul_peak_gflops": peak, "matmul_n": n,
               "ratio": statistics.median(ratios), "ratios": ratios,
               "repeats": n_repeats, "steps": n_steps}
        for name in ("ours", "peer"):
            sec = statistics.median(times[name])
            row[f"{name}_s_per_step"] = sec
            row[f"{name}_tokens_per_s"] = tokens / sec
            row[f"{name}_gflops"] = fpt * tokens / sec / 1e9
            row[f"{name}_pct_of_peak"] = 100 * row[f"{name}_gflops"] / peak
        rows.append(row)
        print(markdown_row(row), flush=True)
    return rows, info


def worker(side: str, shape: str, steps: int, warmup: int) -> None:
    """One side alone in this process (``--separate``): warm up, time ``steps`` steps, print JSON.

    The peer's process never builds our ``Trainer``, so it runs with the process defaults a
    ``transformers`` user has; ours runs with what ``glassformer train`` sets up (the trainer's
    allocator setting, :func:`glassformer.training.runtime.keep_freed_memory`)."""
    import resource

    ours_model, peer_model, _ = build_pair(shape)
    runner = make_ours(ours_model, shape, "fp32") if side == "ours" else Peer(peer_model, shape, "fp32")
    for i in range(warmup):
        runner.train_step(i + 1)
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = [time_steps(runner, 1, warmup + 1 + i) for i in range(steps)]
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"side": side, "s_per_step": statistics.median(times), "times": times,
                      "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                      "system_s_per_step": (after.ru_stime - before.ru_stime) / steps}), flush=True)


def separate(shape: str, repeats: int, steps: int, warmup: int, threads: int | None) -> dict:
    """Each side in its own fresh process, alternating which goes first; median of per-repeat ratios."""
    import subprocess

    tokens = SHAPES[shape][3] * SHAPES[shape][5]
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for r in range(repeats):
        faults = {}
        for side in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
            argv = [sys.executable, __file__, "--worker", side, "--shape", shape, "--steps", str(steps),
                    "--warmup", str(warmup)] + (["--threads", str(threads)] if threads else [])
            out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            times[side].append(out["s_per_step"])
            faults[side] = f"{out['page_faults_per_step']:,.0f} page faults, {out['system_s_per_step']:.2f} s system"
        print(f"repeat {r + 1}: ours {tokens / times['ours'][-1]:,.0f} tok/s ({faults['ours']}), peer "
              f"{tokens / times['peer'][-1]:,.0f} tok/s ({faults['peer']}) a step; ratio "
              f"{times['peer'][-1] / times['ours'][-1]:.2f}x", flush=True)
    ratios = [p / o for o, p in zip(times["ours"], times["peer"])]
    row = {"shape": shape, "separate_processes": True, "ratio": statistics.median(ratios), "ratios": ratios,
           "ours_tokens_per_s": tokens / statistics.median(times["ours"]),
           "peer_tokens_per_s": tokens / statistics.median(times["peer"])}
    print(f"separate processes, {shape}, median of {repeats}: ours {row['ours_tokens_per_s']:,.0f} tok/s, peer "
          f"{row['peer_tokens_per_s']:,.0f} tok/s, ratio {row['ratio']:.2f}x")
    return row


def loss_curves(steps: int, context: int = 64, batch: int = 32) -> dict:
    """Our GPT (demo shape) trained in fp32 and in bf16 autocast from the same start, same batches."""
    from glassformer.data import CausalLMDataset, encode_corpus, load_corpus, split_tokens
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", load_corpus("python-docs"))
    train, _ = split_tokens(encode_corpus("python-docs", tok, progress=False, is_text=False), 0.1)
    data = CausalLMDataset(train, context)
    torch.manual_seed(0)
    start = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=context,
                          dropout=0.0)).state_dict()
    curves = {}
    for precision in ("fp32", "bf16"):
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=context,
                              dropout=0.0))
        model.load_state_dict(start)
        cfg = TrainConfig(batch_size=batch, context=context, max_steps=steps, warmup_steps=max(1, steps // 10),
                          lr=3e-3, min_lr=3e-4, device="cpu", dtype="float32" if precision == "fp32" else "bfloat16",
                          progress="none", seed=0, compile=False)
        trainer = Trainer(model, cfg, data)
        curves[precision] = [trainer.train_step(s)[0] for s in range(1, steps + 1)]
    gaps = [abs(a - b) for a, b in zip(curves["fp32"], curves["bf16"])]
    tail = max(1, steps // 10)
    return {"steps": steps, "fp32_final": statistics.mean(curves["fp32"][-tail:]),
            "bf16_final": statistics.mean(curves["bf16"][-tail:]), "max_gap": max(gaps),
            "mean_gap_last_10pct": statistics.mean(gaps[-tail:]), "fp32": curves["fp32"], "bf16": curves["bf16"]}


HEADER = ("| shape | precision | ours tok/s | peer tok/s | ratio (median) | ours GFLOP/s (% of matmul peak) "
          "| peer GFLOP/s (% of peak) | matmul peak GFLOP/s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")


def markdown_row(r: dict) -> str:
    return (f"| {r['shape']} | {r['precision']} | {r['ours_tokens_per_s']:,.0f} | {r['peer_tokens_per_s']:,.0f} "
            f"| {r['ratio']:.2f}x | {r['ours_gflops']:.1f} ({r['ours_pct_of_peak']:.0f}%) "
            f"| {r['peer_gflops']:.1f} ({r['peer_pct_of_peak']:.0f}%) | {r['matmul_peak_gflops']:.1f} (n={r['matmul_n']}) |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, 2 repeats of 1 step, a 3-step curve")
    parser.add_argument("--compile", action="store_true", help="compile our model (the warm-up steps absorb the compile time)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="issue", help="model shape (issue: 10.8M, gpt2: 124M)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per precision (median ratio)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--curve-steps", type=int, default=150, help="steps of the fp32-vs-bf16 loss curves (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--separate", action="store_true",
                        help="fp32, each side in its own fresh process (what each user's own run gets)")
    parser.add_argument("--warmup", type=int, default=2, help="--separate: untimed steps in each process")
    parser.add_argument("--worker", choices=["ours", "peer"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    global COMPILE
    COMPILE = args.compile
    shape = "tiny" if args.quick else args.shape
    if args.worker:
        worker(args.worker, shape, args.steps, args.warmup)
        return 0
    repeats, steps, curve = (2, 1, 3) if args.quick else (args.repeats, args.steps, args.curve_steps)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        parser.error(f"--precision takes fp32 and/or bf16, got {args.precision!r}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}")
    n_layers, n_heads, d_model, context, vocab, batch = SHAPES[shape]
    print(f"shape {shape}: {n_layers} layers, {n_heads} heads, d_model {d_model}, context {context}, vocab {vocab}, "
          f"batch {batch}; {repeats} repeats x {steps} steps; ours compiled: {COMPILE}\n")
    if args.separate:
        row = separate(shape, repeats, steps, 1 if args.quick else args.warmup, args.threads)
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=1))
        return 0
    print(HEADER, flush=True)
    rows, info = throughput(shape, precisions, repeats, steps, peak_n=256 if args.quick else 2048)
    result = {"rows": rows, **info}
    print(f"\nmax |logit difference| between the two models: {info['max_logit_diff']:.2e} (same weights)")
    if curve > 0 and "bf16" in precisions:
        c = loss_curves(curve, context=16 if args.quick else 64, batch=4 if args.quick else 32)
        result["curve"] = c
        print(f"loss curves, {curve} steps (demo shape on python-docs): fp32 ends at {c['fp32_final']:.4f}, "
              f"bf16 at {c['bf16_final']:.4f}; largest gap {c['max_gap']:.4f}, mean gap over the last 10% "
              f"{c['mean_gap_last_10pct']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

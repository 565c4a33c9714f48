"""GPU training benchmark: our GPT-2 124M against ``transformers``' ``GPT2LMHeadModel``, plus generation.

    python benchmarks/gpu_train.py                  # a CUDA card: GPT-2 124M, context 1024 (~5 min on an H100)
    python benchmarks/gpu_train.py --tiny           # a tiny model on the CPU, seconds (run by the tests)
    python benchmarks/gpu_train.py --json out.json  # also write every figure

One run, one card, the same settings for both sides:

- the models: GPT-2 124M (12 layers, 12 heads, d_model 768, vocab 50257, context 1024, dropout
  0), holding the *same* weights (ours exported through ``glassformer.interop``; the script
  checks both give the same loss on one batch before timing anything);
- the step: synthetic uniformly random tokens, bf16 autocast, TF32 matmuls (switched on here:
  the trainer does not do it itself yet), ``torch.compile``,
  flash SDPA (ours: the causal fused path; peer: ``attn_implementation="sdpa"``), fused AdamW
  with the same decay groups, gradient clipping to 1.0, batches moved with ``non_blocking``;
- ours is ``glassformer.training.Trainer.train_step``, the exact step ``glassformer train``
  runs (no loss read inside the timed steps, as on non-log steps).

Reported: tokens/s (median of alternating rounds) and MFU = model FLOPs/s ÷ the card's bf16
matmul peak *measured here* (the best of several 8192² bf16 matmuls). Model FLOPs per token are
6·N + 12·L·d·T (N: every weight that multiplies, the tied LM head once, no position table).

Also: the generation benchmark (``benchmarks/generate_throughput.py``'s models, on this
device), and a torchrun check: one-rank DDP and FSDP jobs on this device's backend (NCCL on
CUDA), where a run resumed under FSDP from a DDP checkpoint must continue the same losses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from glassformer.models import GPT, GPTConfig  # noqa: E402
from glassformer.training.config import TrainConfig  # noqa: E402
from glassformer.training.objectives import compute_loss  # noqa: E402
from glassformer.training.optim import build_optimizer  # noqa: E402
from glassformer.training.trainer import Trainer  # noqa: E402

SHAPES = {  # name -> (n_layers, n_heads, d_model, vocab, context, batch)
    "gpt2-124M": (12, 12, 768, 50257, 1024, 16),
    "tiny": (2, 2, 64, 96, 64, 2),
}


class RandomTokens:
    """Uniformly random windows: throughput does not depend on the text."""

    def __init__(self, vocab: int, context: int) -> None:
        self.vocab, self.context = vocab, context

    def batch(self, batch_size: int, generator: torch.Generator) -> dict:
        x = torch.randint(0, self.vocab, (batch_size, self.context + 1), generator=generator)  # (B, T+1)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """FLOP/s of the fastest of ``repeats`` n×n×n matmuls in ``dtype`` on ``device``."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(model: GPT) -> float:
    """6·N + 12·L·d·T, N counting every weight that multiplies (the tied LM head once), no position table."""
    c = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("pos_emb"))
    return 6 * n + 12 * c.n_layers * c.d_model * c.max_len


def build_pair(shape: str, device: torch.device, seed: int = 0):
    """Our GPT and a GPT2LMHeadModel (sdpa) holding the same weights, and |Δ loss| on one batch (fp32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from glassformer.interop import export_hf

    n_layers, n_heads, d_model, vocab, context, _ = SHAPES[shape]
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
    ours, peer = ours.to(device), peer.to(device)
    # the same loss on the same tokens: GPT2LMHeadModel shifts its labels inside, ours takes them shifted
    ids = torch.randint(0, vocab, (2, context), generator=torch.Generator().manual_seed(seed)).to(device)  # (B, T)
    labels = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)  # (B, T)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full fp32 for the check: TF32 rounds each side differently
    try:
        with torch.no_grad():
            out = compute_loss(ours, {"input_ids": ids, "labels": labels})
            theirs = peer(input_ids=ids, labels=ids).loss.item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return ours, peer, abs(out.loss.item() / out.count.item() - theirs)


def make_ours(model: GPT, shape: str, device: torch.device, dtype: str, compile: bool) -> Trainer:
    _, _, _, vocab, context, batch = SHAPES[shape]
    cfg = TrainConfig(batch_size=batch, context=context, max_steps=10**9, warmup_steps=0, lr=1e-4, min_lr=1e-4,
                      schedule="constant", device=device.type, dtype=dtype, compile=compile, log_every=10**9,
                      progress="none")
    return Trainer(model, cfg, RandomTokens(vocab, context))


class Peer:
    """The same step written the way a ``transformers`` user writes it."""

    def __init__(self, model, shape: str, device: torch.device, amp: torch.dtype | None, compile: bool) -> None:
        _, _, _, vocab, context, batch = SHAPES[shape]
        self.device, self.amp = device, amp
        # the same AdamW as ours: decay groups, betas, fused kernel
        self.optimizer = build_optimizer(model, TrainConfig(lr=1e-4, min_lr=1e-4), device)
        self.model = torch.compile(model) if compile else model
        self.data, self.batch_size = RandomTokens(vocab, context), batch
        self.generator = torch.Generator().manual_seed(1)
        model.train()

    def train_step(self, step: int) -> None:
        b = self.data.batch(self.batch_size, self.generator)
        ids = b["input_ids"].to(self.device, non_blocking=True)
        amp = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with amp:
            loss = self.model(input_ids=ids, labels=ids).loss  # GPT2LMHeadModel shifts the labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def seconds_per_step(runner, steps: int, start: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        runner.train_step(start + i)
    sync(device)
    return (time.perf_counter() - t) / steps


def train_rows(shape: str, device: torch.device, args) -> dict:
    """Tokens/s and MFU of both sides, alternating rounds; the median round counts."""
    ours_model, peer_model, loss_gap = build_pair(shape, device)
    if loss_gap > 1e-3:
        raise RuntimeError(f"the two models disagree on the same batch (|Δ loss| = {loss_gap:.2e}); not the same function")
    amp = torch.bfloat16 if args.dtype == "bfloat16" else None
    ours = make_ours(ours_model, shape, device, args.dtype, args.compile)
    peer = Peer(peer_model, shape, device, amp, args.compile)
    print(f"warm-up: {args.warmup} steps of each side (the first compiles)", flush=True)
    t0 = time.perf_counter()
    for i in range(args.warmup):  # the first step compiles
        ours.train_step(i + 1), peer.train_step(i + 1)
    sync(device)
    warmup_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for r in range(args.rounds):
        order = (("ours", ours), ("peer", peer)) if r % 2 == 0 else (("peer", peer), ("ours", ours))
        for name, runner in order:
            times[name].append(seconds_per_step(runner, args.steps, args.warmup + 1 + r * args.steps, device))
    peak = matmul_peak(device, amp or torch.float32, args.matmul_n)
    _, _, _, _, context, batch = SHAPES[shape]
    tokens, fpt = batch * context, flops_per_token(ours_model)
    out = {"shape": shape, "tokens_per_step": tokens, "flops_per_token": fpt, "matmul_peak_flops": peak,
           "matmul_n": args.matmul_n, "loss_gap": loss_gap, "warmup_s": warmup_s, "rounds": args.rounds,
           "steps": args.steps}
    for name in ("ours", "peer"):
        sec = statistics.median(times[name])
        out[name] = {"s_per_step": sec, "tokens_per_s": tokens / sec, "mfu": fpt * tokens / sec / peak,
                     "rounds_s": times[name]}
    out["ratio"] = out["ours"]["tokens_per_s"] / out["peer"]["tokens_per_s"]
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del ours, peer
    return out


def _greedy(model, ids: torch.Tensor, new: int, peer: bool) -> torch.Tensor:
    """``new`` greedy tokens after ``ids`` (B, T), KV cache on: (B, new)."""
    from glassformer.generation import generate

    with torch.no_grad():
        if peer:
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                                 num_beams=1)
        else:
            out = generate(model, ids, max_new_tokens=new, eos_token_id=[])
    return out[:, ids.shape[1]:]


def generation_rows(device: torch.device, tiny: bool) -> list[dict] | str:
    """``generate_throughput.py``'s pair of models (same weights), greedy with a KV cache, on ``device``.

    Each side's fastest of the repeats counts; new tokens/s = batch × new tokens / seconds.
    """
    try:
        import generate_throughput as gen
    except ImportError as e:
        return f"skipped: benchmarks/generate_throughput.py is not importable ({e})"
    shape, new, batches, repeats = ("tiny", 8, [1, 2], 1) if tiny else ("gpt2-124M", 128, [1, 16], 2)
    peer, ours = gen.build_pair(shape)
    vocab = gen.SHAPES[shape][3]
    dtype = torch.float32 if tiny else torch.bfloat16
    peer, ours = peer.to(device, dtype), ours.to(device, dtype)
    rows = []
    for b in batches:
        ids = torch.randint(0, vocab, (b, 16), generator=torch.Generator().manual_seed(b)).to(device)  # (B, 16)
        _greedy(peer, ids, 4, True), _greedy(ours, ids, 4, False)  # warm-up: kernels, allocator
        best, tokens = {"peer": math.inf, "ours": math.inf}, {}
        for _ in range(repeats):
            for name, model in (("peer", peer), ("ours", ours)):
                sync(device)
                t = time.perf_counter()
                tokens[name] = _greedy(model, ids, new, name == "peer")
                sync(device)
                best[name] = min(best[name], time.perf_counter() - t)
        rows.append({"model": shape, "dtype": str(dtype).removeprefix("torch."), "batch": b, "new_tokens": new,
                     "peer_tokens_per_s": b * new / best["peer"], "ours_tokens_per_s": b * new / best["ours"],
                     "ratio": best["peer"] / best["ours"], "same_tokens": bool(torch.equal(tokens["peer"], tokens["ours"]))})
    return rows


# ------------------------------------------------------------------------------ torchrun check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_rank_job() -> None:
    """The environment torchrun gives a one-process job; the process group is left afterwards."""
    import torch.distributed as dist

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def torchrun_check(device: torch.device) -> dict:
    """DDP for 4 steps, and DDP for 2 resumed under FSDP to 4: the losses must agree (this backend)."""
    from glassformer.training.distributed import DistributedContext

    data = RandomTokens(96, 32)
    tol = 1e-5 if device.type == "cpu" else 1e-3  # GPU kernels may reduce in another order

    def run(out: Path, strategy: str, max_steps: int, resume: Path | None = None) -> list[float]:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=96, d_model=64, n_heads=2, n_layers=2, d_ff=128, max_len=32, dropout=0.0))
        cfg = TrainConfig(batch_size=2, grad_accum=2, context=32, max_steps=max_steps, lr_decay_steps=4, warmup_steps=1,
                          eval_every=2, eval_batches=1, log_every=1, progress="none", device=device.type,
                          dtype="float32", parallel=strategy, sample_tokens=0)
        trainer = Trainer(model, cfg, data, data, run_dir=out, process=DistributedContext(device, strategy))
        if resume is not None:
            out.mkdir(parents=True)
            trainer.resume(resume)
        trainer.fit()
        return [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    from glassformer.training.checkpoint import latest_checkpoint

    with tempfile.TemporaryDirectory() as tmp, one_rank_job():
        root = Path(tmp)
        straight = run(root / "ddp", "ddp", 4)
        run(root / "half", "ddp", 2)
        resumed = run(root / "fsdp", "fsdp", 4, resume=latest_checkpoint(root / "half"))
    gap = max(abs(a - b) for a, b in zip(straight[2:], resumed))
    return {"backend": "nccl" if device.type == "cuda" else "gloo", "ddp_losses": straight, "fsdp_resumed": resumed,
            "max_gap": gap, "ok": len(resumed) == 2 and gap < tol}


# ------------------------------------------------------------------------------------- main


def markdown(result: dict) -> str:
    t = result["train"]
    peak = f"{t['matmul_peak_flops'] / 1e12:.4g} TFLOP/s, {result['dtype']} {t['matmul_n']}² matmul"
    lines = [f"| side | tokens/s | MFU (of the measured peak, {peak}) | s/step |",
             "| --- | ---: | ---: | ---: |"]
    for name in ("ours", "peer"):
        r = t[name]
        lines.append(f"| {name} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | {r['s_per_step']:.4f} |")
    lines.append(f"\nratio ours / peer (tokens/s): **{t['ratio']:.3f}**; same weights, |Δ loss| = {t['loss_gap']:.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, few steps (the test)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 20; tiny 2)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first, compiling (default 5; tiny 1)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 16)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 on CUDA")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "generate", "torchrun"])
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    shape = "gpt2-124M" if cuda else "tiny"
    if not cuda and not args.tiny:
        parser.error("no CUDA device: run with --tiny (a CPU smoke run), or on a machine with a GPU")
    if args.batch:
        SHAPES[shape] = (*SHAPES[shape][:5], args.batch)
    args.steps = args.steps or (20 if cuda else 2)
    args.rounds = args.rounds or (3 if cuda else 2)
    args.warmup = args.warmup or (5 if cuda else 1)
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.compile = cuda if args.compile is None else args.compile
    args.matmul_n = 8192 if cuda else 256
    if cuda:  # TF32 for any fp32 matmul left outside autocast, on both sides
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers

    name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    result: dict = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
                    "dtype": args.dtype, "compile": args.compile}
    print(f"{name}: torch {torch.__version__}, transformers {transformers.__version__}; {shape}, "
          f"batch {SHAPES[shape][5]} x context {SHAPES[shape][4]}, {args.dtype}, compile={args.compile}", flush=True)
    if "train" not in args.skip:
        result["train"] = train_rows(shape, device, args)
        print(markdown(result), flush=True)
    if "generate" not in args.skip:
        result["generate"] = generation_rows(device, tiny=not cuda)
        for row in result["generate"] if isinstance(result["generate"], list) else [result["generate"]]:
            print("generate:", row, flush=True)
    if "torchrun" not in args.skip:
        result["torchrun"] = torchrun_check(device)
        print("torchrun check (one rank, DDP then FSDP resume):", result["torchrun"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    ok = result.get("torchrun", {}).get("ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

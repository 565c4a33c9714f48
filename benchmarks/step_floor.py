"""How fast could a training step be? Our step's matrix products and attention kernels, replayed alone.

    python benchmarks/step_floor.py                      # the issue's 10.8M shape (~3 min on 2 cores)
    python benchmarks/step_floor.py --shape gpt2 --steps 1   # GPT-2-124M (~6 min)
    python benchmarks/step_floor.py --quick              # a tiny model, seconds (run by the tests)

Both our step and the peer's spend most of their time in the same kernels: MKL's sgemm for
every linear layer, forward and backward, and ATen's fused CPU attention. Their number and
their shapes are fixed by the model, not by the library. This script records, with a
``TorchDispatchMode``, every matrix product (``mm``, ``addmm``, ``bmm``, in place or into ``out=`` too) and every fused
attention call (forward and backward) in one of our training steps (``Trainer.train_step``,
the step ``glassformer train`` runs), then *replays* them alone: the same ops on tensors of the
same sizes and strides, and nothing else. That replay is a floor for any implementation of
this model that uses these kernels: a step with zero cost for everything else (LayerNorm,
GELU, residual adds, the loss, the optimiser, autograd, Python).

It then times three things, interleaved, ``--repeats`` rounds in rotating order (median of each):
our step, the peer's step (``train_throughput.py``'s ``Peer``: ``GPT2LMHeadModel``, the same
weights) and the replay. It reports:

- ``peer / ours``: the throughput ratio the issue asks about;
- ``peer / floor``: the highest ratio any implementation on these kernels could reach against
  this peer, in this process, on this machine;
- ``ours / floor``: what our step spends beyond the kernels.

With ``--compile`` our step runs ``torch.compile``'d (the warm-up absorbs the compile) and the eager
step, with the same weights, is timed in the same rounds as a fourth runner: ``eager / compiled``
says what compiling buys at this shape.

The replay's operands are random (normal) except the attention backward's, which are the
recorded tensors (its saved log-sum-exp must belong to its inputs). Kernel time does not depend
on the values, as long as there are no denormals, and normal values have none. Each replayed
product has operands of its own, where the real step reuses a weight in the forward and the
backward products; at these shapes a product does over 100 FLOPs per byte it reads, so where its
operands sit in the caches hardly matters.

Speed is a ratio measured in one process on a quiet machine; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput.py: the shapes and the two steps
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `glassformer` runs (see glassformer/__init__.py)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import train_throughput  # noqa: E402
from train_throughput import SHAPES, Peer, RandomTokens, build_pair, make_ours, matmul_peak, time_steps  # noqa: E402, F401

aten = torch.ops.aten
PRODUCTS = {aten.mm.default, aten.mm.out, aten.addmm.default, aten.addmm.out, aten.addmm_.default, aten.bmm.default,
            aten.bmm.out}
ADD_PRODUCTS = {aten.addmm.default, aten.addmm.out, aten.addmm_.default}  # (bias or self, a, b)
ATTENTION = {aten._scaled_dot_product_flash_attention_for_cpu.default,
             aten._scaled_dot_product_flash_attention_for_cpu_backward.default}


def product_flops(func, args) -> int:
    """2·m·k·n for one (batched) product; the bias of ``addmm`` is not counted."""
    if func in ADD_PRODUCTS:
        args = args[1:]
    a, b = args[0], args[1]
    batch = a.shape[0] if a.dim() == 3 else 1
    m, k = a.shape[-2:]
    return 2 * batch * m * k * b.shape[-1]


class Recorder(TorchDispatchMode):
    """Keeps (op, arguments) for every product and attention kernel run while it is active.

    Tensor arguments of products are kept as (size, stride, dtype): the replay makes fresh ones.
    The attention kernels' tensors are cloned, because the backward's saved statistics must match
    its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            def meta(a):
                return ("meta", a.shape, a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a
            self.calls.append((func, [meta(a) for a in args], {k: meta(v) for k, v in kwargs.items()}))
        elif func in ATTENTION:
            self.calls.append((func, [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args],
                               {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}))
        return func(*args, **kwargs)


class Replay:
    """The recorded kernels, on operands made once; ``train_step`` runs them all (the same interface
    as our trainer and the peer, so ``time_steps`` times all three alike)."""

    def __init__(self, calls: list[tuple]) -> None:
        generator = torch.Generator().manual_seed(0)

        def operand(a):
            if isinstance(a, tuple) and a and a[0] == "meta":
                _, shape, stride, dtype = a
                t = torch.empty_strided(shape, stride, dtype=dtype)
                return t.normal_(generator=generator)
            return a

        self.calls = [(func, [operand(a) for a in args], {k: operand(v) for k, v in kwargs.items()})
                      for func, args, kwargs in calls]
        self.flops = sum(product_flops(func, args) for func, args, _ in self.calls if func in PRODUCTS)
        self.products = sum(func in PRODUCTS for func, _, _ in self.calls)
        self.attention = sum(func in ATTENTION for func, _, _ in self.calls)
        self.spent = {"products": [], "attention": []}  # seconds per replayed step, by kind of kernel

    def train_step(self, step: int) -> None:
        spent = {"products": 0.0, "attention": 0.0}
        for func, args, kwargs in self.calls:
            t = time.perf_counter()
            func(*args, **kwargs)
            spent["products" if func in PRODUCTS else "attention"] += time.perf_counter() - t
        for kind, seconds in spent.items():
            self.spent[kind].append(seconds)


def record(trainer, step: int) -> list[tuple]:
    """The kernels of one of ``trainer``'s steps (the step itself runs, as usual)."""
    recorder = Recorder()
    with recorder:
        trainer.train_step(step)
    return recorder.calls


def linear_flops(model, tokens: int) -> int:
    """What the step's linear layers must multiply: forward, input gradient and weight gradient,
    2·in·out FLOPs a token each, for every ``nn.Linear`` (the tied LM head included)."""
    return 6 * tokens * sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def measure(shape: str, repeats: int, steps: int, warmup: int, peak_n: int = 2048, compiled: bool = False) -> dict:
    ours_model, peer_model, _ = build_pair(shape)
    eager, peer = make_ours(ours_model, shape, "fp32"), Peer(peer_model, shape, "fp32")
    ours = eager
    if compiled:  # timed compiled; the kernels are recorded from an eager copy (same weights, same products)
        train_throughput.COMPILE = True
        copy = type(ours_model)(ours_model.config)
        copy.load_state_dict(ours_model.state_dict())
        ours = make_ours(copy, shape, "fp32")
        train_throughput.COMPILE = False
        eager.train_step(1)
    for i in range(warmup):
        ours.train_step(i + 1), peer.train_step(i + 1)
    replay = Replay(record(eager, warmup + 1))
    replay.train_step(0)  # warm-up of the replay
    tokens = SHAPES[shape][3] * SHAPES[shape][5]
    runners = [("ours", ours), ("peer", peer), ("floor", replay)] + ([("eager", eager)] if compiled else [])
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    peaks = []  # GFLOP/s of a square product, once a round (the best of 3 timings each)
    for r in range(repeats):
        peaks.append(matmul_peak(torch.float32, peak_n)[0])
        k = r % len(runners)
        for name, runner in runners[k:] + runners[:k]:  # rotate who goes first
            times[name].append(time_steps(runner, steps, warmup + 2 + r * steps))
    med = {name: statistics.median(t) for name, t in times.items()}
    kernels = {kind: statistics.median(t[1:]) for kind, t in replay.spent.items()}  # without the warm-up replay
    return {
        "shape": shape, "compiled": compiled, "repeats": repeats, "steps": steps, "tokens_per_step": tokens,
        "products": replay.products, "attention_calls": replay.attention,
        "product_flops": replay.flops, "linear_flops": linear_flops(ours.model, tokens),
        "square_gflops": statistics.median(peaks), "square_gflops_best": max(peaks), "s_per_step": med, "times": times,
        "peer_over_ours": statistics.median(p / o for p, o in zip(times["peer"], times["ours"])),
        "peer_over_floor": statistics.median(p / f for p, f in zip(times["peer"], times["floor"])),
        "ours_over_floor": statistics.median(o / f for o, f in zip(times["ours"], times["floor"])),
        "eager_over_compiled": (statistics.median(e / o for e, o in zip(times["eager"], times["ours"]))
                                if compiled else None),
        "floor_s_per_step": kernels, "floor_product_gflops": replay.flops / 1e9 / kernels["products"],
    }


def report(r: dict) -> str:
    s = r["s_per_step"]
    return "\n".join([
        f"shape {r['shape']}: {r['products']} products ({r['product_flops'] / 1e9:.1f} GFLOP; the linear layers need "
        f"{r['linear_flops'] / 1e9:.1f}) and {r['attention_calls']} attention kernels per step",
        f"a 2048^2 product: {r['square_gflops']:.0f} GFLOP/s (median of the rounds; best {r['square_gflops_best']:.0f})",
        "",
        "| | ms/step (median) |",
        "| --- | ---: |",
        f"| ours (`Trainer.train_step`{', compiled' if r['compiled'] else ''}) | {1e3 * s['ours']:,.0f} |",
        f"| peer (`GPT2LMHeadModel`) | {1e3 * s['peer']:,.0f} |",
        *([f"| ours, eager (the same weights) | {1e3 * s['eager']:,.0f} |"] if r["compiled"] else []),
        f"| floor: our step's products and attention kernels alone | {1e3 * s['floor']:,.0f} |",
        f"| of which products | {1e3 * r['floor_s_per_step']['products']:,.0f} |",
        f"| of which attention | {1e3 * r['floor_s_per_step']['attention']:,.0f} |",
        "",
        f"peer / ours {r['peer_over_ours']:.2f}x (throughput ratio); peer / floor {r['peer_over_floor']:.2f}x "
        f"(the best ratio on these kernels); ours / floor {r['ours_over_floor']:.2f}x; the replayed products "
        f"run at {r['floor_product_gflops']:.0f} GFLOP/s ({r['floor_product_gflops'] / r['square_gflops']:.0%} of the "
        f"square product's median rate)"
        + (f"; eager / compiled {r['eager_over_compiled']:.2f}x" if r["compiled"] else ""),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny shape, 2 repeats of 1 step (seconds)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="issue", help="issue: 10.8M, gpt2: 124M")
    parser.add_argument("--repeats", type=int, default=6,
                        help="timed rounds (median); a multiple of 3 (4 with --compile) rotates evenly")
    parser.add_argument("--steps", type=int, default=3, help="steps per side per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    parser.add_argument("--compile", action="store_true",
                        help="time our step torch.compile'd (as long `glassformer train` runs are); the warm-up absorbs the compile")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    shape, repeats, steps, warmup = ("tiny", 2, 1, 1) if args.quick else (args.shape, args.repeats, args.steps, args.warmup)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}", flush=True)
    result = measure(shape, repeats, steps, warmup, peak_n=256 if args.quick else 2048, compiled=args.compile)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

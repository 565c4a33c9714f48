"""What LoRA saves where it matters: a training step of a 135M-parameter Llama-shape model, full or LoRA.

    python benchmarks/lora_memory.py                 # SmolLM2-135M's shape, B=4, T=128, 4 steps (~2 min)
    python benchmarks/lora_memory.py --quick         # llama-tiny, seconds (run by the tests)

``benchmarks/fine_tune.py`` measures LoRA on MiniLM (22.7M parameters), where the optimiser's
state is small beside the activations and the process's own footprint. Full fine-tuning holds,
per parameter, the weight, its gradient and AdamW's two moments (16 bytes in fp32); LoRA holds the
frozen weight (4 bytes) and the three for a few adapter numbers only. This script builds the
``smollm2-135m`` preset (random weights: memory and time do not depend on the values), wraps it
with :func:`glassformer.training.lora.apply_lora` or not, and trains ``--steps`` steps with fused
AdamW on random tokens, each mode in its own process, and reports the peak resident memory
(``ru_maxrss``) and the median step time. Nothing here is a test; figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def worker(mode: str, preset: str, batch: int, context: int, steps: int, rank: int) -> dict:
    import torch

    from glassformer.models import GPT, GPTConfig
    from glassformer.training.lora import apply_lora

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, max_len=context))
    total = sum(p.numel() for p in model.parameters())
    trainable = apply_lora(model, rank) if mode == "lora" else total
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (batch, context + 1), generator=g)  # (B, T+1)
        start = time.perf_counter()
        loss = model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"mode": mode, "preset": preset, "params": total, "trainable": trainable,
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "step_s": round(statistics.median(times[1:] or times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="llama-tiny, 2 steps")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    preset, batch, context, steps = ("llama-tiny", 2, 16, 2) if args.quick else ("smollm2-135m", 4, 128, args.steps)
    if args.worker:
        print(json.dumps(worker(args.worker, preset, batch, context, steps, args.rank)))
        return
    rows = []
    for mode in ("full", "lora"):  # each in a fresh process: a peak is per process
        cmd = [sys.executable, __file__, "--worker", mode, "--rank", str(args.rank), "--steps", str(steps)]
        out = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"the {mode} worker failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{preset}, B={batch}, T={context}, LoRA rank {args.rank} on the attention projections, {steps} steps")
    print(f"{'mode':<5} {'params':>12} {'trainable':>12} {'peak MB':>9} {'s/step':>7}")
    for r in rows:
        print(f"{r['mode']:<5} {r['params']:>12,} {r['trainable']:>12,} {r['peak_mb']:>9.0f} {r['step_s']:>7.3f}")
    full, lora = rows
    print(f"lora / full: peak memory {lora['peak_mb'] / full['peak_mb']:.2f}x, step time {lora['step_s'] / full['step_s']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Where does bf16 autocast pay on this CPU? A training step in fp32 and under bf16 autocast, by width.

    python benchmarks/cpu_bf16.py                 # GPT shapes from 32 to 768 wide (~3 min on 2 cores)
    python benchmarks/cpu_bf16.py --quick         # two tiny shapes, seconds (run by the tests)

``--dtype auto`` used to pick bf16 autocast on every CPU with native bf16 matrix units (AMX), for
any model. Autocast adds a cast of every weight and activation that enters a matrix product, and
a tiny model's products are too small for AMX to win that back. This script times, for GPT
shapes of growing width, the step ``glassformer train`` runs (:func:`glassformer.demos.common.
step_timer`: forward, backward, clip, fused AdamW) with no autocast and under bf16 autocast,
interleaved, ``--repeats`` rounds of ``--steps`` steps each (median), in one process, and prints
``bf16 / fp32`` per shape. The width where the ratio drops below 1 is where ``auto`` should start
choosing bf16 (:data:`glassformer.training.runtime.CPU_BF16_MIN_WIDTH`).

On a CPU without native bf16 the ratio is far above 1 everywhere (bf16 is emulated there) and
``auto`` never picks it. Speed is a ratio measured in one process on a quiet machine; nothing here
is a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from glassformer.demos.common import step_timer  # noqa: E402
from glassformer.models import GPT, GPTConfig  # noqa: E402
from glassformer.training.runtime import autocast, cpu_has_native_bf16  # noqa: E402

# (d_model, n_layers, n_heads, context, batch): the demos' shapes and a few wider ones
SHAPES = [(32, 2, 2, 32, 128), (64, 2, 4, 32, 128), (128, 4, 4, 64, 12), (128, 4, 4, 128, 32),
          (256, 4, 4, 128, 16), (384, 6, 6, 128, 8), (512, 6, 8, 128, 8), (768, 6, 12, 128, 4)]
QUICK = [(32, 2, 2, 32, 16), (64, 2, 4, 32, 8)]
VOCAB = 2048


def time_shape(d_model: int, n_layers: int, n_heads: int, context: int, batch: int, steps: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                          d_ff=4 * d_model, max_len=context, dropout=0.0))
    g = torch.Generator().manual_seed(0)

    def batch_of() -> dict:
        ids = torch.randint(0, VOCAB, (batch, context + 1), generator=g)  # (B, T+1)
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    step = step_timer(model, batch_of)
    cpu = torch.device("cpu")

    def run(dtype: torch.dtype | None) -> float:
        with autocast(cpu, dtype):
            return sum(step() for _ in range(steps)) / steps

    run(None), run(torch.bfloat16)  # warm-up: allocations, oneDNN's kernel choice
    fp32, bf16 = [], []
    for r in range(repeats):  # interleaved, alternating which goes first
        for dtype, into in ([(None, fp32), (torch.bfloat16, bf16)] if r % 2 == 0 else
                            [(torch.bfloat16, bf16), (None, fp32)]):
            into.append(run(dtype))
    f, b = statistics.median(fp32), statistics.median(bf16)
    return {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads, "context": context, "batch": batch,
            "params": sum(p.numel() for p in model.parameters()), "fp32_ms": round(f * 1e3, 2),
            "bf16_ms": round(b * 1e3, 2), "bf16_over_fp32": round(b / f, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two tiny shapes, 2 steps, 2 rounds")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="rounds per side")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    shapes, steps, repeats = (QUICK, 2, 2) if args.quick else (SHAPES, args.steps, args.repeats)
    print(f"{platform.processor() or platform.machine()}; torch {torch.__version__}; {torch.get_num_threads()} "
          f"threads; native bf16 (AMX): {cpu_has_native_bf16()}")
    print(f"{'d_model':>7} {'layers':>6} {'T':>4} {'B':>4} {'params':>10} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>9}")
    rows = []
    for shape in shapes:
        row = time_shape(*shape, steps=steps, repeats=repeats)
        rows.append(row)
        print(f"{row['d_model']:>7} {row['n_layers']:>6} {row['context']:>4} {row['batch']:>4} {row['params']:>10,} "
              f"{row['fp32_ms']:>8.1f} {row['bf16_ms']:>8.1f} {row['bf16_over_fp32']:>9.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(),
                                         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

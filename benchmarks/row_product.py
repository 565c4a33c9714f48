"""How fast one row times a matrix reads the matrix: the product a batch-1 decoding step is made of.

    python benchmarks/row_product.py              # GPT-2-124M's matrices, ~1 min on 2 cores
    python benchmarks/row_product.py --quick      # small matrices, seconds (run by the tests)

For each product, enough distinct copies of the matrix to fill ``--mbytes`` (far beyond the
caches) are multiplied by one row in turn, so every matrix comes from memory, as in decoding.
Reported: GB/s of matrix read (median of ``--repeats``), for

- ``F.linear`` with W in the usual (out, in) rows, and with W column-major ((in, out) storage);
- :func:`glassformer.generation.layout.split_inner_linear`: column-major W, the inner dimension cut into one
  slice per torch thread (what :class:`glassformer.linear.Linear` does for one row);
- summing a buffer of the same size: the read bandwidth the products are measured against.

Rows: GPT-2-124M's four layer matrices together (W_QKV 2304 × 768, W_O 768 × 768, W_1 3072 × 768,
W_2 768 × 3072), and its LM head (50257 × 768). Speed is a ratio on one machine; nothing here is a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from glassformer.generation.layout import split_inner_linear  # noqa: E402

SETS = {  # name -> the (out, in) shapes multiplied in turn
    "GPT-2 layer matrices": [(2304, 768), (768, 768), (3072, 768), (768, 3072)],
    "GPT-2 LM head": [(50257, 768)],
    "tiny": [(96, 32), (32, 96)],
}


def gbps(run: Callable[[], object], nbytes: int, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times) / 1e9


def measure(shapes: list[tuple[int, int]], mbytes: float, repeats: int) -> dict[str, float]:
    per_set = sum(o * i * 4 for o, i in shapes)
    copies = max(2, int(mbytes * 1e6 // per_set))
    rows = [[torch.randn(o, i) for o, i in shapes] for _ in range(copies)]  # (out, in) rows
    cols = [[torch.randn(i, o).t() for o, i in shapes] for _ in range(copies)]  # (in, out) storage
    x = {i: torch.randn(1, i) for _, i in shapes}
    slices = torch.get_num_threads()
    nbytes = per_set * copies
    buffer = torch.ones(nbytes // 4)
    with torch.no_grad():
        return {
            "F.linear, (out, in) rows": gbps(lambda: [F.linear(x[w.shape[1]], w) for s in rows for w in s], nbytes, repeats),
            "F.linear, column-major": gbps(lambda: [F.linear(x[w.shape[1]], w) for s in cols for w in s], nbytes, repeats),
            f"sliced, {slices} slices, column-major": gbps(
                lambda: [split_inner_linear(x[w.shape[1]], w, None, slices) for s in cols for w in s], nbytes, repeats),
            "sum of a buffer as big": gbps(buffer.sum, nbytes, repeats),
        }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small matrices, few repeats (seconds)")
    parser.add_argument("--mbytes", type=float, default=400, help="matrix bytes read per timing, in MB")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["tiny"] if args.quick else ["GPT-2 layer matrices", "GPT-2 LM head"]
    mbytes, repeats = (2, 3) if args.quick else (args.mbytes, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GB/s of matrix read, median of {repeats}")
    print("| matrices | product | GB/s |\n| --- | --- | ---: |")
    results = {}
    for name in names:
        results[name] = measure(SETS[name], mbytes, repeats)
        for product, value in results[name].items():
            print(f"| {name} | {product} | {value:.1f} |", flush=True)
    return results


if __name__ == "__main__":
    main()

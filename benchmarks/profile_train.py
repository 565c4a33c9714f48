"""Where a training step's time goes: ``torch.profiler`` on our GPT (and the peer) training step.

    python benchmarks/profile_train.py                   # 10.8M and GPT-2-124M shapes (~3-5 min on 2 cores)
    python benchmarks/profile_train.py --shapes 10.8M --sides ours --json runs/profile.json
    python benchmarks/profile_train.py --quick           # a tiny model, seconds (run by the tests)

The step is the one ``benchmarks/memory.py`` measures (fp32, CPU, dropout 0, random tokens):
forward with labels, backward, gradient clipping to 1.0, ``torch.optim.AdamW(foreach=True)``,
``zero_grad(set_to_none=True)``; the same code for ours (``glassformer.models.GPT``) and the peer
(``transformers``' ``GPT2LMHeadModel``, SDPA attention). After ``--warmup`` steps, ``--steps``
steps are timed without the profiler (wall ms/step) and ``--steps`` more under it (CPU only;
the profiler adds some overhead per op).

For each (shape, side) it prints:

- the time by category, summed over the ops' *self* CPU time (time in an op not spent in
  the ops it calls, so nothing is counted twice): matmul/linear, attention (sdpa),
  layernorm, gelu/activation, embedding, cross-entropy, optimizer (everything in the
  clipping, ``step`` and ``zero_grad``), elementwise/copies (other ``aten::`` ops), and
  overhead (autograd engine nodes, Python between ops). A generic op (a copy, a transpose, a
  ``mul``) counts for the nearest enclosing op with a category (see :func:`attribute`);
- the same self time summed by phase (forward / backward / optimizer);
- the top ``--top`` (op, category) pairs by self CPU time.

Shapes: see ``benchmarks/memory.py`` (``SHAPES``): "10.8M" = 6 layers, 6 heads, d_model 384,
vocab 65, B=8, T=256; "gpt2-124M" = 12 layers, 12 heads, 768, vocab 50257, B=4, T=256.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # memory.py: the shapes and the two builders
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `glassformer` runs (see glassformer/__init__.py)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from memory import SHAPES, build_ours, build_peer  # noqa: E402

SIDES = ("ours", "peer")
PHASES = ("forward", "backward", "optimizer")

# (category, substrings of the op name, lower case, without underscores); the first match wins,
# so order matters. Autograd nodes ("autograd::engine::evaluate_function: AddmmBackward0") match too.
CATEGORIES = [
    ("cross-entropy", ("logsoftmax", "nllloss", "crossentropy")),
    ("attention (sdpa)", ("scaleddotproduct", "flashattention", "efficientattention", "softmax")),
    ("matmul/linear", ("addmm", "aten::mm", "mmbackward", "bmm", "matmul", "linear", "mkldnn", "aten::mv",
                       "aten::dot")),
    ("layernorm", ("layernorm",)),
    ("gelu/activation", ("gelu", "tanh", "relu", "silu")),
    ("embedding", ("embedding", "indexselect", "indexadd")),
]
OPTIMIZER = "optimizer (clip + AdamW + zero_grad)"
ELEMENTWISE = "elementwise/copies"
OVERHEAD = "overhead (autograd, python)"
CATEGORY_NAMES = [name for name, _ in CATEGORIES] + [OPTIMIZER, ELEMENTWISE, OVERHEAD]


def own_category(name: str) -> str | None:
    """The category an op's name alone puts it in; None for generic ops (elementwise, copies, views)."""
    low = name.lower().replace("_", "")
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return None


def attribute(events) -> list[tuple[str, str, str, float]]:
    """(op, category, phase, self µs) for every profiled op.

    A generic op (``aten::mul_``, ``aten::transpose``, ...) counts for the nearest enclosing op
    with a category: the copies inside ``aten::linear`` are the linear layer's time, the
    per-tensor ops inside a ``_foreach_`` call are the optimizer's. Everything inside the
    optimizer phase is the optimizer's. The rest is elementwise/copies (``aten::`` ops) or
    overhead (autograd engine nodes, Python between ops: the phase markers' own time).
    """
    rows = []

    def visit(event, inherited: str | None, phase: str | None) -> None:
        name = event.name
        if name.startswith("## "):
            phase = name[3:]
        cat = OPTIMIZER if phase == "optimizer" else own_category(name) or inherited
        if cat is None:
            cat = ELEMENTWISE if name.startswith("aten::") else OVERHEAD
        rows.append((name, cat, phase or "other", event.self_cpu_time_total))
        for child in event.cpu_children:
            visit(child, cat if cat not in (ELEMENTWISE, OVERHEAD) else None, phase)

    for event in events:
        if event.cpu_parent is None:
            visit(event, None, None)
    return rows


class Step:
    """One training step of either model, with the phases marked for the profiler."""

    def __init__(self, model, side: str, shape: dict, n_batches: int) -> None:
        self.model, self.side = model, side
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True)
        generator = torch.Generator().manual_seed(0)
        # made beforehand, so that drawing random tokens is not part of the profile
        self.batches = [torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), generator=generator)
                        for _ in range(n_batches)]
        self.i = 0
        model.train()

    def __call__(self) -> None:
        x = self.batches[self.i % len(self.batches)]
        self.i += 1
        with record_function("## forward"):
            if self.side == "ours":  # our labels are already shifted: labels[:, t] follows input_ids[:, :t+1]
                loss = self.model(x[:, :-1], labels=x[:, 1:]).loss
            else:  # GPT2LMHeadModel shifts the labels inside
                loss = self.model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
        with record_function("## backward"):
            loss.backward()
        with record_function("## optimizer"):
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def profile_one(shape_name: str, side: str, warmup: int, steps: int, top: int) -> dict:
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    model = build_ours(shape) if side == "ours" else build_peer(shape)
    step = Step(model, side, shape, warmup + 2 * steps)
    for _ in range(warmup):  # allocator, oneDNN kernels, optimiser state
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        profiled_ms = (time.perf_counter() - t0) / steps * 1e3
    rows = attribute(prof.events())
    per_step = 1e3 * steps  # µs in total -> ms per step
    total = sum(r[3] for r in rows) / per_step
    by_cat = dict.fromkeys(CATEGORY_NAMES, 0.0)
    ops: dict[tuple[str, str], dict] = {}
    for name, cat, _, us in rows:
        by_cat[cat] += us / per_step
        o = ops.setdefault((name, cat), {"op": name, "category": cat, "calls_per_step": 0.0, "self_ms_per_step": 0.0})
        o["calls_per_step"] += 1 / steps
        o["self_ms_per_step"] += us / per_step
    top_ops = sorted(ops.values(), key=lambda o: -o["self_ms_per_step"])[:top]
    for o in top_ops:
        o["pct"] = 100 * o["self_ms_per_step"] / total if total else 0.0
    phases = {p: sum(r[3] for r in rows if r[2] == p) / per_step for p in PHASES}
    return {"shape": shape_name, "side": side, "tokens_per_step": shape["batch"] * shape["seq"],
            "params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "wall_ms_per_step": wall_ms, "profiled_ms_per_step": profiled_ms, "self_total_ms_per_step": total,
            "phases_ms_per_step": phases, "categories_ms_per_step": by_cat,
            "categories_pct": {c: 100 * v / total if total else 0.0 for c, v in by_cat.items()},
            "top_ops": top_ops, "warmup": warmup, "steps": steps}


def markdown(results: list[dict]) -> str:
    """The per-category table (one column per run) and, for each run, its phases and top ops."""
    heads = [f"{r['shape']} {r['side']}" for r in results]
    lines = ["| category | " + " | ".join(f"{h} ms/step (%)" for h in heads) + " |",
             "| --- | " + " | ".join("---:" for _ in heads) + " |"]
    for cat in CATEGORY_NAMES:
        cells = [f"{r['categories_ms_per_step'][cat]:.1f} ({r['categories_pct'][cat]:.0f}%)" for r in results]
        lines.append(f"| {cat} | " + " | ".join(cells) + " |")
    lines.append("| **sum of self CPU time** | " + " | ".join(f"**{r['self_total_ms_per_step']:.1f}**"
                                                             for r in results) + " |")
    for phase in PHASES:
        lines.append(f"| phase: {phase} | "
                     + " | ".join(f"{r['phases_ms_per_step'][phase]:.1f}" for r in results) + " |")
    lines.append("| wall, profiled | " + " | ".join(f"{r['profiled_ms_per_step']:.1f}" for r in results) + " |")
    lines.append("| wall, not profiled | " + " | ".join(f"{r['wall_ms_per_step']:.1f}" for r in results) + " |")
    for r in results:
        lines += ["", f"Top {len(r['top_ops'])} ops by self CPU time: {r['shape']}, {r['side']} "
                  f"({r['params'] / 1e6:.2f}M params, {r['tokens_per_step']} tokens per step)", "",
                  "| op | category | calls/step | self ms/step | % |", "| --- | --- | ---: | ---: | ---: |"]
        for o in r["top_ops"]:
            lines.append(f"| `{o['op']}` | {o['category']} | {o['calls_per_step']:g} | {o['self_ms_per_step']:.2f} "
                         f"| {o['pct']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny shape, 1 warm-up step, 2 steps (seconds)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None, help="default: 10.8M gpt2-124M")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="steps timed, then as many profiled")
    parser.add_argument("--top", type=int, default=15, help="ops listed per run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.warmup, args.steps = ["tiny"], 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shapes or ["10.8M", "gpt2-124M"]
    versions = {"torch": torch.__version__}
    if "peer" in args.sides:
        import transformers

        versions["transformers"] = transformers.__version__
    print(", ".join(f"{k} {v}" for k, v in versions.items()) + f", {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}", flush=True)
    results = []
    for shape in shapes:
        for side in args.sides:
            r = profile_one(shape, side, args.warmup, args.steps, args.top)
            results.append(r)
            print(f"  {shape:>9} {side}: {r['wall_ms_per_step']:.1f} ms/step ({r['profiled_ms_per_step']:.1f} "
                  f"profiled)", flush=True)
    print()
    print(markdown(results))
    if args.json:
        from glassformer.io import atomic_write_json, make_dirs

        make_dirs(args.json.parent)
        atomic_write_json(args.json, {"results": results, **versions, "threads": torch.get_num_threads(),
                                      "machine": platform.machine(), "processor": platform.processor(),
                                      "date": time.strftime("%Y-%m-%d"),
                                      "command": " ".join(["python", "benchmarks/profile_train.py",
                                                           *(argv if argv is not None else sys.argv[1:])])})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

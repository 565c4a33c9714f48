"""What the named activations cost when nobody uses them (issue 13): the model with its hook
points against the same model with them compiled out.

    python benchmarks/hooks_overhead.py              # 10.8M shape, 5 rounds (~4 min on 2 cores)
    python benchmarks/hooks_overhead.py --quick      # a tiny model, seconds

Every hook point in the model code is a call ``tap(hooks, "name", x)`` (returns ``x`` when
``hooks`` is None) and every sub-scope a call ``scope(hooks, "name")``. This script copies
``src/glassformer`` to a temporary directory and rewrites that copy's syntax tree: each
``tap(h, name, x)`` becomes ``x`` and each ``scope(h, name)`` becomes ``None``. What is left is
the model as it would be without hook points, doing the same arithmetic (the script checks that
both give bit-identical logits).

Each round runs one fresh process per variant, alternating which goes first, and times there:

- ``train``: forward, loss, backward and AdamW on random tokens (6 layers, 6 heads, d_model 384,
  context 256, vocab 65, batch 8), the median of ``--steps`` steps;
- ``decode``: greedy decoding with the KV cache, batch 1, 16-token prompt, ``--new-tokens``
  tokens, through ``glassformer.generation.generate``.

Reported: the median over rounds of (hooked time / stripped time) per measurement; 1.00 means
no measurable cost, 1.02 that the unused hook points make the step 2% slower.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class StripHooks(ast.NodeTransformer):
    """``tap(h, name, x)`` -> ``x``; ``scope(h, name)`` -> ``None``."""

    def __init__(self) -> None:
        self.removed = 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name == "tap" and len(node.args) == 3:
            self.removed += 1
            return node.args[2]
        if name == "scope" and len(node.args) == 2:
            self.removed += 1
            return ast.Constant(None)
        return node


def stripped_copy(dest: Path) -> int:
    """Copy the package to ``dest/glassformer`` with every hook point removed; returns how many."""
    target = dest / "glassformer"
    shutil.copytree(ROOT / "src" / "glassformer", target)
    removed = 0
    for path in target.rglob("*.py"):
        if path.name == "hooks.py":  # the definitions of tap and scope themselves
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        stripper = StripHooks()
        tree = stripper.visit(tree)
        if stripper.removed:
            path.write_text(ast.unparse(ast.fix_missing_locations(tree)), encoding="utf-8")
            removed += stripper.removed
    return removed


CHILD = r"""
import json, statistics, sys, time, torch
args = json.loads(sys.argv[1])
from glassformer.models import GPT, GPTConfig
from glassformer.generation import generate
torch.manual_seed(0)
L, H, D, T, V, B = args["shape"]
model = GPT(GPTConfig(vocab_size=V, d_model=D, n_heads=H, n_layers=L, d_ff=4 * D, max_len=T, dropout=0.0))
x = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    logits = model(x[:2, :-1]).logits
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
times = []
for i in range(args["steps"] + 2):
    t = time.perf_counter()
    loss = model(x[:, :-1], labels=x[:, 1:]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
train = statistics.median(times[2:])
model.eval()
prompt = x[:1, :16]
generate(model, prompt, max_new_tokens=4)
decode = []
for _ in range(3):
    t = time.perf_counter()
    generate(model, prompt, max_new_tokens=args["new_tokens"])
    decode.append((time.perf_counter() - t) / args["new_tokens"])
print(json.dumps({"train_s": train, "decode_s": min(decode), "logits": logits[0, :4, :4].tolist(),
                  "file": __import__("glassformer").__file__}))
"""


def run_child(pythonpath: Path, params: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(params)], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(pythonpath)}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model, 2 rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per process")
    parser.add_argument("--new-tokens", type=int, default=100, help="decoded tokens per timing")
    args = parser.parse_args(argv)
    shape = (2, 2, 32, 32, 65, 2) if args.quick else (6, 6, 384, 256, 65, 8)
    rounds = 2 if args.quick else args.rounds
    params = {"shape": shape, "steps": 2 if args.quick else args.steps,
              "new_tokens": 8 if args.quick else args.new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        removed = stripped_copy(Path(tmp))
        paths = {"hooked": ROOT / "src", "stripped": Path(tmp)}
        results: dict[str, list[dict]] = {"hooked": [], "stripped": []}
        for r in range(rounds):
            order = ("hooked", "stripped") if r % 2 == 0 else ("stripped", "hooked")
            for name in order:
                results[name].append(run_child(paths[name], params))
        assert results["stripped"][0]["file"].startswith(tmp), "the stripped copy was not the one imported"
    if results["hooked"][0]["logits"] != results["stripped"][0]["logits"]:
        raise SystemExit("the stripped copy computes something else: not a fair comparison")
    print(f"hook points removed from the copy: {removed}; logits bit-identical: yes; shape {shape}, {rounds} rounds")
    print("| measurement | with hook points | stripped | hooked / stripped (median) |")
    print("| --- | ---: | ---: | ---: |")
    for key, label, unit in (("train_s", "training step", 1e3), ("decode_s", "decode step, batch 1", 1e3)):
        ratios = [h[key] / s[key] for h, s in zip(results["hooked"], results["stripped"])]
        hooked = statistics.median(h[key] for h in results["hooked"]) * unit
        stripped = statistics.median(s[key] for s in results["stripped"]) * unit
        print(f"| {label} | {hooked:.2f} ms | {stripped:.2f} ms | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()

"""Peak memory (RSS): our GPT against ``transformers``' ``GPT2LMHeadModel``, training and decoding.

    python benchmarks/memory.py                      # both shapes, 3 repeats (~5-10 min on 2 cores)
    python benchmarks/memory.py --json runs/memory.json
    python benchmarks/memory.py --quick              # a tiny model, seconds (run by the tests)
    python benchmarks/memory.py --sharded-load llama-120M   # loading a sharded checkpoint (below)

Every measurement runs in its own fresh Python process (this script re-invoked with
``--worker``), because the peak resident set size of a process only ever grows. Each worker
imports only its own library (ours: torch + glassformer; peer: torch + transformers), builds
one model (fp32, CPU, dropout 0) and then:

- **train**: ``--steps`` full training steps on random tokens: forward with labels, backward,
  gradient clipping to 1.0, ``torch.optim.AdamW(foreach=True)``, ``zero_grad(set_to_none=True)``;
  both sides the same code, the same optimiser, the same batch shapes; ours as the trainer runs
  it: the loss from ``return_logits=False`` (no logits kept) and malloc keeping freed blocks
  (:func:`glassformer.training.runtime.keep_freed_memory`);
- **decode**: greedy decoding of ``--new-tokens`` tokens from a ``--prompt-len``-token random
  prompt, batch 1, KV cache: ours through :func:`glassformer.generation.generate` after
  :func:`~glassformer.generation.optimize_for_decoding` (what the CLI runs; ``--plain-layout``
  skips it), the peer through ``generate(do_sample=False, use_cache=True)``.

Each worker reports its current RSS right after the imports (and torch's one-off lazy set-up,
triggered on a throwaway 8×8 layer so both sides pay it there) and right after the model is built
(``/proc/self/status`` VmRSS), and its peak (``getrusage(RUSAGE_SELF).ru_maxrss``) after every
step. The table shows the peak, the baseline after imports + build, and bytes per parameter two
ways: the whole peak, and the peak minus the RSS after imports (what the model, its gradients,
the optimiser state and the activations cost; fp32 AdamW needs at least 16 bytes per parameter:
weights, gradients and two moments). Memory does not depend on the weight values, so the two
models are built independently (the same shapes and parameter counts; the script checks the
counts agree) and neither process imports the other library. With ``--repeats`` > 1 the workers
alternate ours / peer and the median of each figure is reported.

**Sharded load** (``--sharded-load SHAPE``): one worker writes a Llama checkpoint of random fp32
weights in shards of ``shard_mb`` (``model.safetensors.index.json``); a fresh worker then loads
it with :func:`glassformer.interop.load_hf` and reports the peak RSS minus the RSS after imports,
against the weights' bytes. The loader reads one tensor at a time into a model built on the meta
device, so the ratio should stay near 1 (the bound the project holds is 1.3); a loader that
reads every shard and then copies into a built model would show about 2.

Shapes: "10.8M" = 6 layers, 6 heads, d_model 384, d_ff 1536, vocab 65, context 256, batch 8,
T = 256; "gpt2-124M" = 12 layers, 12 heads, 768, vocab 50257, context 1024, batch 4, T = 256.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `glassformer` runs (see glassformer/__init__.py)

# name -> dict(n_layers, n_heads, d_model, vocab, context, batch, seq): seq is the training T
SHAPES = {
    "10.8M": dict(n_layers=6, n_heads=6, d_model=384, vocab=65, context=256, batch=8, seq=256),
    "gpt2-124M": dict(n_layers=12, n_heads=12, d_model=768, vocab=50257, context=1024, batch=4, seq=256),
    "tiny": dict(n_layers=2, n_heads=2, d_model=64, vocab=65, context=64, batch=2, seq=32),
}
# sharded-load shapes: a Llama (GQA, untied head) and the shard size its checkpoint is cut into
LOAD_SHAPES = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, vocab=2000, shard_mb=0.2),
    "small": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=768, vocab=8000, shard_mb=4),
    "llama-120M": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, d_ff=2048, vocab=32000, shard_mb=40),
}
LOAD_BOUND = 1.3  # peak RSS over imports <= this x the weights' bytes
SIDES = ("ours", "peer")
MODES = ("train", "decode")


# ----------------------------------------------------------------------------- measuring (in a worker)


def current_rss() -> int:
    """Resident set size now, in bytes (Linux ``/proc/self/status``; else the peak so far)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build_ours(shape: dict):
    """Our GPT at ``shape`` (fp32, dropout 0), built with the public model API only."""
    from glassformer.models import GPT, GPTConfig

    return GPT(GPTConfig(vocab_size=shape["vocab"], d_model=shape["d_model"], n_heads=shape["n_heads"],
                         n_layers=shape["n_layers"], d_ff=4 * shape["d_model"], max_len=shape["context"], dropout=0.0))


def build_peer(shape: dict):
    """``GPT2LMHeadModel`` at ``shape`` (fp32, dropout 0, SDPA attention, tied LM head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=shape["n_layers"], n_head=shape["n_heads"], n_embd=shape["d_model"],
                        vocab_size=shape["vocab"], n_positions=shape["context"], bos_token_id=None,
                        eos_token_id=None, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    config._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = None  # both sides generate exactly --new-tokens tokens
    model.generation_config.pad_token_id = 0
    return model


def warm_torch() -> None:
    """Trigger torch's one-off lazy set-up (about 75 MiB the first time an optimiser steps, on torch
    2.13 CPU) on a throwaway model, so that it lands in the baseline of both sides alike: the
    peer's imports happen to pay part of it already, ours does not."""
    import torch

    layer = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(layer.parameters(), foreach=True)
    q = layer(torch.randn(1, 1, 4, 8))
    y = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.nn.functional.cross_entropy(y.reshape(4, 8), torch.zeros(4, dtype=torch.long)).backward()
    torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_params(model) -> int:
    """Distinct parameters (a tied LM head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def train_steps(model, side: str, shape: dict, steps: int) -> list[int]:
    """Run ``steps`` training steps; the peak RSS after each."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, foreach=True)
    generator = torch.Generator().manual_seed(0)
    model.train()
    peaks = []
    for _ in range(steps):
        x = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), generator=generator)
        if side == "ours":  # our labels are already shifted: labels[:, t] follows input_ids[:, :t+1]
            # as the trainer computes it: the LM head and its loss in one step, no logits kept
            loss = model(x[:, :-1], labels=x[:, 1:], return_logits=False).loss
        else:  # GPT2LMHeadModel shifts the labels inside
            loss = model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        peaks.append(peak_rss())
    return peaks


def decode(model, side: str, shape: dict, prompt_len: int, new_tokens: int, plain_layout: bool) -> tuple[list[int], int]:
    """Greedy decoding, batch 1, KV cache; (peak RSS after the run, new tokens produced)."""
    import torch

    ids = torch.randint(0, shape["vocab"], (1, prompt_len), generator=torch.Generator().manual_seed(1))
    model.eval()
    if side == "ours":
        from glassformer.generation import generate, optimize_for_decoding

        if not plain_layout:
            model = optimize_for_decoding(model)  # a prepared copy sharing the tensors it keeps
        out = generate(model, ids, max_new_tokens=new_tokens, eos_token_id=[], use_cache=True)
    else:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, num_beams=1, use_cache=True)
    return [peak_rss()], out.shape[1] - prompt_len


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process; returns the figures as a dict."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    shape = SHAPES[spec["shape"]]
    if spec["side"] == "ours":
        import glassformer.models  # noqa: F401  (the imports are part of the baseline)
        from glassformer.training.runtime import keep_freed_memory

        if spec["mode"] == "train":  # the allocator setting the trainer makes
            keep_freed_memory()

        if spec["mode"] == "decode":
            from glassformer.generation import generate, optimize_for_decoding  # noqa: F401
    else:
        import transformers  # noqa: F401
        from transformers import GPT2LMHeadModel  # noqa: F401
    warm_torch()
    rss_import = current_rss()
    torch.manual_seed(0)
    model = build_ours(shape) if spec["side"] == "ours" else build_peer(shape)
    rss_built = current_rss()
    t0 = time.perf_counter()
    if spec["mode"] == "train":
        peaks, produced = train_steps(model, spec["side"], shape, spec["steps"]), None
    else:
        peaks, produced = decode(model, spec["side"], shape, spec["prompt_len"], spec["new_tokens"],
                                 spec.get("plain_layout", False))
    return {**spec, "params": count_params(model), "rss_import": rss_import, "rss_built": rss_built,
            "peak": peak_rss(), "peaks_per_step": peaks, "new_tokens_produced": produced,
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def write_sharded(shape: dict, directory: str) -> int:
    """A Llama checkpoint of random weights at ``shape``, cut into shards; returns the weights' bytes."""
    import torch
    from safetensors.torch import save_file

    from glassformer.interop import export_hf
    from glassformer.io import atomic_write_json
    from glassformer.models import GPT, GPTConfig

    config = GPTConfig.from_name("llama-tiny", vocab_size=shape["vocab"], d_model=shape["d_model"],
                                 n_layers=shape["n_layers"], n_heads=shape["n_heads"], n_kv_heads=shape["n_kv_heads"],
                                 d_ff=shape["d_ff"], max_len=256)
    torch.manual_seed(0)
    hf_config, tensors = export_hf(GPT(config))
    limit, shards, current, size = shape["shard_mb"] * 2**20, [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[name], size = t, size + nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(Path(directory) / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
    atomic_write_json(Path(directory) / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    atomic_write_json(Path(directory) / "config.json", hf_config)
    return total


def load_worker(directory: str) -> dict:
    """Load the checkpoint in ``directory`` with the production loader; RSS before and at the peak."""
    from glassformer.interop import load_hf

    warm_torch()
    rss_import = current_rss()
    t0 = time.perf_counter()
    model = load_hf(directory)
    return {"rss_import": rss_import, "peak": peak_rss(), "params": count_params(model), "seconds": time.perf_counter() - t0}


def sharded_load(shape_name: str, directory: Path) -> dict:
    """Write the checkpoint in one worker, load it in another; the peak over imports per weight byte."""
    weights = run_worker({"write_sharded": shape_name, "dir": str(directory)})["bytes"]
    res = run_worker({"load_sharded": str(directory)})
    over = res["peak"] - res["rss_import"]
    shards = len(list(directory.glob("*.safetensors")))
    return {"shape": shape_name, "weights_bytes": weights, "shards": shards, **res, "over_import": over,
            "ratio": over / weights, "bound": LOAD_BOUND}


# ----------------------------------------------------------------------------- driving (the parent)


def run_worker(spec: dict, timeout: float | None = None) -> dict:
    """Run ``worker(spec)`` in a fresh interpreter; its JSON result."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(results: list[dict]) -> dict:
    """Median figures of the repeats of one (shape, mode, side)."""
    first = results[0]
    med = {k: statistics.median(r[k] for r in results) for k in ("rss_import", "rss_built", "peak", "seconds")}
    n = first["params"]
    return {"shape": first["shape"], "mode": first["mode"], "side": first["side"], "params": n, **med,
            "over_import": med["peak"] - med["rss_import"],
            "bytes_per_param": med["peak"] / n, "bytes_per_param_over_import": (med["peak"] - med["rss_import"]) / n,
            "repeats": len(results), "peaks": [r["peak"] for r in results],
            "peaks_per_step": first["peaks_per_step"], "new_tokens_produced": first["new_tokens_produced"]}


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}" if n >= 10 * 2**20 else f"{n / 2**20:.1f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| shape | mode | side | params | RSS after imports MiB | after build MiB | peak MiB "
             "| peak − imports MiB | bytes/param (peak) | bytes/param (peak − imports) | peak ours/peer |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    peers = {(r["shape"], r["mode"]): r for r in rows if r["side"] == "peer"}
    for r in rows:
        peer = peers.get((r["shape"], r["mode"]))
        ratio = f"**{r['peak'] / peer['peak']:.2f}**" if r["side"] == "ours" and peer else ""
        lines.append(f"| {r['shape']} | {r['mode']} | {r['side']} | {r['params'] / 1e6:.2f}M | {mib(r['rss_import'])} "
                     f"| {mib(r['rss_built'])} | {mib(r['peak'])} | {mib(r['over_import'])} "
                     f"| {r['bytes_per_param']:.1f} | {r['bytes_per_param_over_import']:.1f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny shape, 2 steps, 8 new tokens (seconds)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=None, help="default: 10.8M gpt2-124M")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=3, help="training steps per worker (the peak settles by step 2)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="workers per measurement, alternating sides; median")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the workers (default: torch's)")
    parser.add_argument("--plain-layout", action="store_true", help="decode without optimize_for_decoding")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--sharded-load", choices=sorted(LOAD_SHAPES), default=None,
                        help="measure loading a sharded Llama checkpoint instead (peak RSS over the weights' bytes)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        if "write_sharded" in spec:
            result = {"bytes": write_sharded(LOAD_SHAPES[spec["write_sharded"]], spec["dir"])}
        elif "load_sharded" in spec:
            result = load_worker(spec["load_sharded"])
        else:
            result = worker(spec)
        print(json.dumps(result), flush=True)
        return 0
    if args.sharded_load is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            row = sharded_load(args.sharded_load, Path(tmp))
        print(f"sharded load, {row['shape']}: {row['params']:,} parameters, {mib(row['weights_bytes'])} MiB of fp32 "
              f"weights in {row['shards']} shards; peak RSS {mib(row['peak'])} MiB, {mib(row['over_import'])} MiB over "
              f"the RSS after imports = {row['ratio']:.2f}x the weights (bound {LOAD_BOUND}), {row['seconds']:.1f} s")
        if args.json:
            from glassformer.io import atomic_write_json, make_dirs

            make_dirs(args.json.parent)
            atomic_write_json(args.json, {"sharded_load": row})
        return 0 if row["ratio"] <= LOAD_BOUND else 1
    if args.quick:
        args.shapes, args.steps, args.new_tokens, args.repeats = ["tiny"], 2, 8, 1
    shapes = args.shapes or ["10.8M", "gpt2-124M"]

    versions = {name: version(name) for name in ("torch", "transformers")}  # without importing them here
    print(f"torch {versions['torch']}, transformers {versions['transformers']}, python {platform.python_version()}, "
          f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
          flush=True)
    rows = []
    for shape in shapes:
        for mode in args.modes:
            results: dict[str, list[dict]] = {side: [] for side in SIDES}
            for r in range(args.repeats):
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    spec = {"shape": shape, "mode": mode, "side": side, "steps": args.steps,
                            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                            "threads": args.threads, "plain_layout": args.plain_layout}
                    res = run_worker(spec)
                    results[side].append(res)
                    print(f"  {shape:>9} {mode:>6} {side}: peak {mib(res['peak'])} MiB (after imports "
                          f"{mib(res['rss_import'])}, after build {mib(res['rss_built'])}), {res['seconds']:.1f} s",
                          flush=True)
            if results["ours"][0]["params"] != results["peer"][0]["params"]:
                raise RuntimeError(f"{shape}: parameter counts differ: ours {results['ours'][0]['params']}, "
                                   f"peer {results['peer'][0]['params']}; not the same model")
            rows += [summarise(results[side]) for side in SIDES]
    print()
    print(markdown(rows))
    if args.json:
        from glassformer.io import atomic_write_json, make_dirs

        make_dirs(args.json.parent)
        atomic_write_json(args.json, {"rows": rows, **versions, "machine": platform.machine(),
                                      "processor": platform.processor(), "date": time.strftime("%Y-%m-%d"),
                                      "command": " ".join(["python", "benchmarks/memory.py", *(argv or sys.argv[1:])])})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

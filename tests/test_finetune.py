"""Fine-tuning (issue 29): the recipe --init chooses, epochs, early stopping, --max-minutes fitting
the schedule, data as users have it (columns, pairs, stratified split, --val-data), evaluate,
task-specific --help, the contrastive objective of ``train embed``. Tiny models; the real MiniLM
runs in tests/test_finetune_minilm.py."""

from __future__ import annotations

import csv
import json
import math
import random
import time
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_refused, run_main
from glassformer.data.classification import (
    ClassificationDataset,
    SentencePairDataset,
    load_labelled,
    stratified_split,
)
from glassformer.loading import load_model
from glassformer.tokenizers import CharTokenizer, build_tokenizer
from glassformer.training.config_io import resolve_config
from glassformer.training.optim import Schedule, steps_within

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--n-layers", "1", "--n-heads", "2", "--d-model", "32", "--context", "48", "--batch-size", "8",
        "--eval-batches", "4", "--progress", "none", "--log-every", "1", "--seed", "3"]


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def char_tokenizer(texts):
    tok = build_tokenizer("char", texts)
    return CharTokenizer(tok.chars, tok.specials, unk=True, special_roles=tok.special_tokens)


# ------------------------------------------------------------------------------ data


def test_stratified_split_of_a_label_sorted_file_holds_out_every_class_by_seed():
    labels = [0] * 40 + [1] * 40 + [2] * 10  # sorted by label, as a spreadsheet export often is
    train, val = stratified_split(labels, 0.2, seed=1)
    assert sorted(train + val) == list(range(90)) and not set(train) & set(val)
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [8, 8, 2]  # each class in proportion
    assert stratified_split(labels, 0.2, seed=1) == (train, val)
    assert stratified_split(labels, 0.2, seed=2)[1] != val  # drawn at random, not the tail
    assert val != list(range(72, 90))


def test_columns_and_sentence_pairs_read_as_cls_a_sep_b_sep(tmp_path):
    path = write_csv(tmp_path / "nli.csv", ["premise", "hypothesis", "gold"],
                     [("a cat sat", "a cat", "yes"), ("dogs run far away", "cats", "no")])
    examples, names = load_labelled(path, text_column="premise", label_column="gold", pair_column="hypothesis")
    assert names == ["no", "yes"] and examples[0] == (("a cat sat", "a cat"), 1)
    tok = char_tokenizer(["a cat sat dogs run far away"])
    data = ClassificationDataset(examples, tok, 12, label_names=names)
    a, b = tok.encode("a cat sat", add_special_tokens=False), tok.encode("a cat", add_special_tokens=False)
    # 9 + 5 tokens do not fit 12 - 3 specials: the longer side loses tokens first, down to 4 + 5
    assert data.rows[0] == [tok.bos_id, *a[:4], tok.eos_id, *b, tok.eos_id]
    assert data.types[0] == [0] * 6 + [1] * 6
    batch = data.collate([0, 1])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"][0].tolist() == data.types[0]
    with pytest.raises(Exception, match="no column 'txt'"):
        load_labelled(path, text_column="txt", label_column="gold")


# ------------------------------------------------------------------------------ the recipe


def test_init_chooses_the_fine_tuning_recipe_and_explicit_flags_win():
    scratch = resolve_config("classifier", {}, {})
    assert (scratch.lr, scratch.max_steps, scratch.epochs, scratch.schedule) == (3e-4, 300, None, "cosine")
    tuned = resolve_config("classifier", {}, {"init": "/m"}, init_width=384)
    assert (tuned.lr, tuned.schedule, tuned.epochs, tuned.patience, tuned.min_lr) == (3e-4, "linear", 4.0, 2, 0.0)
    assert resolve_config("classifier", {}, {"init": "/m"}, init_width=768).lr == pytest.approx(7.5e-5)
    plan = tuned.planned(373)  # 373 rows at batch 16: 24 steps an epoch
    assert (plan.max_steps, plan.warmup_steps, plan.eval_every) == (96, 10, 24)
    steps = resolve_config("classifier", {}, {"init": "/m", "max_steps": 50})
    assert steps.epochs is None and steps.planned(373).max_steps == 50
    assert resolve_config("classifier", {"lr": 2e-5}, {"init": "/m"}).lr == 2e-5  # a config file beats the recipe


def test_linear_schedule_and_fitting_it_to_fewer_steps_end_at_the_floor():
    s = Schedule("linear", 1e-3, 1e-5, warmup_steps=10, decay_steps=100)
    assert s(10) == pytest.approx(1e-3) and s(55) == pytest.approx((1e-3 + 1e-5) / 2) and s(100) == 1e-5
    fit = s.fitted(100, 40)
    assert fit.decay_steps == 40 and fit.warmup_steps == 4 and fit(40) == 1e-5 and fit(4) == pytest.approx(1e-3)
    assert steps_within(60, 10, 10, 1000) == 60  # 1 s a step: 60 fit in 60 s
    assert steps_within(60, 10, 10, 30) == 30 and steps_within(5, 10, 10, 1000) == 11


class FakeClock:
    """time.perf_counter for the trainer: 0.05 s more at every call."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.05
        return self.now


def test_max_minutes_fits_the_schedule_so_the_run_ends_decayed(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("glassformer.training.trainer.time", types.SimpleNamespace(perf_counter=FakeClock().perf_counter, time=time.time))
    run = tmp_path / "run"
    code, out, err = run_main(capsys, "train", "gpt", "--data", corpus, "--out", run, *TINY, "--max-steps", "100000",
                              "--max-minutes", "0.1", "--schedule", "linear", "--min-lr", "0", "--lr", "1e-3",
                              "--warmup-steps", "5", "--eval-every", "100000", "--sample-tokens", "0")
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 10 < rows[-1]["step"] < 1000
    peak = max(r["lr"] for r in rows)
    assert peak == pytest.approx(1e-3, rel=0.2)
    assert rows[-1]["lr"] < 0.1 * peak  # without fitting, step 30 of 100000 is still at the peak


# ------------------------------------------------------------------------------ early stopping, evaluate


def flipped_files(tmp_path: Path) -> tuple[Path, Path]:
    """Training rows and a validation file with every label flipped: the better the model learns,
    the worse its validation loss."""
    rng = random.Random(0)
    words = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
    rows = [(" ".join(rng.choice(words[y]) for _ in range(3)), y) for y in ["pos", "neg"] * 40]
    train = write_csv(tmp_path / "train.csv", ["review", "stars"], sorted(rows, key=lambda r: r[1]))
    flip = {"pos": "neg", "neg": "pos"}
    val = write_csv(tmp_path / "flipped.csv", ["review", "stars"], [(t, flip[y]) for t, y in rows[:24]])
    return train, val


def test_early_stopping_ends_the_run_and_keeps_the_best_model(tmp_path):
    from glassformer.training.run import resolve_run_config, run_training

    train, val = flipped_files(tmp_path)
    flags = {"data": str(train), "val_data": str(val), "text_column": "review", "label_column": "stars",
             "n_layers": 1, "n_heads": 2, "d_model": 32, "context": 32, "batch_size": 8, "eval_batches": 4,
             "progress": "none", "lr": 3e-3, "warmup_steps": 0, "max_steps": 200, "eval_every": 5, "patience": 2,
             "dropout": 0.0, "out": str(tmp_path / "run")}
    result, setup, trainer = run_training(resolve_run_config("classifier", flags), echo=lambda s: None)
    assert result.early_stopped and result.step < 200
    assert result.last_val_loss > result.best_val_loss
    kept = trainer.evaluate(load_model(tmp_path / "run"))["val_loss"]
    assert kept == pytest.approx(result.best_val_loss, abs=1e-5)  # the root holds the best model, not the last


def assert_scores_agree_with_sklearn(labels, predicted, k):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from glassformer.training.heldout import scores_from_predictions

    s = scores_from_predictions(labels, predicted, [f"c{i}" for i in range(k)])
    present = sorted(set(labels))
    assert s.accuracy == pytest.approx(sklearn_metrics.accuracy_score(labels, predicted))
    assert s.macro_f1 == pytest.approx(sklearn_metrics.f1_score(labels, predicted, labels=present, average="macro",
                                                               zero_division=0))
    assert s.confusion == sklearn_metrics.confusion_matrix(labels, predicted, labels=list(range(k))).tolist()


def test_evaluate_scores_equal_scikit_learn():
    rng = random.Random(5)
    labels = [rng.randrange(4) for _ in range(200)]
    assert_scores_agree_with_sklearn(labels, [y if rng.random() < 0.6 else rng.randrange(3) for y in labels], 4)  # never c3
    assert_scores_agree_with_sklearn([0, 0, 1, 1], [1, 1, 0, 0], 3)  # all wrong, a class absent


def test_train_on_my_columns_then_evaluate_a_held_out_file(tmp_path, capsys):
    from glassformer.generation.text import classify_texts
    from glassformer.loading import load_model_and_tokenizer

    train, _ = flipped_files(tmp_path)
    held = write_csv(tmp_path / "held.csv", ["review", "stars"],
                     [("good nice fine", "pos"), ("awful sad bad", "neg"), ("great poor", "pos"), ("bad", "neg")])
    run = tmp_path / "run"
    code, out, err = run_main(capsys, "train", "classifier", "--data", train, "--text-column", "review",
                              "--label-column", "stars", "--out", run, *TINY, "--max-steps", "30", "--lr", "3e-3",
                              "--eval-every", "10", "--val-fraction", "0.25")
    assert code == 0, err
    val_lines = {r[0] for r in csv.reader(open(train))}
    hint = next(line for line in out.splitlines() if "glassformer classify" in line)
    assert any(f"'{t}'" in hint for t in val_lines), hint  # the hint's prompt is a line of the user's data

    code, out, err = run_main(capsys, "evaluate", run, "--data", held, "--json")
    assert code == 0, err
    got = json.loads(out)
    model, tok = load_model_and_tokenizer(run)
    texts = ["good nice fine", "awful sad bad", "great poor", "bad"]
    truth = ["pos", "neg", "pos", "neg"]
    labels = [r["label"] for r in classify_texts(model, tok, texts)]
    assert got["n"] == 4 and got["accuracy"] == sum(a == b for a, b in zip(labels, truth)) / 4
    assert sum(map(sum, got["confusion"])) == 4 and len(got["worst"]) == sum(a != b for a, b in zip(labels, truth))
    code, out, _ = run_main(capsys, "evaluate", run, "--data", held)
    assert "macro-F1" in out and "confusion" in out
    bad = write_csv(tmp_path / "bad.csv", ["review", "stars"], [("good", "meh")])
    assert_refused(capsys, "evaluate", run, "--data", bad, match="label 'meh' is not one the model knows")


def test_help_lists_only_the_flags_of_the_task(capsys):
    def flags(task):
        with pytest.raises(SystemExit):
            run_main(capsys, "train", task, "--help")
        return capsys.readouterr().out

    gpt, bert, classifier = flags("gpt"), flags("bert"), flags("classifier")
    assert "--mask-prob" in bert and "--mask-prob" not in gpt and "--mask-prob" not in classifier
    assert "--sample-tokens" in gpt and "--sample-tokens" not in classifier
    for flag in ("--text-column", "--label-column", "--text-pair-column", "--val-data", "--epochs", "--patience"):
        assert flag in classifier
    assert "--text-column" not in gpt and "--epochs" in gpt


# ------------------------------------------------------------------------------ embeddings


def test_the_contrastive_loss_is_cross_entropy_over_in_batch_cosines_of_the_embed_vectors():
    from glassformer.generation.text import embed_texts
    from glassformer.models import BERT, BERTConfig
    from glassformer.training.objectives import compute_loss

    pairs = [("a cat sat", "the cat"), ("dogs run", "a dog ran"), ("rain falls", "it rains"), ("sun", "sunny day")]
    tok = char_tokenizer([s for p in pairs for s in p])
    torch.manual_seed(0)
    model = BERT(BERTConfig(vocab_size=tok.vocab_size, n_layers=1, n_heads=2, d_model=32, d_ff=64, max_len=32,
                            dropout=0.0, pad_token_id=tok.pad_id, mlm_head=False)).eval()
    data = SentencePairDataset(pairs, tok, 32)
    batch = data.collate([0, 1, 2, 3])
    got = compute_loss(model, batch)
    a = torch.from_numpy(embed_texts(model, tok, [p[0] for p in pairs]))  # what `glassformer embed` computes
    p = torch.from_numpy(embed_texts(model, tok, [p[1] for p in pairs]))
    want = F.cross_entropy(20.0 * a @ p.T, torch.arange(4), reduction="sum")
    assert got.count == 4 and float(got.loss.detach()) == pytest.approx(float(want), rel=1e-5)
    assert not math.isclose(float(want), 4 * math.log(4), rel_tol=1e-3)  # not a uniform guess by accident


def test_train_embed_from_scratch_saves_a_sentence_transformers_directory(tmp_path, capsys):
    from glassformer.interop.sentence_transformers import read_sentence_config

    rows = [(f"item {i} is red", f"the {i} red one") for i in range(24)]
    data = write_csv(tmp_path / "pairs.csv", ["anchor", "positive"], rows)
    run = tmp_path / "emb"
    code, out, err = run_main(capsys, "train", "embed", "--data", data, "--out", run, *TINY, "--max-steps", "6",
                              "--eval-every", "3")
    assert code == 0, err
    config = read_sentence_config(run)
    assert config is not None and config.pooling == ("mean",) and config.normalize
    assert json.loads((run / "config.json").read_text())["model_type"] == "bert"  # the Hugging Face layout
    assert "glassformer embed" in out
    code, out, err = run_main(capsys, "embed", run, "--prompt", "item 3 is red")
    assert code == 0, err
    vector = json.loads(out)["embedding"]
    assert len(vector) == 32 and sum(v * v for v in vector) == pytest.approx(1.0, rel=1e-4)

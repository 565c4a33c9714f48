"""``glassformer demo NAME``: each demo trains, measures what it promises, and says so in
``summary.json``. The slow tests run each demo with a fixed step count and seed (the demo's
own settings otherwise) and assert the quality thresholds of issue 12. The longest demos run as
a user runs them, in a fresh process on 2 threads, beside the rest of the suite (see
``background_run`` in conftest.py); their tests come last and read the finished runs."""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest

from conftest import BACKGROUND_TIMEOUT, background_run, glassformer_argv
from glassformer import cli
from glassformer.demos import DEMOS

PNG = b"\x89PNG\r\n\x1a\n"
# A test marked background waits for its demo run (conftest.py), which may queue behind the others.
WAIT = 4 * BACKGROUND_TIMEOUT


@pytest.fixture
def demo_cli(monkeypatch, tmp_path):
    """Run ``glassformer ARGS`` in-process, with a private token cache."""
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))

    def run(*argv: str) -> int:
        return cli.main(list(argv))

    return run


def summary(out) -> dict:
    data = json.loads((out / "summary.json").read_text())
    # the demo's own clock: seconds, not milliseconds or a timestamp, and no longer than the run's
    # files say it took (train_config.json is written as training starts; 60 s for the set-up)
    span = (out / "summary.json").stat().st_mtime - (out / "train_config.json").stat().st_mtime
    assert 0 < data["elapsed_s"] <= span + 60, (data["elapsed_s"], span)
    return data


def test_every_demo_is_in_the_table_with_a_description_and_a_runner():
    assert cli.COMMANDS["demo"][0] == "glassformer.demos"
    assert list(DEMOS)[:5] == ["gpt", "bert", "seq2seq", "classifier", "induction"] and "real" in DEMOS
    for name, module_name in DEMOS.items():
        if name == "real":
            continue  # written and tested with the real checkpoint (tests/test_real*.py)
        module = importlib.import_module(module_name)
        assert isinstance(module.DESCRIPTION, str) and module.DESCRIPTION
        assert callable(module.run)


def test_demo_refuses_a_chosen_out_that_holds_another_run(tmp_path, capsys, demo_cli):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert demo_cli("demo", "seq2seq", "--max-steps", "1", "--out", str(out), "--progress", "none") == 2
    assert "holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_char_tokenizers_of_runs_read_unseen_characters_as_unk():
    from glassformer.training.config import TrainConfig
    from glassformer.training.tasks import make_tokenizer

    tok = make_tokenizer(TrainConfig(tokenizer="char"), "abc")
    ids = tok.encode("ab$c")
    assert ids[2] == tok.unk_id and tok.decode(ids, skip_special_tokens=True) == "abc"


@background_run("seq2seq")
def seq2seq_run(out: Path) -> list[str]:
    return glassformer_argv("demo", "seq2seq", "--max-steps", "600", "--out", out, "--progress", "none")


@pytest.mark.slow
@pytest.mark.background("seq2seq")  # 600 steps, about a minute; the demo's budget gives ~2.5x more
@pytest.mark.timeout(WAIT)
def test_seq2seq_demo_translates_unseen_dates_far_above_a_source_blind_baseline(background):
    out, text = background.out, background.stdout
    data = summary(out)
    assert data["exact_total"] == 200 and "translations of dates it never saw" in text
    # measured at 600 steps: 69% exact and 93.5% of characters, against 0% and 48% for one fixed answer
    assert data["exact_match"] >= 0.5, data
    assert data["char_accuracy"] >= data["baseline_char_accuracy"] + 0.3, data
    assert data["baseline_exact_match"] <= 0.05 and len(data["baseline_answer"]) == 10
    assert f"baseline, the same answer {data['baseline_answer']!r}" in text
    if data["exact_match"] < 1:  # the misses are shown, with what was wanted
        assert "BAD" in text and "(want '" in text and data["wrong_examples"]
    assert "OK (tolerance 1e-05)" in text and "next, try:" in text
    assert (out / "attention.png").read_bytes().startswith(PNG)


def test_char_accuracy_and_the_positional_baseline():
    from glassformer.demos.seq2seq import char_accuracy, positional_majority

    assert positional_majority(["2026-01-11", "2031-01-12", "2026-05-11"]) == "2026-01-11"
    assert char_accuracy(["2026-01-11", "2026"], ["2026-01-12", "2026-01-11"]) == pytest.approx((9 + 4) / 20)
    assert char_accuracy([""], ["2026-01-11"]) == 0.0


@background_run("gpt")
def gpt_run(out: Path) -> list[str]:
    return glassformer_argv("demo", "gpt", "--max-steps", "200", "--out", out, "--progress", "none")


@pytest.mark.slow
@pytest.mark.background("gpt")  # 200 steps, as the demo fits on 2 quiet cores (~2.5 min)
@pytest.mark.timeout(WAIT)
def test_gpt_demo_writes_words_of_its_corpus(background):
    out, text = background.out, background.stdout
    data = summary(out)
    # words alone a frequent-token sampler also writes (94.2%); sampling at 0.8 moves ours around 95%
    # with the kernels (95%+ on AMD EPYC, 94.4% on an AVX-512 Xeon, the same model to 4 digits of bits/char)
    assert data["word_hit_rate"] >= max(0.93, data["unigram_word_hit_rate"]), data["samples"]
    assert data["bigram_hit_rate"] >= 0.50, data["samples"]
    # against the baselines the demo prints, with a margin (measured at 200 steps on 32 samples, ~2,800 pairs:
    # 67.5% vs 47.2% of word pairs on an AVX-512 Xeon; 1.76 vs 2.47 bits per character; with learned positions
    # 61.7% and 1.91): frequent tokens alone write corpus words, but not in order. On 8 samples (~550 pairs) one
    # model measured 56.8% to 65.6% by seed.
    assert data["bigram_hit_rate"] >= data["unigram_bigram_hit_rate"] + 0.10, data
    assert data["val_bits_per_char"] <= 0.85 * data["unigram_bits_per_char"], data
    assert data["degenerate_runs"] == 0
    assert "bits per character" in text and "samples (temperature 0.8" in text
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "loss.png", "attention.png"):
        assert (out / name).is_file(), name


@background_run("bert")
def bert_run(out: Path) -> list[str]:
    return glassformer_argv("demo", "bert", "--max-steps", "500", "--out", out, "--progress", "none")


@pytest.mark.slow
@pytest.mark.background("bert")
@pytest.mark.timeout(WAIT)
def test_bert_demo_uses_context_and_fine_tunes_into_a_classifier(background, tmp_path, demo_cli):
    out, text = background.out, background.stdout
    data = summary(out)
    assert data["masked_top1"] >= 2 * data["masked_top1_baseline"] > 0
    assert "fill-mask on held-out sentences" in text and "model:" in text
    shown = data["fill_mask_examples"]
    assert shown and all(e["true"] and e["guesses"] for e in shown)
    # the suggested next step works: a classifier from the demo BERT, on text with any characters
    cls = tmp_path / "cls"
    assert demo_cli("train", "classifier", "--init", str(out), "--data", "date-order", "--num-examples", "200",
                    "--max-steps", "3", "--eval-every", "3", "--out", str(cls), "--progress", "none") == 0
    assert (cls / "model.safetensors").is_file()


@background_run("classifier")
def classifier_run(out: Path) -> list[str]:
    # on a busy machine (issue 30): a CPU-bound process runs beside the demo for its whole run
    demo = " ".join(shlex.quote(str(a)) for a in
                    glassformer_argv("demo", "classifier", "--max-steps", "300", "--out", out, "--progress", "none"))
    burner = shlex.quote(sys.executable) + " -c 'import time; t = time.time()\nwhile time.time() - t < 900: pass'"
    return ["bash", "-c", f"{burner} & busy=$!; {demo}; rc=$?; kill $busy; exit $rc"]


@pytest.mark.slow
@pytest.mark.background("classifier")
@pytest.mark.timeout(WAIT)
def test_classifier_demo_beats_length_and_bag_of_words_by_ten_points_beside_a_cpu_bound_process(background):
    out, text = background.out, background.stdout
    data = summary(out)
    best = max(data["baseline_length"], data["baseline_bag_of_words"])
    assert best < 0.6  # order carries the label: neither baseline can read it
    assert data["accuracy"] >= best + 0.10, data
    assert "confusion matrix" in text and "some pairs it gets wrong" in text
    assert sum(map(sum, data["confusion"])) == data["held_out"]


@background_run("induction", first=True)  # a tiny model that hardly uses its second thread: it runs best
def induction_run(out: Path) -> list[str]:  # beside the suite's one-thread tests; the matmul-heavy demos later
    # Where the plateau ends depends on the floating-point sums, so on the thread count (2, fixed
    # by the background runs) and on nothing else.
    return glassformer_argv("demo", "induction", "--max-steps", "4000", "--out", out, "--progress", "none")


@pytest.mark.slow
@pytest.mark.background("induction")  # about 1.4 minutes on 2 quiet cores
@pytest.mark.timeout(WAIT)
def test_induction_demo_forms_a_sharp_induction_head_after_a_phase_change(background, capsys):
    out = background.out
    data = summary(out)
    assert data["steps"] == 4000
    assert abs(data["repeated_loss_start"] - 3.466) < 0.1  # ln 32: a blind guess on the plateau
    # issue 28: the phase change before 40% of the steps (measured: 1,250 of 4,000 here; 1,200-2,200 over five
    # seeds on one thread), not at the end of the budget
    assert data["phase_change_step"] is not None and data["phase_change_step"] <= 0.4 * data["steps"], data
    assert data["repeated_loss_end"] < data["repeated_loss_start"] - 1.5  # the repeat is read off the first copy
    assert data["induction_score_best"] >= 0.8, data["scores"]  # measured 0.98
    assert data["best_head"][0] == 1  # it needs the previous-token head of the layer below
    assert max(data["scores"][0]) < 0.1  # layer 0 cannot do induction: it has no layer below
    assert len(data["scores"]) == 2 and len(data["scores"][0]) == 4
    assert (out / "induction.png").read_bytes().startswith(PNG)
    assert (out / "attention" / "index.html").is_file()
    assert json.loads((out / "head_scores.json").read_text())["best_head"] == data["best_head"]
    records = [json.loads(line) for line in (out / "induction.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == sorted(r["step"] for r in records) and len(records) >= 5
    # the plateau, then the drop: the first evaluations sit near a blind guess, the phase change is later
    assert records[0]["repeated_loss"] > 3.3 and data["phase_change_step"] > records[0]["step"]
    # `glassformer heads` (its own random sequences, not the demo's) names the circuit: an induction
    # head in layer 1 on top of a previous-token head in layer 0
    capsys.readouterr()
    assert cli.main(["heads", str(out), "--n", "10", "--json"]) == 0
    heads = {(h["layer"], h["head"]): h for h in json.loads(capsys.readouterr().out)["heads"]}
    layer, head = data["best_head"]
    assert heads[(layer, head)]["role"] == "induction" and heads[(layer, head)]["induction"] >= 0.5, heads
    assert any(h["role"] == "previous_token" for (lay, _), h in heads.items() if lay == 0), heads
    # `ablate --each` on a repeated text: what each head costs. The circuit's two halves cost the most in
    # their layers: the previous-token head (measured +1.6 to +1.8 nats on the text) and, in layer 1, a head
    # whose role is induction (+0.85 to +1.3); the roles and the ablations agree
    probe = "qwhbzmxkt" * 2
    assert cli.main(["ablate", str(out), probe, "--each", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert ranked["measure"] == "loss" and len(ranked["heads"]) == 8
    prev = max((h for (lay, _), h in heads.items() if lay == 0), key=lambda h: h["previous_token"])
    cost = {r["label"]: r["change"] for r in ranked["heads"]}
    assert cost[prev["label"]] >= 0.5, ranked["heads"]
    layer1 = [r for r in ranked["heads"] if r["layer"] == 1]  # most costly first
    assert layer1[0]["role"] == "induction" and layer1[0]["change"] >= 0.3, ranked["heads"]


def test_a_busy_machine_trains_the_demos_minimum_steps_and_says_how_long(capsys):
    """Too few steps fit the budget: the demo trains the steps its claims need, says so, and sets no time
    limit that would stop it short (issue 30: a busy laptop showed a model that had learned nothing)."""
    import argparse

    from glassformer.demos.common import DemoRun, report_steps
    from glassformer.training.config import TrainConfig

    args = argparse.Namespace(out=None, overwrite=False, minutes=0.5, max_steps=None, seed=0, progress="none")
    demo = DemoRun.from_args("gpt", args, 2.0)
    steps, per_step = demo.fit_steps(lambda: 0.6, low=200, high=900)  # 0.66 s a step: 45 fit in 30 s
    assert steps == 200 and per_step == pytest.approx(0.66)
    report_steps(demo, steps, per_step, low=200)
    said = capsys.readouterr().out
    assert "45 steps fit in 0.5 minutes, fewer than the 200 this demo needs" in said and "about 2.2 minutes" in said
    config = demo.train_config(TrainConfig(task="gpt", max_steps=steps))
    assert config.max_minutes is None and config.max_steps == 200
    quiet, _ = demo.fit_steps(lambda: 0.01, low=200, high=900)
    assert quiet == 900  # a fast machine: capped at the schedule's high end

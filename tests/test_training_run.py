"""``glassformer train`` end to end: bitwise resume (and its negative control), signals, NaN, every task."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import fingerprint, losses, run_cli, subprocess_env, tiny_flags
from glassformer.cli import main
from glassformer.loading import load_model
from glassformer.training import checkpoint as ckpt


def resume_in_new_process(run: Path, tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess:
    code = prelude + "from glassformer.cli import main; raise SystemExit(main(sys.argv[1:]))"
    argv = ["train", "gpt", "--out", str(run), "--resume", "--max-steps", "8"]
    return subprocess.run([sys.executable, "-c", "import sys\n" + code, *argv], env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # real processes
def test_resume_in_a_new_process_is_bitwise_identical_and_needs_the_rng_state(corpus, tmp_path):
    flags = tiny_flags(corpus)
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert main(["train", "gpt", "--out", str(straight), *flags, "--max-steps", "8", "--eval-every", "4"]) == 0
    # the first half keeps the full run's schedule (--lr-decay-steps 8) and stops at step 4
    assert main(["train", "gpt", "--out", str(halves), *flags, "--max-steps", "4", "--lr-decay-steps", "8",
                 "--eval-every", "4"]) == 0
    control = tmp_path / "control"
    shutil.copytree(halves, control)

    done = resume_in_new_process(halves, tmp_path)
    assert done.returncode == 0, done.stderr
    expected = losses(straight)
    assert len(expected) == 8 and expected[3][2] is not None and expected[7][2] is not None
    assert losses(halves) == expected  # every loss, bit for bit (dropout and random batches on)

    # negative control: the same resume with the RNG states left as a fresh process has them
    skip = "import glassformer.training.checkpoint as c\nc.restore_rng = lambda *a, **k: None\n"
    done = resume_in_new_process(control, tmp_path, prelude=skip)
    assert done.returncode == 0, done.stderr
    got = losses(control)
    assert got[:4] == expected[:4]
    assert got[4:] != expected[4:] and all(a[1] != b[1] for a, b in zip(got[4:], expected[4:]))


@pytest.mark.slow  # a real process
def test_sigterm_finishes_the_step_saves_and_exits_cleanly(corpus, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "gpt", "--out", str(run), *tiny_flags(corpus), "--max-steps", "100000", "--eval-every", "100000"]
    proc = subprocess.Popen([sys.executable, "-m", "glassformer", *argv], env=subprocess_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        metrics = run / "metrics.jsonl"
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped by SIGTERM" in out
    last_logged = losses(run)[-1][0]
    latest = ckpt.latest_checkpoint(run)
    assert 3 <= last_logged < 100000 and latest.name == f"step_{last_logged:06d}"
    # and the run continues from there
    assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", str(last_logged + 2)]) == 0
    assert [r[0] for r in losses(run)][-3:] == [last_logged, last_logged + 1, last_logged + 2]


def _trainer(corpus, tmp_path, **overrides):
    from glassformer.training.config import TrainConfig
    from glassformer.training.run import run_training  # noqa: F401  (the same path the CLI takes)
    from glassformer.training.tasks import prepare
    from glassformer.training.trainer import Trainer

    cfg = TrainConfig(task="gpt", data=str(corpus), n_layers=1, n_heads=2, d_model=32, context=32, batch_size=4,
                      eval_batches=1, sample_tokens=0, progress="none", log_every=1, out=str(tmp_path / "run"),
                      lr=1e-2, warmup_steps=1, **overrides)
    setup = prepare(cfg)
    return Trainer(setup.model, cfg, setup.train_data, setup.val_data, tokenizer=setup.tokenizer, run_dir=cfg.run_dir)


def test_ctrl_c_in_process_stops_after_the_step_and_saves(corpus, tmp_path):
    trainer = _trainer(corpus, tmp_path, max_steps=50, eval_every=2)
    trainer.eval_callbacks.append(lambda t, step: os.kill(os.getpid(), signal.SIGINT) if step == 4 else None)
    # whatever was in place before (Python's default_int_handler, or SIG_IGN when the test run
    # was started in the background by a shell without job control)
    before = signal.getsignal(signal.SIGINT)
    result = trainer.fit()
    assert result.stopped_by == "SIGINT" and result.step == 4
    assert ckpt.latest_checkpoint(trainer.run_dir).name == "step_000004"
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    from glassformer.training.trainer import TrainingDiverged

    trainer = _trainer(corpus, tmp_path, max_steps=20, eval_every=2)
    calls = {"train": 0}

    def poison(module, args, output):
        if module.training:
            calls["train"] += 1
            if calls["train"] >= 5:  # the 5th training step
                return output * float("nan")
        return output

    trainer.model.tok_emb.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"nan at step 5.*step_000004"):
        trainer.fit()
    latest = ckpt.latest_checkpoint(trainer.run_dir)
    assert latest.name == "step_000004"
    model = load_model(latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_exit_2_and_destroys_nothing(corpus, tmp_path, capsys):
    flags = tiny_flags(corpus)
    run = tmp_path / "run"
    assert main(["train", "gpt", "--out", str(run), *flags, "--max-steps", "2", "--eval-every", "2"]) == 0
    before = fingerprint(run)
    capsys.readouterr()
    cases = {
        "unknown flag": (["--no-such-flag", "1"], "unrecognized arguments"),
        "unknown value": (["--device", "tpu"], "invalid choice"),
        "bad number": (["--batch-size", "two"], "expected an integer"),
        "batch size 0": (["--batch-size", "0"], "batch_size must be positive"),
        "context above max_len": (["--context", "64", "--max-len", "32"], "context 64 is above max_len 32"),
        "another run": ([], "already holds a run"),
        "resume, changed model": (["--resume", "--d-model", "64"], "differs from the run's"),
        "missing data": (["--data", str(tmp_path / "nope.txt"), "--overwrite"], "nope.txt"),
    }
    if not torch.cuda.is_available():
        cases["no such device"] = (["--device", "cuda", "--overwrite"], "no CUDA device is available")
    for name, (extra, message) in cases.items():
        rc, err = run_cli(["train", "gpt", *flags, "--out", str(run), "--max-steps", "2", *extra], capsys)
        assert rc == 2, name
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert fingerprint(run) == before, name  # nothing destroyed, not even with --overwrite

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, err = run_cli(["train", "gpt", *flags, "--out", str(empty), "--resume"], capsys)
    assert rc == 2 and "no checkpoint to resume from" in err
    rc, err = run_cli(["train", "classifier", "--init", str(run), "--out", str(tmp_path / "cls")], capsys)
    assert rc == 2 and "holds a gpt model" in err and not (tmp_path / "cls").exists()

    # --overwrite with valid input does replace the run
    assert main(["train", "gpt", *flags, "--out", str(run), "--max-steps", "1", "--eval-every", "1", "--overwrite"]) == 0
    assert [r[0] for r in losses(run)] == [1]


# ------------------------------------------------------------------------ the other tasks


def test_seq2seq_bert_and_classifier_train_and_save_loadable_models(corpus, tmp_path, caplog):
    caplog.set_level("INFO")
    small = ["--n-layers", "1", "--n-heads", "2", "--d-model", "32", "--batch-size", "8", "--eval-batches", "2",
             "--log-every", "1", "--warmup-steps", "1", "--lr", "3e-3", "--progress", "plain"]
    s2s = tmp_path / "s2s"
    assert main(["train", "seq2seq", "--data", "reverse", "--num-examples", "64", "--context", "16",
                 "--max-steps", "3", "--eval-every", "3", "--sample-tokens", "8", "--out", str(s2s), *small]) == 0
    assert "samples:" in caplog.text  # greedy translations printed at the eval
    assert (s2s / "generation_config.json").is_file() and load_model(s2s).config.model_type == "transformer"

    bert = tmp_path / "bert"
    assert main(["train", "bert", "--data", str(corpus), "--context", "32", "--max-steps", "3", "--eval-every", "3",
                 "--snapshot-attention", "def add(a, b):", "--out", str(bert), *small]) == 0
    assert (bert / "attention" / "step_0000003.json").is_file()  # the probe's attention, saved at the eval
    resolved = json.loads((bert / "train_config.json").read_text())
    assert resolved["task"] == "bert" and resolved["d_model"] == 32 and resolved["weight_decay"] == 0.01
    labelled = tmp_path / "labels.csv"
    rows = ["text,label"] + ['the list holds items,prose' if i % 2 else '"def add(a, b): return a",code' for i in range(40)]
    labelled.write_text("\n".join(rows) + "\n")
    cls = tmp_path / "cls"
    assert main(["train", "classifier", "--init", str(bert), "--data", str(labelled), "--context", "32",
                 "--max-steps", "4", "--eval-every", "4", "--out", str(cls), *small]) == 0
    model = load_model(cls)
    assert model.config.num_labels == 2 and model.config.label_names == ["code", "prose"]
    # it started from the BERT: embeddings of characters the labelled text never uses got no gradient
    from glassformer.tokenizers import load_tokenizer

    start = load_model(bert)
    unseen = load_tokenizer(bert).encode("qkwxjvzyg")
    assert torch.allclose(model.tok_emb.weight[unseen], start.tok_emb.weight[unseen], rtol=1e-3, atol=1e-6)
    assert losses(cls)[-1][2] is not None


@pytest.mark.parametrize("every_s, draws", [(60.0, 1), (0.0, 3)])
def test_loss_plot_is_drawn_at_most_once_a_minute_and_at_the_end(corpus, tmp_path, monkeypatch, every_s, draws):
    import glassformer.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "PLOT_EVERY_S", every_s)
    drawn = []
    real = trainer_module.plot_losses
    monkeypatch.setattr(trainer_module, "plot_losses",
                        lambda records, *a, **k: (drawn.append(len(records)), real(records, *a, **k)))
    trainer = _trainer(corpus, tmp_path, max_steps=6, eval_every=2)
    trainer.fit()
    assert len(drawn) == draws  # evaluations at steps 2, 4 and 6: a quick run draws once, at its end
    assert drawn[-1] == 6  # the last drawing holds every logged step
    assert (trainer.run_dir / "loss.png").stat().st_size > 1000

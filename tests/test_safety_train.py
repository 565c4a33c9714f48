"""``glassformer train`` loses nothing and mixes nothing (issue 15): one writer per run directory,
every input checked before ``--out`` is touched, resumes that notice changed data, checkpoints
that cannot point elsewhere, errors that name the file, files that honour the umask."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import fingerprint, glassformer_argv, losses, run_cli, subprocess_env, tiny_flags
from glassformer.cli import main
from glassformer.training import checkpoint as ckpt


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4) to copy: (run, corpus, cache)."""
    root = tmp_path_factory.mktemp("base")
    from conftest import TRAIN_TEXT

    corpus = root / "corpus.txt"
    corpus.write_text(TRAIN_TEXT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLASSFORMER_CACHE", str(root / "cache"))
        assert main(["train", "gpt", "--out", str(root / "run"), *tiny_flags(corpus), "--max-steps", "4",
                     "--eval-every", "2"]) == 0
    return root / "run", corpus, root / "cache"


@pytest.fixture
def run(base_run, tmp_path, monkeypatch):
    """A private copy of the base run (and its corpus), with the cache set."""
    src, corpus, cache = base_run
    monkeypatch.setenv("GLASSFORMER_CACHE", str(cache))
    shutil.copytree(src, tmp_path / "run")
    return tmp_path / "run"


def one_line(rc: int, err: str, *needles: str) -> None:
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------ 1. the lock


@pytest.mark.slow
def test_a_second_writer_is_refused_naming_the_pid_and_kill_9_releases_the_lock(corpus, tmp_path):
    out = tmp_path / "run"
    env = subprocess_env(tmp_path)
    first = subprocess.Popen(glassformer_argv("train", "gpt", "--out", out, *tiny_flags(corpus), "--max-steps", "100000",
                                              "--eval-every", "3"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while ckpt.latest_checkpoint(out) is None:
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not save a checkpoint"
            time.sleep(0.2)
        before = {p.name for p in (out / "checkpoints").iterdir()}
        for extra in (["--resume"], ["--overwrite", *tiny_flags(corpus)], []):
            second = subprocess.run(glassformer_argv("train", "gpt", "--out", out, "--max-steps", "2", *extra), env=env,
                                    capture_output=True, text=True, timeout=120)
            one_line(second.returncode, second.stderr.splitlines()[-1] + "\n", f"PID {first.pid}", str(out))
            assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on, its files untouched by the others
        assert (out / "train_config.json").is_file() and before & {p.name for p in (out / "checkpoints").iterdir()}
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # the kernel released the dead process's lock: the run resumes
    step = int(ckpt.latest_checkpoint(out).name.split("_")[1])
    assert main(["train", "gpt", "--out", str(out), "--resume", "--max-steps", str(step + 1)]) == 0
    assert losses(out)[-1][0] == step + 1


# ------------------------------------------------------------- 2. validate before touching


def test_bad_values_with_overwrite_or_resume_destroy_and_save_nothing(run, capsys):
    before = fingerprint(run)
    cases = [
        (["--overwrite", "--lr", "inf"], "lr must be a finite number"),
        (["--overwrite", "--lr", "nan"], "lr must be a finite number"),
        (["--overwrite", "--snapshot-attention", "fox " * 20], "more than the model's 32 positions"),
        (["--resume", "--snapshot-attention", "fox " * 20], "more than the model's 32 positions"),
        (["--resume", "--snapshot-attention", "  "], "the probe is empty"),
        (["--resume", "--lr", "inf"], "lr must be a finite number"),
        (["--overwrite", "--batch-size", str(10**9)], "--batch-size 1000000000"),
    ]
    corpus = json.loads((run / "train_config.json").read_text())["data"]
    for extra, message in cases:
        flags = [] if "--resume" in extra else tiny_flags(Path(corpus))
        rc, err = run_cli(["train", "gpt", "--out", str(run), *flags, "--max-steps", "6", *extra], capsys)
        one_line(rc, err, message)
        assert fingerprint(run) == before, extra  # no checkpoint lost, no train_config.json rewritten
    # a plain --resume still works: the bad probe was never saved
    assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "5"]) == 0
    assert json.loads((run / "train_config.json").read_text())["snapshot_attention"] is None


def test_overwrite_keeps_the_old_run_until_the_new_one_saved_a_checkpoint(run, monkeypatch):
    from glassformer.training.trainer import Trainer

    before = fingerprint(run)
    corpus = Path(json.loads((run / "train_config.json").read_text())["data"])

    def boom(self, step):
        raise RuntimeError("the new run fails at its first step")

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", boom)
        with pytest.raises(RuntimeError, match="first step"):
            main(["train", "gpt", "--out", str(run), *tiny_flags(corpus), "--max-steps", "3", "--overwrite"])
    assert fingerprint(run) == before  # the previous run is back, whole
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced-")]

    assert main(["train", "gpt", "--out", str(run), *tiny_flags(corpus), "--max-steps", "1", "--eval-every", "1",
                 "--overwrite"]) == 0
    assert [r[0] for r in losses(run)] == [1]  # replaced, and nothing of the old run kept aside
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced-")]


STALL_FIRST_STEP = """
import sys, time
from glassformer.training.trainer import Trainer
def stall(self, step):  # the new run has moved the old one aside and written its first files
    print("STEP", flush=True)
    time.sleep(600)
Trainer.train_step = stall
from glassformer.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_overwrite_killed_before_its_first_checkpoint_gives_the_old_run_back(run, tmp_path):
    before = fingerprint(run)
    corpus = Path(json.loads((run / "train_config.json").read_text())["data"])
    argv = ["train", "gpt", "--out", str(run), *tiny_flags(corpus), "--max-steps", "3", "--overwrite", "--seed", "99"]
    proc = subprocess.Popen([sys.executable, "-c", STALL_FIRST_STEP, *argv], env=subprocess_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # the start-of-run report first
            if line.strip() == "STEP":
                break
        assert proc.poll() is None
        assert [p.name for p in run.iterdir() if p.name.startswith(".replaced-")] == [f".replaced-{proc.pid}"]
        assert json.loads((run / "train_config.json").read_text())["seed"] == 99  # the new run's files
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    # the next start on the directory puts the old run back, and it continues from its step 4
    assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "5"]) == 0
    assert [r[0] for r in losses(run)] == [1, 2, 3, 4, 5]
    assert json.loads((run / "train_config.json").read_text())["seed"] == 7
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced-")]
    step4 = "checkpoints/step_000004/model.safetensors"
    assert fingerprint(run)[step4] == before[step4]


# ------------------------------------------------------------------------ 3. resume notices


def test_resume_notices_changed_data_and_continues_only_when_allowed(run, capsys):
    corpus = Path(json.loads((run / "train_config.json").read_text())["data"])
    saved = corpus.read_bytes()
    try:
        corpus.write_bytes(saved.replace(b"lazy dog", b"lazy cat", 1))  # same size, other bytes
        rc, err = run_cli(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "5"], capsys)
        one_line(rc, err, str(corpus), "changed since the run started", "--allow-data-change")
        assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "5", "--allow-data-change"]) == 0
        assert losses(run)[-1][0] == 5
        # the new data is now the run's: a plain resume goes on
        assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "6"]) == 0
        assert "allow_data_change" in json.loads((run / "train_config.json").read_text())
    finally:
        corpus.write_bytes(saved)


def test_out_inside_the_data_directory_is_refused(tmp_path, capsys, monkeypatch):
    from conftest import TRAIN_TEXT

    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "docs"
    data.mkdir()
    (data / "a.txt").write_text(TRAIN_TEXT)
    flags = tiny_flags(data)
    for out in (data / "run", data / "deeper" / "run"):
        rc, err = run_cli(["train", "gpt", *flags, "--out", str(out), "--max-steps", "1"], capsys)
        one_line(rc, err, "inside the data directory")
    rc, err = run_cli(["train", "gpt", *flags[2:], "--data", str(data / "*.txt"), "--out", str(data / "r"),
                       "--max-steps", "1"], capsys)
    one_line(rc, err, "inside the data directory")
    assert sorted(p.name for p in data.iterdir()) == ["a.txt"]


def test_a_relative_data_path_resumes_from_any_directory_and_in_any_spelling(corpus, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(corpus, work / "notes.txt")
    monkeypatch.chdir(work)
    flags = tiny_flags(Path("notes.txt"))
    assert main(["train", "gpt", *flags, "--out", "run", "--max-steps", "2", "--eval-every", "2"]) == 0
    assert json.loads((work / "run" / "train_config.json").read_text())["data"] == str(work / "notes.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "gpt", "--out", str(work / "run"), "--resume", "--max-steps", "3"]) == 0
    spelled = str(work / ".." / "work" / "notes.txt")
    assert main(["train", "gpt", "--out", str(work / "run"), "--resume", "--data", spelled, "--max-steps", "4"]) == 0
    assert [r[0] for r in losses(work / "run")] == [1, 2, 3, 4]


# --------------------------------------------------------------- 5. nothing outside the run


def test_a_latest_pointer_leading_outside_the_run_is_refused(run, base_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(base_run[0], other)
    latest = run / "checkpoints" / "latest"
    latest.write_text(os.path.relpath(other / "checkpoints" / "step_000004", run / "checkpoints") + "\n")
    rc, err = run_cli(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "6"], capsys)
    one_line(rc, err, "latest", "outside")
    # a step directory that is a link to another run's checkpoint
    (run / "checkpoints" / "step_000009").symlink_to(other / "checkpoints" / "step_000004")
    latest.write_text("step_000009\n")
    rc, err = run_cli(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "6"], capsys)
    one_line(rc, err, "latest", "outside")
    assert losses(run)[-1][0] == 4 and [r[0] for r in losses(other)][-1] == 4  # neither run moved


# ------------------------------------------------------------ 7. errors that name the file


def test_a_checkpoint_missing_a_random_stream_names_the_file(run, capsys):
    path = ckpt.latest_checkpoint(run) / "rng.safetensors"
    tensors = load_file(path)
    del tensors["torch_cpu"]
    save_file(tensors, path)
    rc, err = run_cli(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "6"], capsys)
    one_line(rc, err, str(path), "torch_cpu", "checkpoints/latest")
    assert losses(run)[-1][0] == 4  # the refused resume trained nothing


def test_an_optimizer_moment_of_the_wrong_shape_is_refused_at_resume(run, capsys):
    path = ckpt.latest_checkpoint(run) / "optimizer.safetensors"
    tensors = load_file(path)
    key = next(k for k, v in tensors.items() if k.endswith("exp_avg") and v.dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, path)
    rc, err = run_cli(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "6"], capsys)
    one_line(rc, err, str(path), key.removeprefix("state."), "does not belong to this model")
    assert losses(run)[-1][0] == 4  # the refused resume trained nothing


def test_a_run_killed_before_its_first_checkpoint_starts_again_on_resume(run, capsys, caplog):
    shutil.rmtree(run / "checkpoints")  # what a kill -9 before the first save leaves: config, metrics, no checkpoint
    rc, err = run_cli(["train", "gpt", "--out", str(run), "--max-steps", "3"], capsys)
    one_line(rc, err, "before its first checkpoint", "--resume", "--overwrite")
    caplog.set_level(logging.WARNING)
    assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "3", "--eval-every", "3"]) == 0
    assert "no checkpoint yet" in caplog.text and "step 0" in caplog.text
    assert [r[0] for r in losses(run)] == [1, 2, 3] and ckpt.latest_checkpoint(run).name == "step_000003"


def test_temporary_files_of_a_killed_run_are_removed_at_the_next_start(run):
    pid = dead_pid()
    litter = [run / f".loss.tmp-{pid}.png", run / f".loss.png.tmp-{pid}-0123abcd",
              run / "checkpoints" / f".latest.tmp-{pid}-89abcdef"]
    for path in litter:
        path.write_bytes(b"half written")
    half = run / "checkpoints" / f".tmp-step_000006-{pid}"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"x")
    keep = run / ".notes.txt.tmp-but-not-ours"
    keep.write_text("a user's file")
    assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "5"]) == 0
    assert not any(p.exists() for p in litter) and not half.exists()
    assert keep.read_text() == "a user's file"


def test_non_utf8_data_for_a_bpe_run_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "latin1.txt"
    data.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 100)
    rc, err = run_cli(["train", "gpt", *tiny_flags(data), "--tokenizer", "bpe", "--vocab-size", "300",
                       "--out", str(tmp_path / "run")], capsys)
    one_line(rc, err, str(data), "UTF-8", "--errors replace")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- console == metrics.jsonl


def test_the_console_loss_is_the_metrics_loss_at_the_same_step(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="glassformer.training")
    out = tmp_path / "run"
    flags = [f for f in tiny_flags(corpus)]
    flags[flags.index("--progress") + 1] = "plain"
    flags[flags.index("--log-every") + 1] = "3"
    assert main(["train", "gpt", "--out", str(out), *flags, "--max-steps", "9", "--eval-every", "9"]) == 0
    shown = {int(m.group(1)): m.group(2) for m in re.finditer(r"step (\d+)/9 \| loss ([0-9.]+)", caplog.text)}
    logged = {step: loss for step, loss, _, _ in losses(out)}
    assert sorted(shown) == sorted(logged) == [3, 6, 9]
    assert all(shown[s] == f"{logged[s]:.4f}" for s in shown)  # the window mean, not the last batch


# --------------------------------------------------------------------------- 6. permissions


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_and_directory_of_a_run_honours_the_umask(corpus, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        assert main(["train", "gpt", "--out", str(out), *tiny_flags(corpus), "--max-steps", "2",
                     "--eval-every", "2"]) == 0
    finally:
        os.umask(old)
    paths = [out, *out.rglob("*"), *(tmp_path / "cache").rglob("*")]
    assert len(paths) > 15
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == want, f"{path}: {oct(mode)}, want {oct(want)}"


# ------------------------------------------------------------------------------- --compile


def test_compile_flag_is_honoured_and_the_default_follows_the_rule(corpus, tmp_path, monkeypatch):
    from glassformer.training import runtime
    from glassformer.training.config import COMPILE_MIN_STEPS

    cpu = torch.device("cpu")
    assert runtime.should_compile(True, cpu, 1) and not runtime.should_compile(False, cpu, 10**6)
    monkeypatch.setattr(runtime, "has_cxx_compiler", lambda: True)
    assert not runtime.should_compile(None, cpu, COMPILE_MIN_STEPS - 1)
    assert runtime.should_compile(None, cpu, COMPILE_MIN_STEPS)
    assert not runtime.should_compile(None, cpu, COMPILE_MIN_STEPS, max_minutes=3)  # a short budget stays eager
    assert runtime.should_compile(None, cpu, COMPILE_MIN_STEPS, max_minutes=60)
    monkeypatch.setattr(runtime, "has_cxx_compiler", lambda: False)
    assert not runtime.should_compile(None, cpu, COMPILE_MIN_STEPS)
    assert runtime.should_compile(None, torch.device("cuda"), COMPILE_MIN_STEPS)

    from glassformer.training.config import TrainConfig
    from glassformer.training.run import run_training

    base = dict(task="gpt", data=str(corpus), n_layers=1, n_heads=2, d_model=32, context=32, batch_size=4,
                eval_batches=1, sample_tokens=0, progress="none", max_steps=1, eval_every=1)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(model) or model)
    for flag, expect in ((None, False), (True, True), (False, False)):
        _, _, trainer = run_training(TrainConfig(**base, compile=flag, out=str(tmp_path / f"run-{flag}")), echo=str)
        assert trainer.compiled is expect
    assert len(calls) == 1
    rc = main(["train", "gpt", "--out", str(tmp_path / "c"), *tiny_flags(corpus), "--max-steps", "1", "--no-compile"])
    assert rc == 0 and json.loads((tmp_path / "c" / "train_config.json").read_text())["compile"] is False


@pytest.mark.slow
def test_a_compiled_step_gives_the_eager_loss(corpus, tmp_path):
    from glassformer.training.config import TrainConfig
    from glassformer.training.run import run_training
    from glassformer.training.runtime import has_cxx_compiler

    if not has_cxx_compiler():
        pytest.skip("torch.compile needs a C++ compiler on the CPU")
    base = dict(task="gpt", data=str(corpus), n_layers=1, n_heads=2, d_model=32, context=32, batch_size=4,
                eval_batches=1, sample_tokens=0, progress="none", max_steps=3, eval_every=3, log_every=1, dropout=0.0)
    for flag in (False, True):
        run_training(TrainConfig(**base, compile=flag, out=str(tmp_path / f"run-{flag}")), echo=str)
    eager, compiled = losses(tmp_path / "run-False"), losses(tmp_path / "run-True")
    for a, b in zip(eager, compiled):
        assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-4 * max(1.0, abs(a[1])), (a, b)

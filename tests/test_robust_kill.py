"""kill -9 at random points and concurrent runs (issue 30, item 8; the value sweep is in
``test_robust_adversarial.py``). Each case runs real ``glassformer`` processes, so all are slow.

* kill -9 at seeded random moments of ``train`` and of the ``--resume`` that follows: the last
  complete checkpoint is never lost, and the next start resumes or refuses in one line;
* several processes at once: fresh ``train`` runs on one ``--out``, ``convert`` to one
  destination, ``serve`` on a directory a run is writing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import glassformer_argv, losses, save_tiny_models, subprocess_env, tiny_flags
from glassformer.training import checkpoint as ckpt

pytestmark = pytest.mark.slow


def step_of(path: Path | None) -> int:
    return -1 if path is None else int(path.name.split("_")[1])


def error_line(err: str) -> str:
    """The one ``glassformer`` error line of a refused command (log lines may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("glassformer")]
    assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def assert_complete(checkpoint: Path) -> None:
    """Every tensor file of ``checkpoint`` reads back (a half-written one would not)."""
    files = sorted(checkpoint.glob("*.safetensors"))
    assert any(f.name == "model.safetensors" for f in files), sorted(p.name for p in checkpoint.iterdir())
    for f in files:
        load_file(f)


def metrics_lines(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_9_at_random_moments_never_loses_the_last_checkpoint(corpus, tmp_path):
    rng = random.Random(30)  # seeded: the same kill moments on every run of the test
    out = tmp_path / "run"
    env = subprocess_env(tmp_path, threads=1)
    fresh = ["train", "gpt", "--out", out, *tiny_flags(corpus), "--eval-every", "5", "--max-steps", "100000"]
    resume = ["train", "gpt", "--out", out, "--resume", "--max-steps", "100000"]
    kills, refusals = [], []
    for i in range(8):
        argv = resume if (out / "train_config.json").is_file() else fresh
        lines = metrics_lines(out)
        proc = subprocess.Popen(glassformer_argv(*argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if i in (2, 5):  # during start-up (imports, locking, reading the checkpoint)
            time.sleep(rng.uniform(0.2, 2.0))
        else:  # once it trains: at a random moment of its steps and checkpoint saves
            deadline = time.monotonic() + 180
            while metrics_lines(out) <= lines and proc.poll() is None:
                assert time.monotonic() < deadline, "the run did not start training"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:  # it stopped by itself: only a clear refusal is allowed
            err = proc.stderr.read()
            assert proc.returncode == 2, err
            refusals.append(error_line(err))
            if "--overwrite" in err and "--overwrite" not in fresh:  # killed before it saved anything: begin again
                fresh = [*fresh, "--overwrite"]
            continue
        before = ckpt.latest_checkpoint(out)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        after = ckpt.latest_checkpoint(out)
        kills.append((step_of(before), step_of(after)))
        assert step_of(after) >= step_of(before), kills  # the last good checkpoint is still the latest, or newer
        if after is not None:
            assert_complete(after)
    assert len(kills) >= 6 and len({b for b, _ in kills if b > 0}) >= 4, (kills, refusals)  # kills between saves

    last = step_of(ckpt.latest_checkpoint(out))
    done = subprocess.run(glassformer_argv(*resume[:-1], str(last + 3)), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [r[0] for r in losses(out)]
    assert steps == list(range(1, last + 4)), steps  # one line per step: nothing from a killed run doubled
    assert step_of(ckpt.latest_checkpoint(out)) == last + 3
    assert not [p for p in out.rglob(".*") if p.name.startswith((".tmp", ".replaced", ".latest.tmp"))]


def test_fresh_trains_started_together_on_one_out_leave_one_whole_run(corpus, tmp_path):
    out = tmp_path / "run"
    env = subprocess_env(tmp_path, threads=1)
    procs = [subprocess.Popen(glassformer_argv("train", "gpt", "--out", out, *tiny_flags(corpus), "--max-steps", "6",
                                               "--eval-every", "3", "--seed", str(seed)),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2, 3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) >= 1, results
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            assert "--out" in error_line(err) or "PID" in error_line(err), err
    # the directory holds one run, not a mixture: its config, metrics and checkpoint agree
    seed = json.loads((out / "train_config.json").read_text())["seed"]
    assert seed in (1, 2, 3)
    assert [r[0] for r in losses(out)] == [1, 2, 3, 4, 5, 6]
    assert_complete(ckpt.latest_checkpoint(out))
    resumed = subprocess.run(glassformer_argv("train", "gpt", "--out", out, "--resume", "--max-steps", "7"), env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_converts_started_together_to_one_destination_each_finish_or_refuse_in_one_line(tmp_path):
    models = save_tiny_models(tmp_path / "m")
    env = subprocess_env(tmp_path, threads=1)
    for overwrite in ([], ["--overwrite"]):
        dst = tmp_path / f"dst{len(overwrite)}"
        procs = [subprocess.Popen(glassformer_argv("convert", models["gpt"], dst, "--to", "hf", *overwrite), env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        assert any(code == 0 for code, _ in results), results
        for code, err in results:
            assert code in (0, 2), err
            if code == 2:  # was "[Errno 39] Directory not empty: '.dst.partial-PID-RAND' -> 'dst'"
                line = error_line(err)
                assert "Errno" not in line and str(dst) in line, line
        assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
        load_file(dst / "model.safetensors")
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_serve_on_a_directory_a_run_is_writing_reads_it_and_disturbs_nothing(corpus, tmp_path):
    import socket

    out = tmp_path / "run"
    env = subprocess_env(tmp_path, threads=1)
    train = subprocess.Popen(glassformer_argv("train", "gpt", "--out", out, *tiny_flags(corpus), "--max-steps", "100000",
                                              "--eval-every", "5"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    serve = None
    try:
        deadline = time.monotonic() + 180
        while ckpt.latest_checkpoint(out) is None or not (out / "model.safetensors").is_file():
            assert train.poll() is None and time.monotonic() < deadline, train.stderr.read()
            time.sleep(0.2)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve = subprocess.Popen(glassformer_argv("serve", out, "--port", port), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while True:
            assert serve.poll() is None, serve.stdout.read()
            assert time.monotonic() < deadline, "the server did not answer"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models", timeout=5) as r:
                    models = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.3)
        assert len(models["models"]) == 1
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/attention", method="POST",
                                         data=json.dumps({"model": 0, "text": "def add"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200 and "streams" in json.loads(r.read())
        before = step_of(ckpt.latest_checkpoint(out))
        deadline = time.monotonic() + 120
        while step_of(ckpt.latest_checkpoint(out)) <= before:  # the run goes on saving beside the server
            assert train.poll() is None and time.monotonic() < deadline, train.stderr.read()
            time.sleep(0.2)
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGINT)
            served = serve.communicate(timeout=60)[0]
        train.kill()
        train.wait(timeout=60)
    assert serve.returncode == 0 and "Traceback" not in served, served
    assert not [p for p in out.iterdir() if p.name not in
                {".lock", "checkpoints", "config.json", "data.json", "metrics.jsonl", "model.safetensors",
                 "tokenizer.json", "train_config.json", "generation_config.json", "loss.png", "summary.json",
                 "samples.txt"} and not p.name.startswith(".")], sorted(p.name for p in out.iterdir())
    last = step_of(ckpt.latest_checkpoint(out))
    resumed = subprocess.run(glassformer_argv("train", "gpt", "--out", out, "--resume", "--max-steps", str(last + 1)),
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

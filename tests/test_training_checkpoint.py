"""Checkpoints: complete round trips, clean keys for wrapped models, and survival of kill -9 mid-save."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glassformer.models import GPT, GPTConfig
from glassformer.training import checkpoint as ckpt
from glassformer.training.config import TrainConfig
from glassformer.training.optim import build_optimizer


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name("gpt-tiny", dropout=0.1))


def one_step(model, optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (2, 8), generator=g)
    model(x, labels=x).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_round_trip_restores_weights_optimizer_and_every_rng(tmp_path):
    cfg = TrainConfig(device="cpu")
    model = tiny_gpt()
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    one_step(model, opt, 1)
    gen = torch.Generator().manual_seed(5)
    torch.randint(0, 10, (3,), generator=gen)  # move the data position away from the seed
    torch.manual_seed(11), np.random.seed(12), random.seed(13)
    path = ckpt.save_checkpoint(tmp_path, 7, model=model, optimizer=opt, data_generator=gen, state={"note": "x"})
    assert path.name == "step_000007" and (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000007"
    # what each stream would draw next, straight after the save
    expect = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))

    other = tiny_gpt(seed=99)
    other_opt = build_optimizer(other, cfg, torch.device("cpu"))
    other_gen = torch.Generator().manual_seed(0)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), model=other, optimizer=other_opt, data_generator=other_gen)
    assert state["step"] == 7 and state["note"] == "x"
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=other_gen))
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1])
    assert got[2] == expect[2] and torch.equal(got[3], expect[3])
    for (n, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), n
    # the restored optimiser continues exactly like the original
    for m, o in ((model, opt), (other, other_opt)):
        torch.manual_seed(3)  # the same dropout masks for both
        one_step(m, o, 2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model = tiny_gpt()
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, model=model, optimizer=opt, data_generator=None, state={}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000002", "step_000003"]


def test_compiled_and_wrapped_models_save_plain_keys(tmp_path):
    model = tiny_gpt()
    wrapped = torch.compile(torch.nn.DataParallel(model))  # lazily compiled: nothing runs here
    assert any(k.startswith("_orig_mod.module.") for k in wrapped.state_dict())
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    path = ckpt.save_checkpoint(tmp_path, 1, model=wrapped, optimizer=opt, data_generator=None, state={})
    keys = load_file(path / "model.safetensors").keys()
    assert keys and not any("_orig_mod." in k or k.startswith("module.") for k in keys)
    plain = GPT.from_pretrained(path)  # loads into an unwrapped model, strictly
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))


def test_a_broken_latest_pointer_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    model = tiny_gpt()
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    ckpt.save_checkpoint(tmp_path, 4, model=model, optimizer=opt, data_generator=None, state={})
    (tmp_path / "checkpoints" / "step_000009").mkdir()  # a directory without its files
    (tmp_path / "checkpoints" / "latest").write_text("step_000009\n")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000004"


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from glassformer.models import GPT, GPTConfig
    from glassformer.training import checkpoint as ckpt
    from glassformer.training.config import TrainConfig
    from glassformer.training.optim import build_optimizer

    run = sys.argv[1]
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny"))
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    ckpt.save_checkpoint(run, 1, model=model, optimizer=opt, data_generator=None, state={"tag": "first"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the second checkpoint differs from the first everywhere
    real = ckpt.capture_rng
    def stall(*args):  # reached after the weights and optimiser files of step 2 are written
        print("SAVING", flush=True)
        time.sleep(60)
        return real(*args)
    ckpt.capture_rng = stall
    ckpt.save_checkpoint(run, 2, model=model, optimizer=opt, data_generator=None, state={"tag": "second"})
""")


@pytest.mark.slow  # a real process
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(KILL_SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "SAVING"
        partial = list((run / "checkpoints").glob(".tmp-step_000002-*"))
        assert partial and (partial[0] / "model.safetensors").is_file()  # killed with step 2 half written
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "step_000001"
    model = GPT(GPTConfig.from_name("gpt-tiny"))
    state = ckpt.load_checkpoint(latest, model=model, optimizer=None, data_generator=None)
    assert state["tag"] == "first"
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), GPT(GPTConfig.from_name("gpt-tiny")).state_dict().values()))
    ckpt.clean_stale(run)  # the next run sweeps the half-written directory away
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000001"]
    assert json.loads((latest / "trainer_state.json").read_text())["step"] == 1

"""Bounded allocations (issue 15, item 4) and ``convert`` that touches only its own target (item 5):
configs and flags that would need more memory than exists end in one line, before anything is
allocated; shapes are checked against the safetensors header before a model is built."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli, tiny_flags
from glassformer import memory
from glassformer.errors import CheckpointError
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig


@pytest.mark.parametrize("model", [
    GPT(GPTConfig.from_name("gpt-tiny", n_layers=3)),
    BERT(BERTConfig.from_name("bert-tiny", n_layers=3, num_labels=2)),
    Transformer(TransformerConfig.from_name("transformer-tiny", n_layers=3, n_decoder_layers=2)),
], ids=["gpt", "bert", "transformer"])
def test_parameter_count_is_exact_without_building_the_model(model):
    assert memory.parameter_count(model.config) == model.num_parameters()
    assert memory.parameter_count(model.config.to_dict()) == model.num_parameters()


def test_a_huge_config_is_counted_in_no_time_and_refused(tmp_path):
    t = time.perf_counter()
    n = memory.parameter_count(GPTConfig(vocab_size=10**12, d_model=64, n_heads=4, n_layers=10**6, d_ff=128))
    assert n > 64 * 10**12 and time.perf_counter() - t < 10
    with pytest.raises(memory.MemoryLimitError, match="needs about .* available"):
        memory.check_model_fits(GPTConfig(vocab_size=10**12, d_model=64, n_heads=4, n_layers=2, d_ff=128))


def saved_gpt(directory: Path, **overrides) -> Path:
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("gpt-tiny")).save_pretrained(directory)
    if overrides:
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, **overrides}))
    return directory


def test_config_and_weights_are_checked_against_the_header_before_building(tmp_path):
    memory.check_weights_file(saved_gpt(tmp_path / "ok"))  # a model as saved passes
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"config.json: describes a model of [\d,]+ parameters but "
                                              r"model.safetensors holds"):
        memory.check_weights_file(saved_gpt(tmp_path / "huge", vocab_size=10**12))
    with pytest.raises(CheckpointError, match="config.json: describes a model"):
        memory.check_weights_file(saved_gpt(tmp_path / "deep", n_layers=10**6))
    assert time.perf_counter() - t < 15
    with pytest.raises(CheckpointError, match=r"weight 'tok_emb.weight' has shape \(64, 32\), but config.json "
                                              r"expects \(60, 32\)"):
        memory.check_weights_file(saved_gpt(tmp_path / "smaller", vocab_size=60))
    header = memory.safetensors_header(tmp_path / "ok" / "model.safetensors")
    assert header["tok_emb.weight"] == ("F32", (64, 32))


def test_flags_that_cannot_fit_are_one_line_before_anything_is_built(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    for extra, message in (
        (["--task-bert", "--eval-batches", str(10**9)], "--eval-batches 1000000000: needs about"),
        (["--n-layers", str(10**6)], "to train (weights, gradients, AdamW moments)"),
        (["--d-model", str(2**20), "--n-heads", "1"], "to train (weights, gradients, AdamW moments)"),
        (["--grad-accum", str(10**9)], "--grad-accum 1000000000: needs about"),
        (["--context", str(10**9)], "to train (weights, gradients, AdamW moments)"),
        (["--context", str(10**9), "--max-len", str(10**9), "--n-layers", "1", "--d-model", "2", "--n-heads", "1"],
         "to train"),
        (["--batch-size", str(10**9)], "--batch-size 1000000000 with --context 32: a training step needs about"),
    ):
        t = time.perf_counter()
        task = "bert" if "--task-bert" in extra else "gpt"  # masked-LM's validation batches are random draws
        extra = [e for e in extra if e != "--task-bert"]
        rc, err = run_cli(["train", task, *tiny_flags(corpus), *extra, "--out", str(out)], capsys)
        assert rc == 2 and err.count("\n") == 1 and message in err and "available" in err, err
        assert time.perf_counter() - t < 30 and not out.exists()
    assert "--batch-size" in err and "or less" in err  # says what would fit


def test_a_checkpoint_whose_config_was_inflated_is_refused_at_resume(corpus, tmp_path, capsys):
    from glassformer.cli import main
    from glassformer.training import checkpoint as ckpt

    out = tmp_path / "run"
    assert main(["train", "gpt", *tiny_flags(corpus), "--out", str(out), "--max-steps", "1", "--eval-every", "1"]) == 0
    config = ckpt.latest_checkpoint(out) / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "vocab_size": 10**12}))
    rc, err = run_cli(["train", "gpt", "--out", str(out), "--resume", "--max-steps", "2"], capsys)
    assert rc == 2 and err.count("\n") == 1 and str(config) in err and "parameters" in err, err


def test_estimates_grow_with_the_flags_that_drive_them():
    base = dict(d_model=64, n_layers=2, n_heads=4, vocab_size=1000)
    one = memory.training_bytes(10**6, batch_size=1, seq_len=128, **base)
    assert memory.training_bytes(10**6, batch_size=64, seq_len=128, **base) > 32 * (one - 16 * 10**6)
    g1 = memory.generation_bytes(10**6, sequences=1, total_len=100, d_model=64, n_layers=2, vocab_size=1000)
    g2 = memory.generation_bytes(10**6, sequences=10**6, total_len=100, d_model=64, n_layers=2, vocab_size=1000)
    assert g2 > 10**5 * (g1 - 4 * 10**6)
    assert memory.format_bytes(1.5e12) == "1.5 TB"


# ---------------------------------------------------------------------------------- convert


def test_convert_never_deletes_a_sibling_and_writes_with_umask_permissions(tmp_path, capsys):
    from glassformer.cli import main

    src = saved_gpt(tmp_path / "src")
    cv = tmp_path / "cv"
    (cv / ".target.old").mkdir(parents=True)
    (cv / ".target.old" / "keep.txt").write_text("not convert's")
    (cv / "target").mkdir()  # an empty destination is allowed
    old = os.umask(0o022)
    try:
        assert main(["convert", str(src), str(cv / "target"), "--to", "hf"]) == 0
        assert main(["convert", str(src), str(cv / "target"), "--to", "hf", "--overwrite"]) == 0
    finally:
        os.umask(old)
    assert (cv / ".target.old" / "keep.txt").read_text() == "not convert's"
    assert sorted(p.name for p in cv.iterdir()) == [".target.old", "target"]  # no temporary left behind
    for path in [cv / "target", *(cv / "target").iterdir()]:
        want = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_convert_refuses_a_hugging_face_config_far_larger_than_its_weights(tmp_path, capsys):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10**12, "n_embd": 64,
                                                 "n_layer": 2, "n_head": 4, "n_positions": 64}))
    save_file({"wte.weight": torch.zeros(100, 64)}, src / "model.safetensors")
    t = time.perf_counter()
    rc, err = run_cli(["convert", str(src), str(tmp_path / "dst")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "config.json" in err and "parameters" in err, err
    assert time.perf_counter() - t < 10 and not (tmp_path / "dst").exists()

"""``glassformer demo``: a short run end to end, for each family."""

from __future__ import annotations

import json

import pytest

from glassformer.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("family,steps", [("gpt", 12), ("seq2seq", 8), ("bert", 8)])
def test_demo_trains_reports_and_writes_its_files(family, steps, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / f"demo-{family}"
    assert main(["demo", family, "--max-steps", str(steps), "--out", str(out), "--progress", "none"]) == 0
    text = capsys.readouterr().out

    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "train_config.json"):
        assert (out / name).is_file(), name
    assert (out / "generation_config.json").is_file() == (family != "bert")
    for picture in ("loss.png", "attention.png"):
        data = (out / picture).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, picture
    assert (out / "checkpoints" / "latest").is_file()

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["train_loss"] for r in records]
    assert records[-1]["step"] == steps and records[-1]["val_loss"] is not None
    assert train[-1] < train[0]  # it learns

    # the four steps, checked against the model, then what to do next
    assert "the four steps of attention" in text and "Σ weights = 1.000000" in text
    assert "OK (tolerance 1e-05)" in text
    assert "next, try:" in text and str(out) in text
    if family == "gpt":
        assert "bits per character" in text and "samples (temperature" in text
    if family == "seq2seq":
        assert "translations of dates it never saw" in text
    if family == "bert":
        assert "fill-mask:" in text


def test_demo_refuses_a_chosen_out_that_holds_another_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(["demo", "--max-steps", "1", "--out", str(out), "--progress", "none"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'

"""``glassformer explain`` and ``glassformer attention`` on saved models of every family."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from glassformer.cli import main
from glassformer.explain.viewer import read_viewer_data
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.tokenizers import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

ALPHABET = "the quick brown fox jumps over a lazy dog 0123456789-/"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = CharTokenizer.train(ALPHABET)
    torch.manual_seed(0)
    made = {
        "gpt": GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id)),
        "bert": BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size)),
        "s2s": Transformer(TransformerConfig.from_name(
            "transformer-tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)),
    }
    for name, m in made.items():
        m.save_pretrained(root / name)
        tok.save(root / name)
    return root


def max_diff(out: str) -> float:
    return float(re.search(r"max \|z - model z\| = (\S+)", out).group(1))


@pytest.mark.parametrize("name,extra", [
    ("gpt", ["--layer", "1", "--head", "2", "--token", "4"]),
    ("bert", ["--head", "3"]),
    ("s2s", ["--kind", "encoder-self"]),
    ("s2s", ["--kind", "decoder-self", "--target", "a dog"]),
    ("s2s", ["--kind", "cross", "--layer", "1"]),
])
def test_explain_prints_the_four_steps_and_agrees_with_the_model(models, capsys, name, extra):
    assert main(["explain", str(models / name), "the lazy dog", *extra]) == 0
    out = capsys.readouterr().out
    for needle in ("1: q·kⱼ", "2: ÷√d_k", "3: softmax", "Σ weights = 1.000000", "model z =", "OK (tolerance 1e-05)"):
        assert needle in out
    assert max_diff(out) <= 1e-5
    if "decoder-self" in extra:  # query is the last target position: nothing after it to hide
        assert "masked" not in out
    if name == "gpt":  # token 4 of 12: the 7 later positions are hidden by the causal mask
        assert "the mask hid 7 of 12 positions" in out and out.count("masked") == 7


def test_explain_masks_with_and_without_a_model(models, capsys):
    assert main(["explain", "--masks"]) == 0
    out = capsys.readouterr().out
    assert "causal" in out and "padding" in out and "combined" in out
    assert main(["explain", str(models / "gpt"), "the dog", "a fox", "--masks", "--padding-side", "left"]) == 0
    out = capsys.readouterr().out
    assert "largest weight on a hidden key: 0.0e+00" in out and out.rstrip().endswith("OK")
    assert main(["explain", str(models / "bert"), "the dog", "--masks"]) == 0
    assert "encoder-self" in capsys.readouterr().out


@pytest.mark.parametrize("name,extra,file", [
    ("gpt", ["--layer", "0", "--head", "1"], "head.png"),
    ("gpt", ["--layer", "1"], "grid.png"),
    ("bert", [], "means.png"),
    ("s2s", ["--max-new-tokens", "6"], "align.png"),
    ("s2s", ["--kind", "encoder-self", "--layer", "0", "--max-new-tokens", "6"], "enc.png"),
])
def test_attention_png(models, tmp_path, capsys, name, extra, file):
    out = tmp_path / file
    assert main(["attention", str(models / name), "the lazy dog", "--out", str(out), *extra]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    pixels = imread(str(out))
    assert min(pixels.shape[:2]) > 150 and float(np.var(pixels[..., :3])) > 1e-3


def test_attention_html_for_seq2seq_has_every_kind_and_the_generation(models, tmp_path):
    out = tmp_path / "s2s.html"
    assert main(["attention", str(models / "s2s"), "the dog", "--out", str(out), "--max-new-tokens", "5",
                 "--temperature", "0.7", "--top-k", "4", "--seed", "1"]) == 0
    data = read_viewer_data(out)
    assert [v["kind"] for v in data["views"]] == ["encoder-self", "decoder-self", "cross"]
    steps = data["generation"]["steps"]
    assert 1 <= len(steps) <= 5 and data["generation"]["settings"]["top_k"] == 4
    for st in steps:
        assert sum(c[3] > 0 for c in st["candidates"]) <= 4
        assert any(c[1] == st["id"] for c in st["candidates"])


@pytest.mark.parametrize("argv,match", [
    (["explain", "{gpt}"], "MODEL and one"),
    (["explain", "{missing}", "text"], "no such model directory"),
    (["explain", "{gpt}", "text", "--layer", "7"], "--layer 7 is out of range"),
    (["explain", "{gpt}", "text", "--token", "40"], "--token 40 is out of range"),
    (["explain", "{gpt}", "text", "--kind", "cross"], "no cross attention"),
    (["explain", "{gpt}", "€uro"], "not in the character vocabulary"),
    (["explain", "{gpt}", ""], "gives no tokens"),
    (["explain", "{bert}", "the dog", "--target", "x"], "only for an encoder-decoder"),
    (["attention", "{gpt}", "the", "--out", "{tmp}/x.jpg"], "give a .png or .html"),
    (["attention", "{gpt}", "the", "--out", "{tmp}/x.png", "--head", "1"], "--head needs --layer"),
    (["attention", "{gpt}", "the", "--out", "{tmp}/x.html", "--top-p", "1.5"], "top_p must be in"),
    (["attention", "{gpt}", "the", "--out", "{tmp}/x.html", "--max-new-tokens", "-1"], "max-new-tokens"),
    (["attention", "{s2s}", "the", "--out", "{tmp}/x.png", "--layer", "0", "--head", "4"], "--head 4 is out of range"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(models, tmp_path, capsys, argv, match):
    argv = [a.format(gpt=models / "gpt", bert=models / "bert", s2s=models / "s2s", missing=tmp_path / "nope",
                     tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]) and "Traceback" not in captured.err
    assert list(tmp_path.iterdir()) == []


def test_options_may_come_anywhere_on_the_line(models, capsys):
    """argparse alone binds RUN and an empty text list at once, then calls the text unrecognised."""
    run = str(models / "gpt")
    outputs = []
    for argv in (
        ["explain", run, "--layer", "0", "--head", "1", "the lazy dog"],
        ["explain", "--layer", "0", run, "--head", "1", "the lazy dog", "--plain"],
        ["explain", run, "the lazy dog", "--layer", "0", "--head", "1"],
    ):
        assert main(argv) == 0, argv
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert "layer 0 · head 1" in outputs[0]
    assert main(["explain", "--masks", "--padding-side", "left", "a dog", "the lazy dog"]) == 0
    assert "padded on the left" in capsys.readouterr().out
    png = models / "anywhere.png"
    assert main(["attention", run, "--layer", "1", "--head", "0", "the lazy dog", "--out", str(png)]) == 0
    assert png.is_file()
    with pytest.raises(SystemExit) as e:  # an unknown option is still refused
        main(["explain", run, "--nope", "the lazy dog"])
    assert e.value.code == 2

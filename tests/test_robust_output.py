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

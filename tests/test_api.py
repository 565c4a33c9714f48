"""``glassformer.load(path)``: text in, text out from Python, the same path as the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import glassformer
from conftest import run_main
from glassformer.generation import GenerationConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_import_glassformer_is_light_and_load_is_there():
    code = "import sys, glassformer\nprint(sorted(m for m in ('torch', 'glassformer.models') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "[]"
    assert callable(glassformer.load) and glassformer.GenerationConfig is GenerationConfig


def test_generate_equals_the_cli_with_the_models_own_config(dirs, capsys, tmp_path):
    d = tmp_path / "gpt"
    shutil.copytree(dirs["gpt"], d)
    (d / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7, "temperature": 0.9, "seed": 5}))
    gpt = glassformer.load(d)
    assert gpt.generation_config == GenerationConfig(max_new_tokens=7, temperature=0.9, seed=5)
    assert gpt.model.config.model_type == "gpt" and gpt.tokenizer.vocab_size == dirs["tok"].vocab_size
    prompts = ["the cat", "a dog", ""]
    code, out, _ = run_main(capsys, "generate", d, *[a for p in prompts for a in ("--prompt", p)], "--json")
    assert code == 0
    assert gpt.generate(prompts) == [json.loads(line)["completion"] for line in out.splitlines()]
    assert gpt.generate("the cat") == json.loads(out.splitlines()[0])["completion"]  # seed + 0 either way
    code, out, _ = run_main(capsys, "generate", d, "--prompt", "a dog", "--beam", 2, "--max-new-tokens", 5, "--json")
    assert gpt.generate("a dog", num_beams=2, max_new_tokens=5) == json.loads(out)["completion"]  # beams drop sampling


def test_translate_equals_the_cli(dirs, capsys):
    s2s = glassformer.load(dirs["seq2seq"])
    code, out, _ = run_main(capsys, "translate", dirs["seq2seq"], "--prompt", "the cat", "--prompt", "a dog ran by",
                            "--max-new-tokens", 8)
    assert code == 0 and s2s.translate(["the cat", "a dog ran by"], max_new_tokens=8) == out.splitlines()
    assert s2s.translate("the cat", max_new_tokens=8) == out.splitlines()[0]


def test_bert_methods_equal_the_cli(dirs, capsys):
    bert = glassformer.load(dirs["bert"])
    texts = ["the cat", "a dog ran by"]
    code, out, _ = run_main(capsys, "classify", dirs["bert"], *[a for t in texts for a in ("--prompt", t)], "--json")
    assert code == 0
    cli = [json.loads(line) for line in out.splitlines()]
    assert bert.classify(texts) == [{"label": r["label"], "probabilities": r["probabilities"]} for r in cli]
    assert bert.classify("the cat") == bert.classify(texts)[0]
    code, out, _ = run_main(capsys, "embed", dirs["bert"], *[a for t in texts for a in ("--prompt", t)])
    assert code == 0
    vectors = bert.embed(texts)
    assert vectors.dtype == np.float32
    assert np.array_equal(vectors, np.array([json.loads(line)["embedding"] for line in out.splitlines()], np.float32))
    assert np.array_equal(bert.embed("a dog ran by"), vectors[1])
    masked = ["the <mask>at", "a <mask>og <mask>an"]
    code, out, _ = run_main(capsys, "fill-mask", dirs["bert"], *[a for t in masked for a in ("--prompt", t)],
                            "--top-k", 3, "--json")
    assert code == 0
    assert bert.fill_mask(masked, top_k=3) == [json.loads(line)["masks"] for line in out.splitlines()]
    assert bert.fill_mask("the <mask>at", top_k=3) == json.loads(out.splitlines()[0])["masks"]


def test_a_method_of_another_family_says_which_fit(dirs):
    with pytest.raises(ValueError, match=r"holds a bert model: use .fill_mask\(\), .classify\(\) or .embed\(\)"):
        glassformer.load(dirs["bert"]).generate("hi")
    with pytest.raises(ValueError, match="unknown generation setting 'beams'"):
        glassformer.load(dirs["gpt"]).generate("hi", beams=2)


def test_generate_decodes_on_a_prepared_copy_laid_out_for_its_rows(dirs):
    """One prompt decodes one row: W_1 (out > in) column-major; a batch of prompts or beams: rows.
    The layout is the decoding copy's; the pipeline's own model keeps its weights as they were."""
    gpt = glassformer.load(dirs["gpt"])
    w_1 = gpt.model.decoder.layers[0].ffn.w_1.weight
    before = (w_1.stride(), w_1.data_ptr())

    def decoding_w_1(rows):
        return gpt.decoder(rows).decoder.layers[0].ffn.w_1.weight

    one = gpt.generate("the cat", max_new_tokens=4)
    assert decoding_w_1(1).stride(0) == 1
    batch = gpt.generate(["the cat", "a dog"], max_new_tokens=4)
    assert decoding_w_1(2).is_contiguous() and batch[0] == one  # the layout changes the speed, not the text
    assert gpt.generate("the cat", max_new_tokens=4) == one
    gpt.generate("the cat", max_new_tokens=4, num_beams=2)
    assert decoding_w_1(2).is_contiguous()
    assert (w_1.stride(), w_1.data_ptr()) == before and w_1.is_contiguous()


def test_the_text_functions_never_change_the_callers_weights(dirs):
    """generate_texts / translate_texts decode on the model they are given, as it is: no re-layout
    behind the caller's back (strides and storage of every weight unchanged, one prompt or many)."""
    from glassformer.generation.text import generate_texts, translate_texts
    from glassformer.loading import load_model_and_tokenizer

    for family, run in (("gpt", generate_texts), ("seq2seq", translate_texts)):
        model, tok = load_model_and_tokenizer(dirs[family])
        before = {k: (v.stride(), v.data_ptr()) for k, v in model.state_dict().items()}
        for texts in (["the cat"], ["the cat", "a dog"]):
            run(model, tok, texts, GenerationConfig(max_new_tokens=3))
        assert {k: (v.stride(), v.data_ptr()) for k, v in model.state_dict().items()} == before, family

"""``glassformer generate | translate | fill-mask | classify | embed`` on tiny saved models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_TEXT, assert_refused, randomize, run_main
from glassformer.generation import generate_lists, generate_seq2seq_lists
from glassformer.models import BERT, GPT, Transformer
from glassformer.tokenizers import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ------------------------------------------------------------------------------ generate


def test_generate_prints_the_prompt_and_the_api_continuation(dirs, capsys):
    tok = dirs["tok"]
    model = GPT.from_pretrained(dirs["gpt"])
    new = generate_lists(model, [tok.encode("the cat")], max_new_tokens=12, eos_token_id=tok.eos_id)[0]
    want = "the cat" + tok.decode([t for t in new if t != tok.eos_id], skip_special_tokens=True)
    for stream in ("--stream", "--no-stream"):
        code, out, _ = run_main(capsys, "generate", dirs["gpt"], "--prompt", "the cat", "--max-new-tokens", 12, stream)
        assert code == 0 and out == want + "\n"


def test_stdin_prompts_run_as_a_batch_and_match_one_at_a_time(dirs, capsys, monkeypatch):
    prompts = ["hello", "the mat", "", "a dog ran"]
    code, out, _ = run_main(capsys, "generate", dirs["gpt"], "--max-new-tokens", 9, "--json", "--temperature", 0.8,
                            "--seed", 3, stdin="\n".join(prompts) + "\n", monkeypatch=monkeypatch)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == prompts  # the empty line starts from bos
    for i, p in enumerate(prompts):  # prompt i of a seeded batch is sampled with seed + i
        code, alone, _ = run_main(capsys, "generate", dirs["gpt"], "--prompt", p, "--max-new-tokens", 9, "--json",
                                  "--temperature", 0.8, "--seed", 3 + i)
        assert json.loads(alone)["completion"] == rows[i]["completion"]


def test_generation_config_supplies_defaults_and_flags_override(dirs, capsys, tmp_path):
    import shutil

    d = tmp_path / "gpt"
    shutil.copytree(dirs["gpt"], d)
    stored = {"max_new_tokens": 3, "eos_token_id": [], "transformers_version": "ignored"}
    (d / "generation_config.json").write_text(json.dumps(stored))
    _, out, _ = run_main(capsys, "generate", d, "--prompt", "hello", "--json")
    assert json.loads(out)["tokens"] == 3
    _, out, _ = run_main(capsys, "generate", d, "--prompt", "hello", "--json", "--max-new-tokens", 7)
    assert json.loads(out)["tokens"] == 7
    (d / "generation_config.json").write_text(json.dumps({"top_p": "high"}))
    assert_refused(capsys, "generate", d, "--prompt", "hello", match="generation_config.json: top_p")


def test_generate_bad_input_is_one_line_and_exit_2(dirs, capsys, tmp_path):
    g = dirs["gpt"]
    assert_refused(capsys, "generate", g, "--prompt", "hello Q", match="prompt 1: character 'Q'")
    assert_refused(capsys, "generate", g, "--prompt", "hi", "--max-new-tokens", 0, match="max_new_tokens")
    assert_refused(capsys, "generate", g, "--prompt", "hi", "--beam", 2, "--temperature", 1, match="beam search")
    assert_refused(capsys, "generate", g, "--prompt", "hi", "--temperature", -1, match="temperature")
    assert_refused(capsys, "generate", g, "--prompt", "hi", "--top-p", 0, match="top_p")
    assert_refused(capsys, "generate", dirs["bert"], "--prompt", "hi", match="generate needs a decoder-only model")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((g / name).read_bytes())
    assert_refused(capsys, "generate", bare, "--prompt", "hi", match="no tokenizer")


def test_generate_on_a_hugging_face_gpt2_matches_transformers(capsys, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = build_tokenizer("bpe", [TINY_TEXT] * 20, vocab_size=280)
    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                                     bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    hf = randomize(transformers.GPT2LMHeadModel(config))
    hf.save_pretrained(tmp_path)
    tok.save(tmp_path)
    ids = tok.encode("the cat", add_special_tokens=False)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(ids):]
    code, out, _ = run_main(capsys, "generate", tmp_path, "--prompt", "the cat", "--max-new-tokens", 10, "--json")
    assert code == 0 and json.loads(out)["completion"] == tok.decode(ref.tolist(), skip_special_tokens=True)


# ----------------------------------------------------------------------------- translate


def test_translate_matches_the_api_and_beam_runs(dirs, capsys, monkeypatch):
    tok = dirs["tok"]
    model = Transformer.from_pretrained(dirs["seq2seq"])
    sources = ["the cat", "a dog ran by"]
    code, out, _ = run_main(capsys, "translate", dirs["seq2seq"], "--max-new-tokens", 8, "--json",
                            stdin="\n".join(sources), monkeypatch=monkeypatch)
    assert code == 0
    for src, line in zip(sources, out.splitlines()):
        ids = generate_seq2seq_lists(model, torch.tensor([tok.encode(src)]), max_new_tokens=8)[0]
        want = tok.decode([t for t in ids if t != tok.eos_id], skip_special_tokens=True)
        assert json.loads(line) == {"source": src, "translation": want}
    code, out, _ = run_main(capsys, "translate", dirs["seq2seq"], "--prompt", "the cat", "--beam", 3, "--max-new-tokens", 8)
    assert code == 0 and out.count("\n") == 1
    assert_refused(capsys, "translate", dirs["seq2seq"], "--prompt", "a", "--beam", 2, "--temperature", 1,
                   match="beam search")
    assert_refused(capsys, "translate", dirs["gpt"], "--prompt", "a", match="translate needs an encoder-decoder")
    assert_refused(capsys, "translate", dirs["seq2seq"], "--prompt", "", match="source 1 is empty")


# --------------------------------------------------------------------- fill-mask, classify, embed


def test_fill_mask_lists_top_k_candidates_per_mask(dirs, capsys):
    code, out, _ = run_main(capsys, "fill-mask", dirs["bert"], "--prompt", "the <mask>at sat on the <mask>at", "--top-k", 4,
                            "--json")
    assert code == 0
    masks = json.loads(out)["masks"]
    assert len(masks) == 2 and all(len(m) == 4 for m in masks)
    for m in masks:
        probs = [c["p"] for c in m]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert_refused(capsys, "fill-mask", dirs["bert"], "--prompt", "no mask here", match="no <mask>")


def test_classify_reports_the_most_likely_label(dirs, capsys):
    code, out, _ = run_main(capsys, "classify", dirs["bert"], "--prompt", "the cat", "--prompt", "a dog", "--json")
    assert code == 0
    for line in out.splitlines():
        r = json.loads(line)
        probs = r["probabilities"]
        assert set(probs) == {"neg", "neutral", "pos"} and abs(sum(probs.values()) - 1) < 1e-4
        assert r["label"] == max(probs, key=probs.get)


def test_embed_writes_unit_vectors_as_npy_or_json(dirs, capsys, tmp_path):
    tok = dirs["tok"]
    texts = ["the cat", "a dog ran by", "the cat"]
    argv = ["embed", dirs["bert"]] + [a for t in texts for a in ("--prompt", t)]
    assert run_main(capsys, *argv, "--out", tmp_path / "v.npy")[0] == 0
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    model = BERT.from_pretrained(dirs["bert"]).eval()
    ids = torch.tensor([[tok.bos_id, *tok.encode("a dog ran by"), tok.eos_id]])
    assert np.allclose(vectors[1], model.embed(ids)[0].numpy(), atol=1e-5)  # padding in the batch changes nothing
    assert run_main(capsys, *argv, "--out", tmp_path / "v.json")[0] == 0
    stored = json.loads((tmp_path / "v.json").read_text())
    assert stored["texts"] == texts and np.allclose(stored["embeddings"], vectors, atol=1e-6)
    assert_refused(capsys, *argv, "--out", tmp_path / "v.txt", match=".npy or .json")
    assert not (tmp_path / "v.txt").exists()


def test_generate_on_a_run_directory_written_by_glassformer_train(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. héllo wörld\n" * 40, encoding="utf-8")
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", "gpt", "--data", corpus, "--n-layers", 1, "--d-model", 16, "--n-heads", 2,
                            "--d-ff", 32, "--context", 16, "--max-steps", 3, "--batch-size", 4, "--eval-every", 3,
                            "--sample-tokens", 0, "--out", run_dir, "--progress", "none")
    assert code == 0, err
    stored = json.loads((run_dir / "generation_config.json").read_text())
    code, out, err = run_main(capsys, "generate", run_dir, "--prompt", "the fox", "--prompt", "", "--json", "--seed", 0)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    vocab = set(corpus.read_text(encoding="utf-8"))
    for r in rows:  # sampled with the run's stored defaults; only characters of the corpus come out
        assert 0 < r["tokens"] <= stored.get("max_new_tokens", 64) and set(r["completion"]) <= vocab


def test_generation_config_reads_hugging_face_spellings(tmp_path):
    from glassformer.errors import CheckpointError
    from glassformer.generation.config import GenerationConfig, load_generation_config, read_generation_config

    assert read_generation_config(tmp_path) == {}  # the file is optional
    assert load_generation_config(tmp_path) == GenerationConfig()
    marian = {"num_beams": 4, "max_length": 512, "bad_words_ids": [[58100]], "pad_token_id": 58100,
              "eos_token_id": 0, "transformers_version": "4.x"}
    (tmp_path / "generation_config.json").write_text(json.dumps(marian))
    assert read_generation_config(tmp_path) == {"num_beams": 4, "max_new_tokens": 511, "suppress_tokens": [58100],
                                                "eos_token_id": 0, "pad_token_id": 58100}
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.7, "top_k": 5}))
    assert read_generation_config(tmp_path) == {"temperature": 0.0}  # transformers ignores top_k without do_sample
    (tmp_path / "generation_config.json").write_text(json.dumps({"beam": 3, "top_k": 0}))  # our old key; HF's "no top-k"
    assert load_generation_config(tmp_path) == GenerationConfig(num_beams=3)
    (tmp_path / "generation_config.json").write_text(json.dumps({"stop": "\n"}))
    with pytest.raises(CheckpointError, match="stop must be a list of strings"):
        read_generation_config(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": float("nan")}))
    with pytest.raises(CheckpointError, match="generation_config.json: temperature must be a finite number"):
        read_generation_config(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_generation_config(tmp_path)


def test_fill_mask_candidates_are_shown_as_text_with_whitespace_spelt_out():
    """A byte-level BPE newline is 'Ċ' inside the vocabulary; a reader should see \\n."""
    from glassformer.generation.text import visible_token

    assert visible_token("\n") == "\\n" and visible_token("\t") == "\\t" and visible_token(" ") == "␣"
    assert visible_token(" cat") == "cat" and visible_token("") == ""

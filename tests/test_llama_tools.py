"""Every tool on a Llama directory: the command line (heads, lens, generate, explain, attribute,
ablate) and the explorer's API, each checked against `transformers`' own numbers where there is
one; and generation never choosing an id the tokenizer cannot write.

The directory is a tiny random ``LlamaForCausalLM`` (grouped-query attention, Llama 3's rope
scaling, an untied head) saved with ``save_pretrained``, next to a byte-level BPE
``tokenizer.json`` whose vocabulary is the model's, built offline as in test_llama_interop.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY_TEXT, randomize, run_main
from glassformer.generation import GenerationConfig, generate_lists
from glassformer.generation.text import generate_texts, ids_beyond_tokenizer
from glassformer.models import GPT, GPTConfig
from glassformer.tokenizers import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TEXT = "Hello world! It's 2024"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(directory, the transformers model, its tokenizer): the model's vocabulary is the tokenizer's."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    from test_llama_interop import LLAMA3_SPLIT, byte_level_bpe
    from test_llama_interop import randomize as hf_randomize

    tok = byte_level_bpe(LLAMA3_SPLIT, [BOS, EOS], False, BOS)
    v = tok.get_vocab_size()
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=v, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=5000.0, tie_word_embeddings=False,
        bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS),
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}))
    hf = hf_randomize(hf, seed=0)
    d = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                         "bos_token": BOS, "eos_token": EOS}))
    return d, hf, tok


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]  # (T, V)


# ------------------------------------------------------------------------------ the command line


def test_heads_json_scores_every_head_of_the_llama(llama, capsys):
    d, hf, _ = llama
    code, out, err = run_main(capsys, "heads", d, "--json", "--n", "12", "--batch", "2")
    assert code == 0, err
    data = json.loads(out)
    assert data["attention"] == "decoder-self" and (data["n_layers"], data["n_heads"]) == (2, 4)
    assert [h["label"] for h in data["heads"]] == [f"decoder.{layer}.{h}" for layer in range(2) for h in range(4)]
    assert all(0.0 <= h[k] <= 1.0 for h in data["heads"] for k in ("previous_token", "induction", "duplicate_token"))


def test_lens_last_layer_is_the_transformers_prediction(llama, capsys):
    d, hf, tok = llama
    code, out, err = run_main(capsys, "lens", d, TEXT, "--json", "--k", "1")
    assert code == 0, err
    data = json.loads(out)
    ids = tok.encode(TEXT).ids  # the template adds <|begin_of_text|>
    assert data["tokens"][0] == BOS and len(data["tokens"]) == len(ids)
    assert data["layers"] == ["embed", "0", "1"] and data["max_error_last_layer"] <= 1e-4
    want = hf_logits(hf, ids).argmax(-1).tolist()
    assert [cell[0]["id"] for cell in data["top"][-1]] == want


def test_generate_continues_as_transformers_generate(llama, capsys):
    d, hf, tok = llama
    code, out, err = run_main(capsys, "generate", d, "--prompt", TEXT, "--max-new-tokens", "8", "--json")
    assert code == 0, err
    got = json.loads(out)
    prompt = tok.encode(TEXT).ids  # as transformers' tokenizer(TEXT) gives it: the template's <|begin_of_text|> first
    assert prompt[0] == tok.token_to_id(BOS)
    x = torch.tensor([prompt])
    with torch.no_grad():
        new = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                          pad_token_id=tok.token_to_id(EOS))[0, len(prompt):]
    eos = tok.token_to_id(EOS)
    new = new.tolist()[: new.tolist().index(eos)] if eos in new.tolist() else new.tolist()
    assert got["completion"] == tok.decode(new, skip_special_tokens=True) and got["completion"]


def test_explain_shows_the_rotation_and_checks_it(llama, capsys):
    d, hf, tok = llama
    code, out, err = run_main(capsys, "explain", d, TEXT, "--layer", "1", "--head", "3", "--token", "4", "--plain")
    assert code == 0, err
    steps, rot = out.split("where the rotation enters")
    assert "OK (tolerance" in steps
    assert "layer 1, head 3 (key/value head 1), query position 4: 16 of 16 dims rotate" in rot
    assert "q_rot·k_rot/√d" in rot and rot.rstrip().endswith("OK")
    rows = [line.split() for line in rot.splitlines() if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(len(tok.encode(TEXT).ids)))  # one row per key
    # the rotated scores are step 2's scores (the four steps run on the turned vectors)
    table = [line for line in steps.splitlines() if line[:3].strip().isdigit()]
    step2 = [float(line.split(" [")[-2].split()[-2]) for line in table[:5]]  # keys 0..4: the visible ones
    assert len(table) == len(rows) and "masked" in table[5]
    assert [float(r[-1]) for r in rows[:5]] == pytest.approx(step2, abs=2e-4)


def test_attribute_adds_up_through_rmsnorm(llama, capsys):
    d, hf, tok = llama
    code, out, err = run_main(capsys, "attribute", d, TEXT, "--json")
    assert code == 0, err
    a = json.loads(out)
    want = hf_logits(hf, tok.encode(TEXT).ids)[-1]
    assert a["token_id"] == int(want.argmax()) and a["logit"] == pytest.approx(float(want.max()), abs=1e-4)
    assert a["check_error"] <= 1e-4 and len(a["heads"]) == 2 and len(a["heads"][0]) == 4


def test_ablate_switches_a_gqa_head_off(llama, capsys):
    d, hf, tok = llama
    code, out, err = run_main(capsys, "ablate", d, TEXT, "--head", "1.2", "--head", "decoder.0.1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["heads"] == ["decoder.1.2", "decoder.0.1"] and r["kl_before_after"] > 0
    want = hf_logits(hf, tok.encode(TEXT).ids)[-1].softmax(-1)
    assert r["before"][0]["id"] == int(want.argmax()) and r["before"][0]["p"] == pytest.approx(float(want.max()), abs=1e-5)
    assert r["before"] != r["after"]


# ------------------------------------------------------------------------------ the explorer's API


@pytest.fixture(scope="module")
def api(llama):
    from starlette.testclient import TestClient

    from glassformer.serve.app import create_app
    from glassformer.serve.server import open_models

    models = open_models([llama[0]], warm=False)
    client = TestClient(create_app(models, "127.0.0.1"), base_url="http://127.0.0.1:8000")

    def post(path, **body):
        r = client.post("/api/" + path, json={"model": 0, "text": TEXT, **body})
        assert r.status_code == 200, r.text
        return r.json()

    return post


def test_serve_answers_attention_steps_lens_ablate_generate(llama, api):
    d, hf, tok = llama
    ids = tok.encode(TEXT).ids
    data = api("attention")
    assert [t["id"] for t in data["streams"]["tokens"]] == ids
    hf.set_attn_implementation("eager")  # the attention weights themselves (sdpa does not return them)
    try:
        with torch.no_grad():
            want = torch.stack(hf(torch.tensor([ids]), output_attentions=True).attentions)  # (L, 1, H, T, T)
    finally:
        hf.set_attn_implementation("sdpa")
    got = torch.tensor(data["views"][0]["weights"])  # (L, H, T, T)
    assert got.shape == (2, 4, len(ids), len(ids)) and (got - want[:, 0]).abs().max() <= 1e-4

    s = api("steps", head="1.3", query=len(ids) - 1)
    r = s["rotary"]
    assert s["ok"] and r["ok"] and r["kv_head"] == 1 and r["rotary_dim"] == 16
    assert r["scores"] == pytest.approx(s["scaled_scores"], rel=1e-5, abs=1e-5)  # step 2 reads the turned vectors
    assert r["scores_unrotated"] != pytest.approx(r["scores"], abs=1e-3)

    lens = api("lens", k=1)
    assert [c[0]["id"] for c in lens["top"][-1]] == hf_logits(hf, ids).argmax(-1).tolist()
    ab = api("ablate", heads=["1.2"], mode="mean", k=3)
    assert ab["kl"] > 0 and ab["heads"] == ["decoder.1.2"] and ab["before"][0]["id"] == int(hf_logits(hf, ids)[-1].argmax())

    gen = api("generate", steps=4)
    with torch.no_grad():
        x = torch.tensor([ids])  # its first id, <|begin_of_text|>, is 0: say it is no padding
        new = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False,
                          pad_token_id=0)[0, len(ids):].tolist()
    eos = tok.token_to_id(EOS)
    new = new[: new.index(eos) + 1] if eos in new else new  # the explorer shows the eos step too
    assert [st["id"] for st in gen["steps"]] == new


def test_a_model_without_rotation_sends_no_rotary_part(tmp_path):
    from glassformer.serve import handlers
    from glassformer.serve.server import open_models

    tok = build_tokenizer("char", TINY_TEXT)
    torch.manual_seed(0)
    randomize(GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size))).save_pretrained(tmp_path)
    tok.save(tmp_path)
    served = open_models([tmp_path], warm=False)[0]
    assert handlers.steps(served, "the cat", "1.0", 3)["rotary"] is None


# ------------------------------------------------------------------------------ ids beyond the tokenizer


def padded_vocab_model(tok, win: bool):
    """A rotary GPT with 2·C more vocabulary rows than ``tok`` has ids (as real checkpoints pad theirs).
    With ``win`` the extra rows are ±B·e_d with B > √C · max |w_j|, so one of them has the largest
    logit at every step: greedy decoding without a mask would always choose an id the tokenizer lacks."""
    torch.manual_seed(0)
    c = GPTConfig.from_name("llama-tiny")
    model = randomize(GPT(GPTConfig.from_name("llama-tiny", vocab_size=tok.vocab_size + 2 * c.d_model)))
    w = model.lm_head.weight  # (V, C)
    with torch.no_grad():
        if win:
            big = 2 * c.d_model**0.5 * float(w[: tok.vocab_size].norm(dim=-1).max())
            eye = torch.eye(c.d_model) * big
            w[tok.vocab_size :] = torch.cat([eye, -eye])  # (2C, C)
        else:
            w[tok.vocab_size :] = 0.0
    return model


def greedy_within(model, ids: list[int], n: int, v: int) -> list[int]:
    """Greedy decoding recomputed from scratch, the argmax taken over the first ``v`` logits."""
    ids, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids])).logits[0, -1, :v].argmax())
            ids.append(t)
            new.append(t)
    return new


def test_generation_never_chooses_an_id_the_tokenizer_lacks():
    tok = build_tokenizer("char", TINY_TEXT)
    model = padded_vocab_model(tok, win=True)
    assert list(ids_beyond_tokenizer(model, tok)) == list(range(tok.vocab_size, model.config.vocab_size))
    prompt = tok.encode("the cat", add_special_tokens=False)
    raw = generate_lists(model, [prompt], max_new_tokens=6, eos_token_id=[])[0]
    assert all(t >= tok.vocab_size for t in raw)  # without the mask: only ids the tokenizer cannot write
    config = GenerationConfig(max_new_tokens=6, eos_token_id=[])
    for beams in (1, 2):
        done = generate_texts(model, tok, ["the cat"], config.replace(num_beams=beams))[0]
        assert done.tokens == 6 and tok.encode(done.text, add_special_tokens=False)  # decodable text
    want = greedy_within(model, prompt, 6, tok.vocab_size)
    assert generate_texts(model, tok, ["the cat"], config)[0].text == tok.decode(want)
    sampled = generate_texts(model, tok, ["the cat", "a dog"], config.replace(temperature=1.5, seed=0))
    assert all(s.tokens == 6 for s in sampled)  # every sampled id decoded


def test_greedy_output_is_otherwise_unchanged():
    tok = build_tokenizer("char", TINY_TEXT)
    model = padded_vocab_model(tok, win=False)
    prompts = ["the cat", "a dog ran"]
    config = GenerationConfig(max_new_tokens=10, eos_token_id=[])
    raw = generate_lists(model, [tok.encode(p, add_special_tokens=False) for p in prompts], config)
    assert all(t < tok.vocab_size for row in raw for t in row)  # this model never wanted the extra ids
    assert [c.text for c in generate_texts(model, tok, prompts, config)] == [tok.decode(r) for r in raw]
    small = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tok.vocab_size))
    assert ids_beyond_tokenizer(small, tok) == range(tok.vocab_size, tok.vocab_size)  # nothing to mask

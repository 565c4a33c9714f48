"""Parity with `transformers` for the Llama family: Llama, Mistral and Qwen2 checkpoints.

Each checkpoint is built offline from a tiny random config with `transformers`, its parameters
redrawn at a large scale (so greedy choices are clear-cut and a swapped key shows), saved with
``save_pretrained`` (one file or sharded, fp32 or bf16) and read through the production loader.
Checked: logits (<= 1e-4 in fp32), greedy continuations against ``generate``, ``convert --to hf``
back into transformers, token ids of the families' tokenizer.json against ``AutoTokenizer``, and
that weights arrive one tensor at a time.
"""

from __future__ import annotations

import json
import logging
import weakref

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from conftest import NO_EOS  # noqa: E402
from glassformer import GPT  # noqa: E402
from glassformer.convert import convert  # noqa: E402
from glassformer.errors import CheckpointError  # noqa: E402
from glassformer.generation import generate_lists  # noqa: E402
from glassformer.interop import keymap, load_hf, load_hf_tokenizer  # noqa: E402
from glassformer.interop import llama as llama_interop  # noqa: E402
from glassformer.loading import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TOL = 1e-4
V = 96
SHAPE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=None)  # no early stop
FAMILIES = {
    # Llama 3 with its rope scaling and an untied head
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SHAPE, rope_theta=5000.0, tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    # Mistral: multi-query attention, tied head, a sliding window of 32 (< max_position_embeddings)
    "mistral": lambda: MistralForCausalLM(MistralConfig(**{**SHAPE, "num_key_value_heads": 1}, sliding_window=32,
                                                        tie_word_embeddings=True)),
    # Qwen2: biases on q, k, v; tied head
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SHAPE, rope_theta=1e6, tie_word_embeddings=True)),
}


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 2 else 0.5) + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def build(kind, seed=0):
    torch.manual_seed(seed)
    return randomize(FAMILIES[kind](), seed)


def prompt(n=12, seed=0):
    return torch.randint(3, V, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    kind = request.param
    hf = build(kind)
    d = tmp_path_factory.mktemp(kind)
    hf.save_pretrained(d)
    return kind, hf, d


# ------------------------------------------------------------------------------ parity


def test_logits_equal_transformers(family):
    kind, hf, d = family
    model = load_hf(d)
    assert isinstance(model, GPT) and model.config.positions == "rotary"
    x = torch.cat([prompt(20, 1), prompt(20, 2)])
    with torch.no_grad():
        want, got = hf(x).logits, model(x).logits
    assert (got - want).abs().max() <= TOL
    assert model.num_parameters() == hf.num_parameters()


def test_greedy_continuations_equal_generate(family):
    kind, hf, d = family
    model = load_model(d)
    for seed in (3, 4):
        x = prompt(8, seed)
        with torch.no_grad():
            want = hf.generate(x, max_new_tokens=10, do_sample=False, pad_token_id=0)[0, 8:].tolist()
        assert generate_lists(model, [x[0].tolist()], max_new_tokens=10, eos_token_id=NO_EOS)[0] == want


def test_convert_to_hf_round_trips_into_transformers(family, tmp_path):
    kind, hf, d = family
    ours, back = tmp_path / "ours", tmp_path / "back"
    convert(d, ours)
    convert(ours, back, to="hf")
    config = json.loads((back / "config.json").read_text())
    assert config["model_type"] == ("qwen2" if kind == "qwen2" else "llama")
    again = AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32).eval()
    x = prompt(16, 5)
    with torch.no_grad():
        assert (again(x).logits - hf(x).logits).abs().max() <= TOL


def test_sharded_bf16_checkpoint_loads_like_transformers_reads_it(tmp_path):
    hf = build("llama").to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    reference = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()  # bf16 values, fp32 sums
    model = load_hf(tmp_path)
    assert model.tok_emb.weight.dtype == torch.float32
    x = prompt(16, 6)
    with torch.no_grad():
        assert (model(x).logits - reference(x).logits).abs().max() <= TOL


def test_mistral_sliding_window_caps_max_len(tmp_path):
    hf = build("mistral")
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert model.config.max_len == 32  # the window: up to it, full attention is the same
    x = prompt(32, 7)
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() <= TOL


def test_unsupported_settings_are_refused_by_name(tmp_path):
    build("llama").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value, match in (("rope_parameters", {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}, "yarn"),
                              ("attention_bias", True, "attention_bias=True"),
                              ("hidden_act", "gelu", "hidden_act='gelu'"),
                              ("head_dim", 32, "head_dim=32")):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(CheckpointError, match=match):
            load_hf(tmp_path)


def test_a_wrong_shape_or_a_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    build("qwen2").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.bias"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing weight 'model.layers.1.self_attn.k_proj.bias'"):
        load_hf(tmp_path)
    state["model.layers.1.self_attn.k_proj.bias"] = torch.zeros(7)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="k_proj.bias' has shape \\(7,\\), the config implies \\(32,\\)"):
        load_hf(tmp_path)


def test_weights_arrive_one_tensor_at_a_time(tmp_path, monkeypatch):
    """The loader never holds the checkpoint whole: when a tensor is read, the bf16 tensors read
    before it are gone (cast into the model), but for the parts of one fused W^Q|W^K|W^V."""
    hf = build("llama").to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    alive: list[weakref.ref] = []
    most = [0]
    real = keymap.assign_one_by_one

    def watched(model, rules, tensors, *args, **kwargs):
        def stream():
            for key, t in tensors:
                most[0] = max(most[0], sum(r() is not None for r in alive))
                alive.append(weakref.ref(t))
                yield key, t
        return real(model, rules, stream(), *args, **kwargs)

    monkeypatch.setattr(keymap, "assign_one_by_one", watched)
    model = load_hf(tmp_path)
    assert len(alive) == len(hf.state_dict()) and 1 <= most[0] <= 3  # at most q and k waiting for v
    assert all(not p.is_meta for p in model.parameters())


# ---------------------------------------------------------------------------- tokenizers

CORPUS = ["Hello world! It's 2024 and we've 12345 tokens.", "Ünïcödé text, emojis 🙂 and\nnew lines\t\ttabs.",
          "def f(x):\n    return x ** 2  # code", "I'LL SEE YOU'RE there, they'd've said."] * 20
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level_bpe(split: str, specials: list[str], nfc: bool, bos: str | None) -> Tokenizer:
    """A small byte-level BPE with a family's pre-tokenizer regex, normalizer and specials."""
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


TOKENIZERS = {
    "llama3": (lambda: byte_level_bpe(LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>"], False, "<|begin_of_text|>"),
               {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|end_of_text|>"}),
    "qwen2": (lambda: byte_level_bpe(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], True, None),
              {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "bos_token": None, "errors": "replace"}),
}
TEXTS = ["Hello world!", "It's 2024: 1234567 tokens", "  leading spaces and\n\nnewlines  ", "Ünïcödé 🙂 e\u0301",
         "I'LL be there", "<|im_start|>user\nhi<|im_end|>", ""]


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_tokenizer_ids_equal_autotokenizer(kind, tmp_path):
    make, config = TOKENIZERS[kind]
    make().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, theirs = load_hf_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text, add_special_tokens=False)) == theirs.decode(theirs(text, add_special_tokens=False)["input_ids"])
    assert ours.encode("It's 2024") != ours.encode("It’s 2024")  # not a degenerate tokenizer


def test_a_llama_directory_with_its_tokenizer_loads_for_the_tools(tmp_path, caplog):
    build("llama").save_pretrained(tmp_path)
    TOKENIZERS["llama3"][0]().save(str(tmp_path / "tokenizer.json"))
    from glassformer.loading import load_model_and_tokenizer

    with caplog.at_level(logging.WARNING):
        model, tok = load_model_and_tokenizer(tmp_path)
    assert tok.encode("hi")[0] == tok.token_to_id("<|begin_of_text|>")
    assert isinstance(llama_interop.config_from_hf, object) and model.config.n_kv_heads == 2


@pytest.mark.slow
def test_memory_benchmark_sharded_load_stays_under_the_bound(tmp_path):
    """benchmarks/memory.py --sharded-load: the peak RSS over imports, per byte of weights, in fresh processes."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "load.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    proc = subprocess.run([sys.executable, str(script), "--sharded-load", "small", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    row = json.loads(out.read_text())["sharded_load"]
    assert row["shards"] > 3 and row["weights_bytes"] > 20 * 2**20
    assert 0.8 <= row["ratio"] <= row["bound"] == 1.3  # one copy of the weights (two would be ~2)

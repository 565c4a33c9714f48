"""A tokenizer.json's padding and truncation never change the ids of one text (issue 11).

The files in tests/data/ are tiny synthetic tokenizers (regenerate with
tests/data/make_tokenizers.py) that carry what real checkpoints carry: fixed padding and
truncation in tokenizer.json (all-MiniLM-L6-v2 pads every text to 128 ids), bos/eos templates,
add_prefix_space, added tokens, SentencePiece-style specials. Without the `transformers` package
the rules are still checked against what the files say; with it, ids equal AutoTokenizer's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from glassformer.interop.sentence_transformers import SentenceConfig, embed_ids, pool
from glassformer.tokenizers import HFTokenizer, load_tokenizer

DATA = Path(__file__).parent / "data"
FOLDERS = ["padded_wordpiece", "gpt2_template", "unigram_metaspace"]
TEXTS = [
    "The cat sat.", "a", " leading and trailing ", "Café naïve résumé", "日本語のテキスト", "emoji 😀👍",
    "the quick brown fox jumps over the lazy dog and the cat sat on the mat", "tabs\tand\nnewlines",
    "hello glassformer world", "x <|pad|> [PAD] <pad> y", "UPPER lower", "",
]
LONG = " ".join(["the quick brown fox"] * 20)


def raw(folder: str) -> dict:
    return json.loads((DATA / folder / "tokenizer.json").read_text(encoding="utf-8"))


def pad_token(folder: str) -> str:
    return raw(folder)["padding"]["pad_token"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_files_really_declare_padding(folder):
    """The fixtures keep the settings that caused the bug (else the tests below prove nothing)."""
    assert raw(folder)["padding"]["strategy"] == {"Fixed": raw(folder)["padding"]["strategy"]["Fixed"]}


@pytest.mark.parametrize("folder", FOLDERS)
def test_one_text_gives_only_its_own_tokens(folder):
    tok = load_tokenizer(DATA / folder)
    pad_id = tok.token_to_id(pad_token(folder))
    fixed = raw(folder)["padding"]["strategy"]["Fixed"]
    for text in ["The cat sat.", "a"]:
        ids = tok.encode(text)
        assert len(ids) < fixed and pad_id not in ids, (text, ids)
    for ids in tok.encode_batch(["The cat sat.", "a"]):  # a batch is not padded by the file either
        assert pad_id not in ids


def test_truncation_setting_of_the_file_is_ignored():
    tok = load_tokenizer(DATA / "padded_wordpiece")  # the file truncates at 12
    assert raw("padded_wordpiece")["truncation"]["max_length"] == 12
    ids = tok.encode("the quick brown fox jumps over the lazy dog and the cat sat on the mat")
    assert len(ids) > 12 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id


@pytest.mark.parametrize("folder", FOLDERS)
def test_ids_equal_autotokenizer(folder):
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    hf = transformers.AutoTokenizer.from_pretrained(DATA / folder)
    ours = load_tokenizer(DATA / folder)
    for text in TEXTS + [LONG]:
        assert ours.encode(text) == hf(text)["input_ids"], text
        assert ours.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"], text
    limit = hf.model_max_length
    assert ours.model_max_length == limit
    assert ours.encode_for_model(LONG) == hf(LONG, truncation=True, max_length=limit)["input_ids"]
    assert ours.encode_for_model(LONG, 9) == hf(LONG, truncation=True, max_length=9)["input_ids"]


def test_templates_added_tokens_and_prefix_space():
    """GPT-2 style: <|bos|> ... <|endoftext|> template, add_prefix_space, one id per added token."""
    tok = load_tokenizer(DATA / "gpt2_template")
    bos, eos = tok.token_to_id("<|bos|>"), tok.token_to_id("<|endoftext|>")
    ids = tok.encode("hello glassformer")
    assert ids[0] == bos and ids[-1] == eos
    assert tok.token_to_id("glassformer") in ids  # an added token is never split
    assert tok.encode("hello", add_special_tokens=False) == tok.encode(" hello", add_special_tokens=False)  # prefix space
    assert tok.token_to_id("<|pad|>") in tok.encode("x <|pad|> y")  # typed in the text, it is text
    uni = load_tokenizer(DATA / "unigram_metaspace")
    ids = uni.encode("hello world")
    assert ids[-1] == uni.token_to_id("</s>") and uni.pad_id not in ids
    assert uni.decode(ids, skip_special_tokens=True) == "hello world"


@pytest.mark.parametrize("config", [
    {"tokenizer_class": "GPT2Tokenizer"},  # transformers rebuilds the pre-tokenizer: no prefix space
    {"tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": True},
    {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False},  # the generic class keeps the file's
])
def test_prefix_space_follows_the_tokenizer_class(tmp_path, config):
    shutil.copy(DATA / "gpt2_template" / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    prefixed = config.get("add_prefix_space", False) or config["tokenizer_class"] == "PreTrainedTokenizerFast"
    same = tok.encode("hello", add_special_tokens=False) == tok.encode(" hello", add_special_tokens=False)
    assert same == prefixed
    try:
        import transformers
    except ImportError:
        return
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert tok.encode(text) == hf(text)["input_ids"], (config, text)


def test_long_text_is_cut_to_the_declared_maximum_with_one_warning(caplog):
    tok = load_tokenizer(DATA / "padded_wordpiece")  # tokenizer_config.json: model_max_length 24
    full = tok.encode(LONG)
    assert len(full) > 24
    with caplog.at_level(logging.WARNING):
        ids = tok.encode_for_model(LONG, what="text 3")
    assert len(ids) == 24 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == full[1:23]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "text 3" in lines[0] and f"last {len(full) - 24} were dropped" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert tok.encode_for_model("The cat sat.") == tok.encode("The cat sat.")
    assert not caplog.records


def test_sentence_config_limit_wins_over_model_max_length(tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((DATA / "padded_wordpiece" / name).read_bytes())
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 10}))
    tok = load_tokenizer(tmp_path)
    assert tok.model_max_length == 10 and len(tok.encode_for_model(LONG)) == 10


def test_save_keeps_the_file_settings_but_never_applies_them(tmp_path):
    tok = load_tokenizer(DATA / "padded_wordpiece")
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["padding"] == raw("padded_wordpiece")["padding"]
    assert saved["truncation"] == raw("padded_wordpiece")["truncation"]
    again = load_tokenizer(tmp_path)
    assert again.encode("a") == tok.encode("a") and len(again.encode("a")) == 3
    assert again.model_max_length == 24


def test_built_tokenizer_with_padding_enabled_is_not_padded():
    """Padding switched on in Python (not read from a file) is switched off too."""
    import tokenizers

    inner = tokenizers.Tokenizer.from_str((DATA / "padded_wordpiece" / "tokenizer.json").read_text())
    inner.enable_padding(length=40, pad_id=0, pad_token="[PAD]")
    assert len(HFTokenizer(inner).encode("a")) == 3


# ------------------------------------------------------------------------------ pooling


def test_pooling_modes_read_only_real_tokens():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = h.clone()
    noisy[0, 3:] = 1e4  # padding positions hold garbage: no mode may see it
    for mode in ("cls", "lasttoken", "max", "mean", "mean_sqrt_len_tokens", "weightedmean"):
        assert torch.allclose(pool(h, mask, (mode,)), pool(noisy, mask, (mode,))), mode
    assert torch.allclose(pool(h, mask, ("mean",))[0], h[0, :3].mean(0))
    assert torch.allclose(pool(h, mask, ("mean_sqrt_len_tokens",))[0], h[0, :3].sum(0) / 3**0.5)
    assert torch.allclose(pool(h, mask, ("max",))[0], h[0, :3].max(0).values)
    assert torch.allclose(pool(h, mask, ("cls",)), h[:, 0])
    assert torch.allclose(pool(h, mask, ("lasttoken",))[0], h[0, 2])
    w = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(pool(h, mask, ("weightedmean",))[0], (h[0, :3] * w[:, None]).sum(0) / w.sum())
    assert pool(h, mask, ("cls", "mean")).shape == (2, 8)


def test_embedding_is_the_same_batched_and_alone():
    from glassformer.models import BERT, BERTConfig

    torch.manual_seed(0)
    tok = load_tokenizer(DATA / "padded_wordpiece")
    model = BERT(BERTConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=32)).eval()
    rows = [tok.encode(t) for t in ["The cat sat.", "a", "the quick brown fox jumps over the lazy dog"]]
    assert len({len(r) for r in rows}) == 3 and all(tok.pad_id not in r for r in rows)  # glassformer pads, not the file
    config = SentenceConfig(pooling=("mean",), normalize=True)
    batched = embed_ids(model, rows, tok.pad_id, config, batch_size=3)
    alone = [embed_ids(model, [r], tok.pad_id, config)[0] for r in rows]
    for a, b in zip(batched, alone):
        assert float((a * b).sum()) > 0.99999

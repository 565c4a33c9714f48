"""Tokenizers: exact round trips, streaming without broken characters, save/load, HF parity."""

from __future__ import annotations

import json

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from glassformer.data import load_corpus
from glassformer.errors import DataError
from glassformer.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    StreamDecoder,
    build_tokenizer,
    load_tokenizer,
    train_bpe,
)

DOCS = load_corpus("python-docs")[:60_000]
WHITESPACE_HEAVY = st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "a", "é", "日", "😀", "\u00a0"])).map("".join)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([DOCS], vocab_size=400)


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.train(DOCS)


# ---------------------------------------------------------------------- char


def test_char_vocabulary_is_specials_then_sorted_characters(char):
    assert [char.id_to_token(i) for i in range(5)] == ["<pad>", "<bos>", "<eos>", "<unk>", "<mask>"]
    assert (char.pad_id, char.bos_id, char.eos_id, char.unk_id, char.mask_id) == (0, 1, 2, 3, 4)
    chars = [char.id_to_token(i) for i in range(5, char.vocab_size)]
    assert chars == sorted(set(DOCS))


@PROPERTY
@given(st.data())
def test_char_round_trip_within_vocabulary(char, data):
    alphabet = sorted(set(DOCS))
    s = data.draw(st.text(alphabet=st.sampled_from(alphabet)))
    ids = char.encode(s)
    assert len(ids) == len(s)
    assert char.decode(ids) == s
    assert not set(ids) & char.special_ids


def test_char_never_turns_text_into_a_special_token():
    tok = CharTokenizer.train("<pad> <mask>")
    ids = tok.encode("<pad>")
    assert len(ids) == 5 and not set(ids) & tok.special_ids


def test_char_unseen_character_names_it_and_its_position():
    tok = CharTokenizer.train("hello world\n")
    with pytest.raises(DataError, match=r"'Z' \(U\+005A\) at line 2, column 3 \(character offset 8\)"):
        tok.encode("hello\nhoZ")


def test_char_unk_mode_maps_unseen_characters_to_unk():
    tok = CharTokenizer.train("abc", unk=True)
    ids = tok.encode("abzc")
    assert ids[2] == tok.unk_id and tok.decode(ids) == "ab<unk>c"
    assert tok.decode(ids, skip_special_tokens=True) == "abc"


def test_char_decode_refuses_ids_outside_the_vocabulary(char):
    with pytest.raises(DataError, match=f"token id {char.vocab_size} at position 1"):
        char.decode([5, char.vocab_size])


def test_char_save_and_load_give_the_same_tokenizer(char, tmp_path):
    char.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["glassformer"]["kind"] == "char"
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.kind == "char"
    assert again.encode(DOCS[:2000]) == char.encode(DOCS[:2000])
    assert again.vocab_size == char.vocab_size and again.special_ids == char.special_ids
    assert load_tokenizer(tmp_path / "tokenizer.json").encode("abc") == char.encode("abc")


# ---------------------------------------------------------------------- byte-level BPE


@PROPERTY
@given(st.text())
def test_bpe_round_trip_arbitrary_unicode(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


@PROPERTY
@given(WHITESPACE_HEAVY)
def test_bpe_round_trip_whitespace_runs_and_leading_spaces(bpe, s):
    assert bpe.decode(bpe.encode(" " + s)) == " " + s
    assert bpe.decode(bpe.encode(s)) == s


def test_bpe_learns_merges_and_keeps_its_vocab_size(bpe):
    assert bpe.kind == "bpe" and bpe.vocab_size <= 400
    text = DOCS[:5000]
    assert len(bpe.encode(text)) < 0.6 * len(text.encode())  # merges shorten common English
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.unk_id, bpe.mask_id) == (0, 1, 2, 3, 4)


def test_bpe_vocab_too_small_is_refused():
    with pytest.raises(ValueError, match="at least 261"):
        train_bpe(["abc"], vocab_size=100)


def test_bpe_save_load_round_trip(bpe, tmp_path):
    bpe.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, HFTokenizer)
    assert again.encode(DOCS[:3000]) == bpe.encode(DOCS[:3000])
    assert again.mask_id == bpe.mask_id


def test_gpt2_style_endoftext_is_both_bos_and_eos():
    tok = train_bpe(["some text for training " * 20], vocab_size=300, specials=["<|endoftext|>"])
    eot = tok.token_to_id("<|endoftext|>")
    assert tok.bos_id == eot and tok.eos_id == eot and tok.pad_id is None and tok.mask_id is None
    assert eot in tok.special_ids


# ---------------------------------------------------------------------- streaming


def _stream(tok, ids):
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    return pieces, dec.flush()


@PROPERTY
@given(st.text())
def test_stream_concatenates_to_full_decode_without_replacement_chars(bpe, s):
    ids = bpe.encode(s)
    pieces, rest = _stream(bpe, ids)
    assert "".join(pieces) + rest == bpe.decode(ids)
    if "\ufffd" not in s:
        assert not any("\ufffd" in p for p in pieces + [rest])


@PROPERTY
@given(st.data())
def test_stream_char_tokenizer_is_exact(char, data):
    s = data.draw(st.text(alphabet=st.sampled_from(sorted(set(DOCS)))))
    pieces, rest = _stream(char, char.encode(s))
    assert pieces == list(s) and rest == ""


def test_stream_holds_back_a_character_split_across_tokens(bpe):
    ids = bpe.encode("😀")  # no merge joins these bytes in an English vocabulary
    assert len(ids) == 4
    pieces, rest = _stream(bpe, ids)
    assert pieces == ["", "", "", "😀"] and rest == ""
    # a stream that stops inside a character gives the replacement character only at the end
    pieces, rest = _stream(bpe, ids[:2])
    assert pieces == ["", ""] and rest == bpe.decode(ids[:2]) and rest.endswith("\ufffd")


def test_stream_of_generated_ids_with_specials_matches_decode(bpe):
    ids = bpe.encode("x = 1\n") + [bpe.eos_id] + bpe.encode("日本")
    pieces, rest = _stream(bpe, ids)
    assert "".join(pieces) + rest == bpe.decode(ids)
    dec = StreamDecoder(bpe, skip_special_tokens=True)
    assert "".join(dec.push(i) for i in ids) + dec.flush() == bpe.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------- Hugging Face files

WORDPIECE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s",
                   "##ed", "a", "##t", "c", "s", "m", "o", "n", "h", "e", ",", ".", "!", "##e", "##h"]


def _wordpiece_file(directory):
    tok = tokenizers.Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDPIECE_VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.decoder = decoders.WordPiece()
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


TEXTS = ["The cats sat on the mat.", "a cat, mats!", "zebra cat", "  THE  Cat\n\nsat  ", "日本 cat😀"]


def test_wordpiece_ids_match_transformers_fast_tokenizer(tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = _wordpiece_file(tmp_path)
    ours = load_tokenizer(tmp_path)
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert ours.kind == "wordpiece"
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"]
        ids = ours.encode(text)
        assert ours.decode(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False)
    for role, name in [("pad", "[PAD]"), ("bos", "[CLS]"), ("eos", "[SEP]"), ("unk", "[UNK]"), ("mask", "[MASK]")]:
        assert getattr(ours, f"{role}_id") == theirs.convert_tokens_to_ids(name)


def test_byte_level_bpe_ids_match_transformers_fast_tokenizer(bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    bpe.save(tmp_path)
    theirs = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in TEXTS + [DOCS[:2000]]:
        ids = bpe.encode(text)
        assert ids == theirs(text)["input_ids"]
        assert bpe.decode(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False) == text


def test_tokenizer_config_roles_override_name_discovery(tmp_path):
    _wordpiece_file(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "[MASK]"}}))
    tok = load_tokenizer(tmp_path)
    assert tok.pad_id == 4 and tok.bos_id == 2
    tok.save(tmp_path / "copy")
    assert load_tokenizer(tmp_path / "copy").pad_id == 4


# ---------------------------------------------------------------------- loading and building


def test_load_tokenizer_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer.json: not valid JSON \(.*line 1"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "Nonsense"}}')
    with pytest.raises(DataError, match="tokenizer.json: not a tokenizer.json"):
        load_tokenizer(tmp_path)


def test_build_tokenizer_kinds():
    text = DOCS[:20_000]
    char = build_tokenizer("char", text, None)
    assert char.kind == "char" and char.decode(char.encode(text)) == text
    bpe = build_tokenizer("bpe", [text[:10_000], text[10_000:]], 300)
    assert bpe.kind == "bpe" and bpe.vocab_size <= 300 and bpe.decode(bpe.encode(text)) == text
    with pytest.raises(DataError, match="exceed vocab_size=10"):
        build_tokenizer("char", text, 10)
    with pytest.raises(ValueError, match="unknown tokenizer kind 'word'"):
        build_tokenizer("word", text, None)
    with pytest.raises(DataError, match="empty"):
        build_tokenizer("bpe", [""], 300)


def test_a_prompt_keeps_the_templates_leading_tokens_and_never_a_closing_one(tmp_path):
    """A Llama-style template (``<s> $A``) starts every prompt with its bos, as transformers' tokenizer does;
    a BERT-style one (``[CLS] $A [SEP]``) keeps [CLS] but never the closing [SEP]; no template: plain ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from glassformer.interop import load_hf_tokenizer

    vocab = {"[CLS]": 0, "[SEP]": 1, "<s>": 2, "[UNK]": 3, "a": 4, "b": 5}
    for name, template, want in [("llama", "<s> $A", [2, 4, 5]), ("bert", "[CLS] $A [SEP]", [0, 4, 5]), ("none", None, [4, 5])]:
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        if template:
            specials = [(t, vocab[t]) for t in ("[CLS]", "[SEP]", "<s>") if t in template]
            tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
        d = tmp_path / name
        d.mkdir()
        tok.save(str(d / "tokenizer.json"))
        ours = load_hf_tokenizer(d)
        ours.own_template = True  # a model trained on the tokenizer's template (set by the loader for HF dirs)
        assert ours.encode_prompt("a b") == want, name

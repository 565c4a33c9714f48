"""Tokenizers read from Hugging Face directories give the ids `transformers` gives.

The tokenizer files are built offline: WordPiece and byte-level BPE vocabularies trained with
the `tokenizers` library and written by transformers' own tokenizer classes (so the directory
looks like a real checkpoint's), and for Marian two SentencePiece models trained on a few lines
plus a vocab.json. Texts cover Unicode normalisation, accents, CJK, emoji, odd whitespace and
special tokens typed into the text.
"""

from __future__ import annotations

import io
import json
import warnings

import pytest

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer, BertTokenizer, GPT2Tokenizer  # noqa: E402

from glassformer.errors import DataError  # noqa: E402
from glassformer.interop import load_hf_tokenizer  # noqa: E402
from glassformer.interop.marian_tokenizer import MarianTokenizer  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a test of the tokenizer!",
    "Café naïve résumé — “quotes” and ünïcödé",
    "日本語のテキストも少し",
    "tabs\tand   several    spaces",
] * 4
TEXTS = [
    "Hello World", "  leading and trailing  ", "Café  naïve\ttab\nnewline\r\n", "", " ", "日本語 xyz",
    "ＡＢＣ ﬁ full-width", "e\u0301 \u00a0 \u200b 😀", "UPPER lower MiXeD", "[CLS] a [MASK] b [SEP]",
    "<|endoftext|>hi<|endoftext|>", "a </s> b<pad>c <unk>", ">>fr<< The fox", "x>>fr<<y", "a\u3000b",
]


def assert_same(hf, ours, encode=None, hf_kwargs=None):
    encode = encode or ours.encode
    for text in TEXTS:
        want = hf(text, **(hf_kwargs or {}))["input_ids"]
        assert encode(text) == want, text
        for skip in (False, True):
            assert ours.decode(want, skip_special_tokens=skip) == hf.decode(want, skip_special_tokens=skip), (text, skip)


def model_config(path, model_type):
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))


@pytest.fixture(scope="module")
def wordpiece_vocab():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=90, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return tok.get_vocab()


@pytest.fixture(scope="module")
def bpe_files():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


@pytest.mark.parametrize("lower", [True, False])
def test_bert_wordpiece_ids_match(tmp_path, wordpiece_vocab, lower):
    BertTokenizer(vocab=dict(wordpiece_vocab), do_lower_case=lower).save_pretrained(tmp_path)
    model_config(tmp_path, "bert")
    ours = load_hf_tokenizer(tmp_path)
    assert ours.kind == "wordpiece" and ours.mask_id == wordpiece_vocab["[MASK]"]
    assert_same(AutoTokenizer.from_pretrained(tmp_path), ours)


@pytest.mark.parametrize("prefix_space", [False, True])
def test_gpt2_byte_level_bpe_ids_match(tmp_path, bpe_files, prefix_space):
    vocab, merges = bpe_files
    GPT2Tokenizer(vocab=dict(vocab), merges=list(merges), add_prefix_space=prefix_space).save_pretrained(tmp_path)
    model_config(tmp_path, "gpt2")
    ours = load_hf_tokenizer(tmp_path)
    assert ours.eos_id == vocab["<|endoftext|>"]
    assert_same(AutoTokenizer.from_pretrained(tmp_path), ours)


# ------------------------------------------------------------------------------ Marian


def train_spm(lines, path):
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=100, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(buf.getvalue())


def write_marian_tokenizer(d):
    """source.spm, target.spm and the shared vocab.json laid out as OPUS-MT does: </s>=0, <unk>=1, <pad> last."""
    d.mkdir(parents=True, exist_ok=True)
    train_spm(CORPUS, d / "source.spm")
    train_spm(["Der schnelle braune Fuchs springt über den faulen Hund.", "Hallo Welt, das ist ein Test!",
               "Straße Größe Äpfel Öl", "Zahlen 12345 und Symbole"] * 4, d / "target.spm")
    vocab = {"</s>": 0, "<unk>": 1}
    for name in ("source.spm", "target.spm"):
        sp = sentencepiece.SentencePieceProcessor(model_file=str(d / name))
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if piece not in vocab and piece not in ("<s>", "</s>", "<unk>"):
                vocab[piece] = len(vocab)
    vocab[">>fr<<"] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab, indent=2))
    (d / "tokenizer_config.json").write_text(json.dumps({"source_lang": "en", "target_lang": "de"}))
    model_config(d, "marian")
    return vocab


def hf_marian(d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        return AutoTokenizer.from_pretrained(d)


def test_marian_sentencepiece_ids_match(tmp_path):
    vocab = write_marian_tokenizer(tmp_path)
    hf, ours = hf_marian(tmp_path), load_hf_tokenizer(tmp_path)
    assert isinstance(ours, MarianTokenizer)
    assert (ours.eos_id, ours.unk_id, ours.pad_id, ours.vocab_size) == (0, 1, vocab["<pad>"], len(vocab))
    assert_same(hf, ours)  # source side
    for text in TEXTS:  # target side (labels for training)
        assert ours.encode_target(text) == hf(text_target=text)["input_ids"], text
    assert ours.encode(">>fr<< Hello")[0] == vocab[">>fr<<"]  # a language tag is one token
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    for limit in (7, 30):  # cut inside, </s> kept, as transformers' truncation does
        assert ours.encode_for_model(long, limit) == hf(long, truncation=True, max_length=limit)["input_ids"]
    assert ours.encode_for_model("Hello", 30) == hf("Hello")["input_ids"]


def test_marian_tokenizer_save_is_read_by_transformers(tmp_path):
    write_marian_tokenizer(tmp_path / "a")
    ours = load_hf_tokenizer(tmp_path / "a")
    ours.save(tmp_path / "b")
    model_config(tmp_path / "b", "marian")
    again, hf = load_hf_tokenizer(tmp_path / "b"), hf_marian(tmp_path / "b")
    for text in TEXTS:
        assert again.encode(text) == ours.encode(text) == hf(text)["input_ids"]


def test_marian_vocab_without_unk_is_refused(tmp_path):
    write_marian_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    del vocab["<unk>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(DataError, match=r"vocab.json: the unk token '<unk>' is not in the vocabulary"):
        load_hf_tokenizer(tmp_path)


def test_directory_without_tokenizer_gives_none(tmp_path):
    model_config(tmp_path, "gpt2")
    assert load_hf_tokenizer(tmp_path) is None

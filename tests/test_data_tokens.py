"""Token storage: encode once into a memmap, the cache key, the dtype, the split."""

from __future__ import annotations

import numpy as np
import pytest

from glassformer.data import encode_corpus, load_corpus, split_tokens, stdlib_files
from glassformer.data import tokens as tokens_module
from glassformer.errors import DataError
from glassformer.tokenizers import CharTokenizer, load_tokenizer, train_bpe

# a slice of real Python: indentation, blank lines, runs of spaces (where careless cuts change BPE ids)
CODE = "".join(p.read_text() for p in stdlib_files()[:30])[:40_000]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([CODE], vocab_size=400)


class Counting:
    """A tokenizer wrapper that counts how many texts it encodes."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_batch(self, texts, add_special_tokens=True):
        self.calls += len(texts)
        return self.inner.encode_batch(texts, add_special_tokens)


def test_ids_equal_encoding_the_whole_text_although_encoded_in_pieces(bpe, tmp_path, monkeypatch):
    monkeypatch.setattr(tokens_module, "PIECE_CHARS", 300)  # ~130 pieces, cut only where safe
    monkeypatch.setattr(tokens_module, "BATCH_PIECES", 7)
    counting = Counting(bpe)
    ids = encode_corpus(CODE, counting, cache_dir=tmp_path, progress=False)
    assert counting.calls > len(CODE) // 400
    assert ids.tolist() == bpe.encode(CODE, add_special_tokens=False)
    assert bpe.decode(ids.tolist()) == CODE
    char = CharTokenizer.train(CODE)
    assert encode_corpus(CODE, char, cache_dir=tmp_path, progress=False).tolist() == char.encode(CODE)
    # a line far longer than a piece is cut before a space instead, still exactly
    long_line = CODE[:3000] + " ".join(CODE[3000:9000].split()) + "\n" + CODE[9000:12000]
    ids = encode_corpus(long_line, bpe, cache_dir=tmp_path, progress=False)
    assert ids.tolist() == bpe.encode(long_line, add_special_tokens=False)
    # with no whitespace at all the cut is forced (memory stays bounded); the text still round-trips
    solid = "x" * 20_000 + "\n"
    assert bpe.decode(encode_corpus(solid, bpe, cache_dir=tmp_path, progress=False).tolist()) == solid


def test_second_call_reads_the_cache_without_encoding(bpe, tmp_path):
    (tmp_path / "corpus.txt").write_text(CODE)
    first = Counting(bpe)
    a = encode_corpus(str(tmp_path / "corpus.txt"), first, cache_dir=tmp_path / "cache", progress=False)
    second = Counting(bpe)
    b = encode_corpus(str(tmp_path / "corpus.txt"), second, cache_dir=tmp_path / "cache", progress=False)
    assert first.calls > 0 and second.calls == 0
    bpe.save(tmp_path / "run")  # a resumed run reloads its saved tokenizer: still a cache hit
    reloaded = Counting(load_tokenizer(tmp_path / "run"))
    encode_corpus(str(tmp_path / "corpus.txt"), reloaded, cache_dir=tmp_path / "cache", progress=False)
    assert reloaded.calls == 0
    assert isinstance(b, np.memmap) and not b.flags.writeable
    assert np.array_equal(a, b)
    # changed content or a changed tokenizer is a new key: encoded again
    (tmp_path / "corpus.txt").write_text(CODE + "x = 1\n")
    third = Counting(bpe)
    c = encode_corpus(str(tmp_path / "corpus.txt"), third, cache_dir=tmp_path / "cache", progress=False)
    assert third.calls > 0 and len(c) > len(a)
    other = Counting(train_bpe([CODE], vocab_size=300))
    encode_corpus(str(tmp_path / "corpus.txt"), other, cache_dir=tmp_path / "cache", progress=False)
    assert other.calls > 0
    assert len(list((tmp_path / "cache" / "tokens").glob("*.bin"))) == 3


def test_a_damaged_cache_file_is_rebuilt(bpe, tmp_path):
    a = np.array(encode_corpus(CODE, bpe, cache_dir=tmp_path, progress=False))  # a copy: the file is cut below
    (bin_path,) = (tmp_path / "tokens").glob("*.bin")
    bin_path.write_bytes(bin_path.read_bytes()[:100])  # e.g. a disk filled up mid-write by another tool
    counting = Counting(bpe)
    b = encode_corpus(CODE, counting, cache_dir=tmp_path, progress=False)
    assert counting.calls > 0 and np.array_equal(a, b)


def test_a_cache_corrupted_in_place_is_noticed_by_its_checksum_and_rebuilt(bpe, tmp_path, caplog):
    a = np.array(encode_corpus(CODE, bpe, cache_dir=tmp_path, progress=False))
    (bin_path,) = (tmp_path / "tokens").glob("*.bin")
    data = bytearray(bin_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one id changed: a length check alone would miss it
    bin_path.write_bytes(bytes(data))
    counting = Counting(bpe)
    caplog.set_level("WARNING")
    b = encode_corpus(CODE, counting, cache_dir=tmp_path, progress=False)
    assert counting.calls > 0 and np.array_equal(a, b)
    assert str(bin_path) in caplog.text and "checksum" in caplog.text
    # a cache written by a version without checksums is rebuilt too, never trusted
    meta = bin_path.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"format": 2', '"format": 1'))
    again = Counting(bpe)
    assert np.array_equal(encode_corpus(CODE, again, cache_dir=tmp_path, progress=False), a) and again.calls > 0


def test_cache_dir_comes_from_the_environment(bpe, tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "env-cache"))
    encode_corpus(CODE[:1000], bpe, progress=False)
    assert len(list((tmp_path / "env-cache" / "tokens").glob("*.bin"))) == 1


def test_progress_bar_on_a_terminal_does_not_change_the_result(bpe, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    ids = encode_corpus(CODE[:5000], bpe, cache_dir=tmp_path, progress=True)
    assert ids.tolist() == bpe.encode(CODE[:5000])


def test_uint16_when_the_vocabulary_fits_else_uint32(tmp_path):
    small = CharTokenizer.train("abc\n")
    assert encode_corpus("abc\ncab\n", small, cache_dir=tmp_path, progress=False).dtype == np.uint16
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    big = CharTokenizer(chars)
    assert big.vocab_size > 1 << 16
    text = "\n" * 0 + chars[-1] + chars[0] + "\n" + chars[-2]
    big = CharTokenizer(chars + ["\n"])
    ids = encode_corpus(text, big, cache_dir=tmp_path, progress=False, is_text=True)
    assert ids.dtype == np.uint32 and ids.tolist() == big.encode(text) and max(ids) > 1 << 16


def test_bad_sources(bpe, tmp_path):
    with pytest.raises(DataError, match="no-such-file.txt: no such file"):
        encode_corpus("no-such-file.txt", bpe, cache_dir=tmp_path, progress=False)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(DataError, match="blank.txt: the corpus is empty"):
        encode_corpus(str(tmp_path / "blank.txt"), bpe, cache_dir=tmp_path, progress=False)
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xc3(\n")
    with pytest.raises(DataError, match=r"bad.txt: byte offset 3 \(line 2\)"):
        encode_corpus(str(tmp_path / "bad.txt"), bpe, cache_dir=tmp_path, progress=False)
    ids = encode_corpus(str(tmp_path / "bad.txt"), bpe, cache_dir=tmp_path, progress=False, errors="replace")
    assert bpe.decode(ids.tolist()) == "ok\n\ufffd(\n"


def test_builtin_corpus_is_encoded_from_its_name(tmp_path):
    char = CharTokenizer.train(load_corpus("python-docs"))
    ids = encode_corpus("python-docs", char, cache_dir=tmp_path, progress=False)
    assert char.decode(ids.tolist()) == load_corpus("python-docs")


def test_split_takes_the_tail_deterministically():
    tokens = np.arange(1000, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000))
    assert np.shares_memory(train, tokens)  # views: a memmap is never copied
    train0, val0 = split_tokens(tokens, 0.0)
    assert len(train0) == 1000 and len(val0) == 0
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_tokens(tokens, 1.0)
    with pytest.raises(DataError, match="nothing left for training"):
        split_tokens(np.arange(1), 0.6)

"""Corpora: files, directories, globs, the built-in corpora, and every bad input by name."""

from __future__ import annotations

import pytest

from glassformer.data import iter_corpus_files, load_corpus, stdlib_files
from glassformer.data.corpus import iter_file_text, python_docs_topics, stdlib_dir
from glassformer.errors import DataError


def test_file_directory_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first")  # no final newline: one is added between documents
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third\n")
    (tmp_path / ".hidden").write_text("never read\n")
    assert load_corpus(str(tmp_path / "a.txt")) == "first\n"
    assert load_corpus(tmp_path) == "first\nsecond\nthird\n"  # sorted, recursive, hidden skipped
    assert load_corpus(str(tmp_path / "*.txt")) == "first\nsecond\n"
    assert load_corpus(str(tmp_path / "**" / "*.txt")) == "first\nsecond\nthird\n"
    assert [p.name for p in iter_corpus_files(tmp_path)] == ["a.txt", "b.txt", "c.txt"]


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"{missing}: no such file or directory"):
        load_corpus(str(missing))
    with pytest.raises(DataError, match="no files match"):
        load_corpus(str(tmp_path / "*.md"))


def test_empty_corpus_names_it(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    with pytest.raises(DataError, match="empty.txt: the corpus is empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(DataError, match=r"blank.txt: the corpus is empty \(only whitespace\)"):
        load_corpus(str(tmp_path / "blank.txt"))
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_corpus(tmp_path / "d")


def test_bytes_that_are_not_utf8_name_file_offset_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\ncafé au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: byte offset 14 \(line 2\) is not valid UTF-8 \(byte 0xe9\)"):
        load_corpus(str(path))
    assert load_corpus(str(path), errors="replace") == "first line\ncaf\ufffd au lait\n"
    with pytest.raises(ValueError, match="errors must be one of"):
        load_corpus(str(path), errors="ignore")


def test_block_reader_joins_characters_split_between_blocks_and_counts_offsets(tmp_path):
    text = "añ😀b\n" * 50 + "日本"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode() + b"\xff" + b"tail")
    bad_offset = len(text.encode())
    for block in (1, 2, 3, 5, 7, 64):
        with pytest.raises(DataError, match=f"byte offset {bad_offset} \\(line 51\\)"):
            "".join(iter_file_text(path, block_bytes=block))
        assert "".join(iter_file_text(path, "replace", block_bytes=block)) == text + "\ufffdtail"
    truncated = tmp_path / "cut.txt"
    truncated.write_bytes("ab😀".encode()[:-1])  # ends inside a character
    with pytest.raises(DataError, match="byte offset 2 "):
        "".join(iter_file_text(truncated, block_bytes=2))


def test_python_docs_is_the_help_topics_text():
    text = load_corpus("python-docs")
    topics = python_docs_topics()
    assert all(body in text for _, body in topics[:20])
    assert 200_000 < len(text.encode()) < 2_000_000  # "about 0.5 MB of English"
    assert "The \"assert\" statement" in text


def test_python_stdlib_excludes_tests_and_third_party_code():
    files = stdlib_files()
    root = stdlib_dir()
    parts = [p.relative_to(root).parts for p in files]
    assert all(p[-1].endswith(".py") for p in parts)
    assert not any(x in ("test", "tests", "idle_test", "site-packages") or x.startswith("test_") for p in parts for x in p)
    assert any(p == ("json", "__init__.py") for p in parts) and any(p == ("argparse.py",) for p in parts)
    assert files == sorted(files)
    size = sum(p.stat().st_size for p in files)
    assert 5e6 < size < 40e6  # "about 13 MB of code"

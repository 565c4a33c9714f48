"""Corpora: a text file, a directory, a glob, or a built-in corpus that ships with every CPython.

Built-in corpora (no download):

- ``python-docs``: the reference documentation that ``help()`` shows, from
  ``pydoc_data.topics`` (about 0.5 MB of English prose with short code examples);
- ``python-stdlib``: the standard library's own ``.py`` sources, tests excluded (about 12 MB
  of Python).

A corpus is a sequence of documents (files, or doc topics). Joined into one text, every
document is followed by a newline unless it already ends with one. Files are read in blocks, so
a corpus larger than memory can be streamed (see :func:`iter_corpus_text`).
"""

from __future__ import annotations

import functools
import glob
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from glassformer.errors import DataError

BUILTIN_CORPORA = ("python-docs", "python-stdlib")
ERRORS = ("strict", "replace")
BLOCK_BYTES = 1 << 22  # 4 MiB: how much of a file is read (and decoded) at a time

# directories of the standard library that hold tests, or code that is not the standard library
_NOT_STDLIB = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def is_builtin(spec: object) -> bool:
    return isinstance(spec, str) and spec in BUILTIN_CORPORA


def has_glob_magic(spec: str) -> bool:
    return any(c in spec for c in "*?[")


# ---------------------------------------------------------------------- built-in corpora


def python_docs_topics() -> list[tuple[str, str]]:
    """``(topic, text)`` of the ``help()`` reference topics, in topic-name order."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=1)
def _stdlib_files(root: Path) -> tuple[Path, ...]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune while walking: site-packages alone can be ten times the standard library
        dirnames[:] = sorted(d for d in dirnames if d not in _NOT_STDLIB and not d.startswith(("test_", "config-")))
        files += [Path(dirpath, f) for f in filenames if f.endswith(".py") and not f.startswith("test_")]
    return tuple(sorted(files))


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, tests and third-party packages excluded, sorted."""
    root = stdlib_dir()
    files = list(_stdlib_files(root))
    if not files:
        raise DataError(f"python-stdlib: no .py files under {root}; this Python ships without sources")
    return files


# ---------------------------------------------------------------------- files


def iter_corpus_files(spec: str | os.PathLike) -> list[Path]:
    """The files a corpus spec names: a file, a directory (every non-hidden file below it,
    recursively), a glob (``**`` recurses), or ``python-stdlib``. Sorted, so the order is stable."""
    if is_builtin(spec):
        if spec == "python-stdlib":
            return stdlib_files()
        raise DataError(f"{spec}: a built-in text corpus, not a set of files; read it with load_corpus")
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"{path}: the corpus is empty (a directory with no files)")
        return files
    if has_glob_magic(str(spec)):
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{spec}: no files match this pattern")
        return files
    raise DataError(f"{spec}: no such file or directory (and not a built-in corpus: {', '.join(BUILTIN_CORPORA)})")


def _incomplete_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` start a UTF-8 character that continues further on."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return 0  # ASCII: complete
        if b >= 0xC0:  # a lead byte: how long is its sequence?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return back if need > back else 0
    return 0  # only continuation bytes: let the decoder judge them


def iter_file_text(path: Path, errors: str = "strict", block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Decode ``path`` as UTF-8 block by block. A bad byte is a DataError naming the file, the
    byte offset and the line (unless ``errors="replace"``, which writes U+FFFD instead)."""
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    try:
        f = open(path, "rb")  # closed by the `with` below
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a text file") from None
    with f:
        offset, lines, carry = 0, 0, b""  # offset/lines: bytes and newlines before `carry`
        while True:
            block = f.read(block_bytes)
            data = carry + block
            keep = _incomplete_tail(data) if block else 0
            data, carry = (data[: len(data) - keep], data[len(data) - keep:]) if keep else (data, b"")
            try:
                text = data.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                line = lines + data.count(b"\n", 0, e.start) + 1
                raise DataError(
                    f"{path}: byte offset {offset + e.start} (line {line}) is not valid UTF-8 "
                    f"(byte 0x{data[e.start]:02x}); fix the file or read it with --errors replace"
                ) from None
            if text:
                yield text
            offset += len(data)
            lines += data.count(b"\n")
            if not block:
                return


# ---------------------------------------------------------------------- corpus text


def iter_documents(spec: str | os.PathLike, errors: str = "strict") -> Iterator[tuple[str, Iterator[str]]]:
    """``(name, text blocks)`` for each document of the corpus, in order."""
    if spec == "python-docs":
        for topic, text in python_docs_topics():
            yield f"python-docs:{topic}", iter([text])
        return
    for path in iter_corpus_files(spec):
        yield str(path), iter_file_text(path, errors)


def iter_corpus_text(spec: str | os.PathLike, errors: str = "strict") -> Iterator[str]:
    """The corpus as a stream of text blocks whose concatenation is :func:`load_corpus`."""
    for _name, blocks in iter_documents(spec, errors):
        last = ""
        for block in blocks:
            yield block
            last = block
        if last and not last.endswith("\n"):
            yield "\n"


def load_corpus(spec: str | os.PathLike, errors: str = "strict") -> str:
    """The whole corpus as one string.

    ``spec``: a text file, a directory, a glob, or a built-in name (``python-docs``,
    ``python-stdlib``). ``errors="replace"`` reads bytes that are not UTF-8 as U+FFFD instead of
    failing. A missing path, or a corpus with nothing but whitespace, is a DataError naming it.
    """
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    text = "".join(iter_corpus_text(spec, errors))
    if not text.strip():
        raise DataError(f"{spec}: the corpus is empty" + ("" if not text else " (only whitespace)"))
    return text

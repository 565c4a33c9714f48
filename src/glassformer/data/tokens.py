"""Token storage: a corpus encoded once into a memory-mapped array, cached on disk.

The cache key is a hash of the corpus text plus the tokenizer's ``tokenizer.json``, so a second
run on the same corpus and tokenizer opens the array at once, and any change to either encodes
again. The array is read through ``np.memmap``: the operating system pages in only the windows a
batch touches, so a corpus larger than memory works. Ids are ``uint16`` when the vocabulary fits
(halving the file), ``uint32`` otherwise.

Cache layout (``$GLASSFORMER_CACHE`` or ``~/.cache/glassformer``)::

    tokens/<key>.bin    the ids, raw little-endian, no header
    tokens/<key>.json   {"n_tokens": ..., "dtype": "uint16", "checksum": ..., "source": ..., "tokenizer": "bpe", ...}

Both files are written atomically with umask permissions. Opening the cache checks the length
and a BLAKE2 checksum of the ids; a cache that is stale, truncated or corrupted is rebuilt
(with a warning naming the file), never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from glassformer.data.corpus import BUILTIN_CORPORA, ERRORS, has_glob_magic, is_builtin, iter_corpus_text
from glassformer.errors import DataError
from glassformer.io import atomic_path, atomic_write_json, make_dirs, read_json, remove_stale_temps
from glassformer.tokenizers import Tokenizer

log = logging.getLogger(__name__)

CACHE_ENV = "GLASSFORMER_CACHE"
FORMAT = 2  # 2: the metadata carries a checksum of the ids
CHECK_BLOCK = 1 << 22  # bytes read at a time when checksumming the cache
PIECE_CHARS = 1 << 16  # encode in pieces of ~64K characters ...
BATCH_PIECES = 64  # ... handed to the tokenizer 64 at a time (it spreads a batch over the cores)


def default_cache_dir() -> Path:
    """``$GLASSFORMER_CACHE`` if set, else ``~/.cache/glassformer``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glassformer"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def looks_like_text(source: str) -> bool:
    """A string is corpus *text* rather than a spec when it is not a built-in name, not an existing
    path, and holds a line break or is long; a short single-line string is taken as a path (so a
    mistyped file name is an error, not a one-line corpus)."""
    if is_builtin(source) or (len(source) < 4096 and "\n" not in source and
                              (os.path.exists(source) or has_glob_magic(source))):
        return False
    return "\n" in source or len(source) >= 4096


# ---------------------------------------------------------------------- pieces that encode alike


# Where encoding two sides apart gives the same ids as encoding them together: just before
# whitespace that follows a non-space character. GPT-2's byte-level split pattern, WordPiece's
# pre-tokenizer and characters all break there anyway, and no match looks behind it.
_LINE_CUT = re.compile(r"(?<=\S)\n")  # preferred: the end of a line
_SPACE_CUT = re.compile(r"(?<=\S)\s")  # fallback for very long lines
MAX_PIECE_FACTOR = 16  # a piece grows to at most this many times PIECE_CHARS


def _pieces(blocks: Iterable[str], piece_chars: int | None = None) -> Iterator[str]:
    """Regroup a stream of text blocks into pieces of about ``piece_chars`` characters, cut only
    where safe (see ``_LINE_CUT``). Text with no whitespace for ``MAX_PIECE_FACTOR * piece_chars``
    characters is cut anyway, so memory stays bounded; only there can ids differ from one call."""
    piece_chars = piece_chars or PIECE_CHARS
    limit = MAX_PIECE_FACTOR * piece_chars
    buffer = ""
    for block in blocks:
        buffer += block
        start = 0
        while True:
            target = start + piece_chars
            m = _LINE_CUT.search(buffer, target, start + limit)
            if m is None:
                if len(buffer) - start <= limit:
                    break  # wait for more text
                m = _SPACE_CUT.search(buffer, target, start + limit)
            cut = m.start() if m is not None else start + limit
            yield buffer[start:cut]
            start = cut
        buffer = buffer[start:]
    if buffer:
        yield buffer


# ---------------------------------------------------------------------- encode + cache


def _progress_bar(total_chars: int, enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    """(advance, close) of a rich progress bar on stderr, or no-ops when disabled / not a TTY."""
    if not (enabled and sys.stderr.isatty()):
        return (lambda n: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("encoding corpus"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("encode", total=total_chars)
    bar.start()
    return (lambda n: bar.advance(task, n)), bar.stop


def encode_corpus(
    spec_or_text: str | os.PathLike,
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    errors: str = "strict",
    is_text: bool | None = None,
) -> np.memmap:
    """Token ids of a corpus as a read-only ``np.memmap`` (uint16 or uint32), encoded once.

    ``spec_or_text`` is a corpus spec (file, directory, glob, built-in name; see
    :func:`~glassformer.data.load_corpus`) or the text itself (see :func:`looks_like_text`;
    ``is_text`` forces either reading). Ids equal ``tokenizer.encode(text, add_special_tokens=False)``
    for char and byte-level BPE tokenizers: the text is encoded in pieces cut only where the
    tokenizers split anyway. The result is cached under ``cache_dir`` (default
    :func:`default_cache_dir`); a progress bar shows on a terminal while encoding.
    """
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    source = spec_or_text
    if isinstance(source, os.PathLike):
        source, text_mode = os.fspath(source), False
    else:
        text_mode = looks_like_text(source) if is_text is None else is_text
    name = "<text>" if text_mode else str(source)

    def blocks() -> Iterator[str]:
        return iter([source]) if text_mode else iter_corpus_text(source, errors)

    # pass 1: hash (and measure) the content; reading is far cheaper than encoding
    digest = hashlib.sha256(f"glassformer-tokens-v{FORMAT}\0{errors}\0".encode())
    digest.update(tokenizer.to_json().encode("utf-8"))
    digest.update(b"\0")
    total_chars, non_space = 0, False
    for block in blocks():
        digest.update(block.encode("utf-8", "surrogatepass"))
        total_chars += len(block)
        non_space = non_space or not block.isspace()
    if not non_space:
        raise DataError(f"{name}: the corpus is empty" + (" (only whitespace)" if total_chars else ""))
    key = digest.hexdigest()[:32]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    bin_path, meta_path = directory / "tokens" / f"{key}.bin", directory / "tokens" / f"{key}.json"

    cached = _open_cached(bin_path, meta_path)
    if cached is not None:
        log.info("%s: %d tokens from the cache (%s)", name, len(cached), bin_path)
        return cached

    # pass 2: encode piece by piece straight into a temporary file, then rename it into place
    dtype = token_dtype(tokenizer.vocab_size)
    make_dirs(bin_path.parent)
    remove_stale_temps(bin_path.parent)  # left by an encoder that was killed
    advance, close_bar = _progress_bar(total_chars, progress)
    t0, n_tokens = time.perf_counter(), 0
    checksum = hashlib.blake2b(digest_size=16)
    try:
        with atomic_path(bin_path) as tmp, open(tmp, "xb") as f:
            batch: list[str] = []

            def flush() -> None:
                nonlocal n_tokens
                for ids in tokenizer.encode_batch(batch, add_special_tokens=False):
                    data = np.asarray(ids, dtype=dtype).tobytes()
                    f.write(data)
                    checksum.update(data)
                    n_tokens += len(ids)
                advance(sum(len(p) for p in batch))
                batch.clear()

            for piece in _pieces(blocks()):
                batch.append(piece)
                if len(batch) == BATCH_PIECES:
                    flush()
            flush()
    finally:
        close_bar()
    meta = {"format": FORMAT, "n_tokens": n_tokens, "dtype": dtype.name, "checksum": checksum.hexdigest(),
            "source": name, "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "chars": total_chars}
    atomic_write_json(meta_path, meta, indent=1)
    elapsed = time.perf_counter() - t0
    log.info("%s: encoded %d characters into %d tokens in %.1f s (cached at %s)", name, total_chars,
             n_tokens, elapsed, bin_path)
    out = _open_cached(bin_path, meta_path)
    if out is None:
        raise DataError(f"{name}: encoding gave no tokens")
    return out


def file_checksum(path: Path) -> str:
    """BLAKE2 (16 bytes) of a file's contents, read in blocks."""
    checksum = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(CHECK_BLOCK):
            checksum.update(block)
    return checksum.hexdigest()


def _open_cached(bin_path: Path, meta_path: Path) -> np.memmap | None:
    """The cached array, or None when absent (then it is encoded) or stale, truncated or corrupted
    (then it is encoded again, with a warning naming the file)."""
    if not meta_path.exists() and not bin_path.exists():
        return None
    try:
        meta = read_json(meta_path, error=DataError)
        dtype = np.dtype(meta["dtype"])
        n = int(meta["n_tokens"])
        if meta.get("format") != FORMAT:
            problem = f"written by another version (format {meta.get('format')!r})"
        elif n <= 0:
            problem = "empty"
        elif not bin_path.is_file() or bin_path.stat().st_size != n * dtype.itemsize:
            size = bin_path.stat().st_size if bin_path.is_file() else 0
            problem = f"{size} bytes where {n} tokens need {n * dtype.itemsize}"
        elif file_checksum(bin_path) != meta.get("checksum"):
            problem = "its checksum does not match (the file is corrupted)"
        else:
            problem = None
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"unreadable ({e})"
    if problem:
        log.warning("%s: token cache %s; encoding the corpus again", bin_path, problem)
        return None
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,))


# ---------------------------------------------------------------------- train / validation split


def split_tokens(tokens, val_fraction: float):
    """``(train, val)``: the last ``val_fraction`` of the tokens is validation, the rest training.

    Deterministic (no shuffling), so the same corpus always gives the same split; both parts are
    views of ``tokens`` (no copy of a memory-mapped corpus).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(tokens)
    n_val = int(round(n * val_fraction))
    if n - n_val <= 0:
        raise DataError(f"the corpus has {n} tokens: nothing left for training after a {val_fraction} validation split")
    return tokens[: n - n_val], tokens[n - n_val:]


__all__ = ["BUILTIN_CORPORA", "CACHE_ENV", "default_cache_dir", "encode_corpus", "split_tokens", "token_dtype"]

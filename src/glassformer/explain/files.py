"""Where the explain tools write: every file appears whole or not at all, with the umask's
permissions, through :mod:`glassformer.io`; the parent directory is made first."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from glassformer import io


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`glassformer.io.atomic_path` after making the parent directory."""
    io.make_dirs(Path(path).parent)
    with io.atomic_path(path) as tmp:
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 ``text`` to ``path`` atomically, making the parent directory first."""
    io.make_dirs(Path(path).parent)
    return io.atomic_write_text(path, text)

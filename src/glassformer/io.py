"""The one way glassformer writes and reads its files (the base layer: imports only the stdlib).

* :func:`atomic_write` / :func:`atomic_path`: a file appears whole or not at all. The data goes to
  a uniquely named temporary file beside the target, is flushed and ``fsync``-ed, gets the
  permissions an ordinary ``open()`` would give (``0o666 & ~umask``: 0644 under umask 022;
  ``mkstemp`` alone gives 0600), and is renamed over the target; the directory is then synced
  so the rename itself survives a power cut.
* :func:`make_dirs`: directories honour the umask too (0755 under 022; ``mkdtemp`` gives 0700).
* :func:`read_json` / :func:`parse_json`: one error form that names the file: ``path: not valid
  JSON (...)``; a document nested too deeply to parse is refused the same way, not with a
  RecursionError.
* :func:`check_text` / :func:`decode_text`: text entering from outside (a command-line argument,
  stdin, the Python API) is valid Unicode; bytes that are not UTF-8 get one line naming the input
  and the byte offset, or U+FFFD under ``errors="replace"``.
* :func:`remove_stale_temps`: temporary files left by a process that was killed (``kill -9``)
  are removed at the next start.
* :data:`IGNORE_INDEX` and :func:`unwrap_model`: the label the loss skips and the plain model
  inside compile/DDP/FSDP wrappers, defined once.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from glassformer.errors import DataError, GlassformerError

IGNORE_INDEX = -100  # label value the cross-entropy skips (padding, unmasked MLM positions)

# ".{name}.tmp-{pid}-{random}": the pid lets remove_stale_temps tell a live writer from a dead one
_TMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def current_umask() -> int:
    """The process umask (read without changing it where the platform allows)."""
    try:  # Linux exposes it without the set-and-restore race
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions for a new file: what ``open(path, "w")`` would give (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p`` that honours the umask; returns the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(f"{path}: cannot be made a directory, {blocker} is a file") from None
    return path


def temp_name(path: str | os.PathLike) -> Path:
    """A unique temporary name beside ``path`` (same directory, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a full disk, a file-size limit, a quota


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a library that writes to a path
    (``safetensors.torch.save_file``, ``savefig``); on success it becomes ``path``, else it is removed.

    The parent directory must exist (create it with :func:`make_dirs` after validating input).
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer did not create its file")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            tmp.unlink()
        if isinstance(e, OSError) and e.errno == errno.ENOTDIR:
            raise NotADirectoryError(f"{path}: cannot be written, {path.parent} is not a directory") from None
        if isinstance(e, OSError) and e.errno in FULL:
            raise OSError(f"{path}: cannot be written ({e.strerror}); nothing was replaced") from None
        if type(e).__name__ == "SafetensorError" and "I/O error" in str(e):  # the Rust writer's disk errors
            raise OSError(f"{path}: cannot be written ({e}); nothing was replaced") from None
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, UTF-8 text, or a function that writes to the path it is given) to
    ``path`` atomically, with umask permissions. Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "xb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 ``text`` to ``path``, atomically."""
    return atomic_write(path, text)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` as JSON (UTF-8, keys in insertion order, trailing newline) to ``path``, atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_json(
    path: str | os.PathLike,
    *,
    expect: type | tuple[type, ...] = dict,
    error: type[GlassformerError] = GlassformerError,
) -> Any:
    """Parse the JSON file at ``path``; every failure is ``error("PATH: what is wrong")``.

    ``expect`` is the type the top-level value must have (an object by default).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    value = parse_json(text, str(path), error)
    if expect is not None and not isinstance(value, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        kind = {"dict": "a JSON object", "list": "a JSON array"}.get(names, names)
        raise error(f"{path}: must hold {kind}, found {type(value).__name__}")
    return value


def parse_json(text: str, where: str, error: type[GlassformerError] = GlassformerError, *, lines: bool = True) -> Any:
    """``json.loads(text)``; every failure is ``error("WHERE: not valid JSON (...)")``, a document
    nested too deeply for the parser included. ``lines=False``: ``where`` names the line already
    (a JSON Lines record), the message gives the column only."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        place = f"line {e.lineno}, column {e.colno}" if lines else f"column {e.colno}"
        raise error(f"{where}: not valid JSON ({e.msg} at {place})") from None
    except RecursionError:
        raise error(f"{where}: not usable JSON (nested too deeply to read)") from None


TEXT_ERRORS = ("strict", "replace")  # the choices of --errors


def _not_utf8(what: str, offset: int, byte: int | None) -> DataError:
    shown = f"byte 0x{byte:02x}" if byte is not None else "a byte"
    return DataError(f"{what}: not UTF-8 text ({shown} at byte offset {offset}); fix the input or pass "
                     f"--errors replace")


def decode_text(data: bytes, what: str, errors: str = "strict") -> str:
    """``data`` as UTF-8; bytes that are not UTF-8 raise :class:`DataError` naming ``what`` and the
    byte offset (``errors="strict"``) or become U+FFFD (``errors="replace"``)."""
    if errors not in TEXT_ERRORS:
        raise ValueError(f"errors must be one of {', '.join(TEXT_ERRORS)}, got {errors!r}")
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as e:
        raise _not_utf8(what, e.start, data[e.start]) from None


def check_text(text: object, what: str, errors: str = "strict") -> str:
    """``text`` if it is a ``str`` of valid Unicode, else one clear error naming ``what``.

    A command-line argument holding bytes that are not UTF-8 reaches Python as lone surrogates
    U+DC80..U+DCFF (``surrogateescape``): these are reported with their byte offset in the
    original argument, or replaced by U+FFFD with ``errors="replace"``. Any other lone surrogate
    (possible only from Python code) is a ValueError; a non-string is a TypeError.
    """
    if not isinstance(text, str):
        raise TypeError(f"{what}: expected text (str), got {type(text).__name__}")
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError as e:
        at = e.start
    bad = text[at]
    if "\udc80" <= bad <= "\udcff":  # an undecodable byte, escaped by the OS-argument decoding
        raw = text.encode("utf-8", "surrogateescape") if _only_escaped(text) else None
        if raw is not None:
            return decode_text(raw, what, errors)
    if errors == "replace":
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    raise ValueError(f"{what}: holds a lone surrogate U+{ord(bad):04X} at character {at}, which is not text "
                     f"(a str built from broken UTF-16?)")


def read_stdin_text(errors: str = "strict") -> str:
    """All of stdin as text: its bytes decoded as UTF-8 by :func:`decode_text` (a stream with no
    byte layer, such as a ``StringIO``, is checked by :func:`check_text`)."""
    import sys

    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        return check_text(sys.stdin.read(), "stdin", errors)
    return decode_text(buffer.read(), "stdin", errors)


def _only_escaped(text: str) -> bool:
    """Whether every surrogate in ``text`` is an escaped byte (U+DC80..U+DCFF)."""
    return all("\udc80" <= c <= "\udcff" for c in text if "\ud800" <= c <= "\udfff")


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files named by :func:`temp_name` in ``directory`` whose writer process is
    gone (killed before its rename). Only files matching that exact pattern are touched; symlinks
    are never followed. Returns what was removed."""
    removed: list[Path] = []
    directory = Path(directory)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue  # a writer that may still be running
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """The model in eval mode (no dropout) inside the block; its train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unwrap_model(model: Any) -> Any:
    """The plain model inside ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``)
    wrappers, however deeply nested. Saving the unwrapped model keeps ``_orig_mod.`` and
    ``module.`` out of checkpoint keys. (FSDP2 shards in place and needs no unwrapping.)"""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None) if type(model).__name__ in (
                "DistributedDataParallel", "DataParallel") else None
        if inner is None:
            return model
        model = inner

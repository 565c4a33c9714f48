"""What a run directory guarantees: one writer, nothing lost to ``--overwrite``, data a resume
notices has changed.

* :class:`RunLock`: an exclusive ``flock`` on ``RUN/.lock`` held for the whole run. The kernel
  drops it when the process ends, however it ends (kill -9 included), so a lock is never
  stale. The file holds the holder's PID, for the message a second run prints. It is opened
  without following links (a ``.lock`` that is a symlink is refused, never written through),
  and a lock whose run left nothing removes itself (and the directory, if it made it).
* :class:`Replaced`: ``--overwrite`` moves the previous run's files into ``RUN/.replaced-PID/``
  and deletes them only once the new run has saved its first checkpoint; a run that fails
  before that removes its own files and puts them back (a fresh run that fails leaves no trace). A run killed before that leaves them for the next start, which
  puts them back (no checkpoint yet) or deletes them (the new run got one).
* :func:`data_fingerprint` / :func:`check_data_unchanged`: every data file's absolute path,
  size, modification time and a SHA-256 of the whole file (of sampled blocks above
  :data:`WHOLE_HASH_LIMIT`, which the fingerprint and a log line say), written as ``RUN/data.json``; a
  ``--resume`` after a change stops with a line naming the file (or warns, with
  ``--allow-data-change``).
* :func:`absolute_spec` and :func:`check_out_outside_data`: paths stored absolute, so a run
  resumes from any working directory; an ``--out`` inside the data tree is refused (a resume
  would train on its own checkpoints).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from glassformer.errors import GlassformerError
from glassformer.io import atomic_write_json, make_dirs, pid_alive, read_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs are not locked there
    fcntl = None

log = logging.getLogger("glassformer.training")

LOCK_NAME = ".lock"
DATA_NAME = "data.json"
REPLACED_PREFIX = ".replaced-"
_REPLACED = re.compile(r"^\.replaced-(\d+)$")

# What a run writes at the root of --out; --overwrite moves exactly these aside, nothing else.
RUN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "metrics.jsonl",
             "train_config.json", DATA_NAME, "loss.png", "checkpoints", "attention", "attention.png",
             "summary.json")  # a demo's figures: they belong to the model beside them


class RunDirError(GlassformerError, ValueError):
    """The run directory cannot be used as asked (locked, inside the data, data changed)."""


# ------------------------------------------------------------------------------------ lock


class RunLock:
    """An exclusive lock on ``RUN/.lock`` for the life of this process (or until :meth:`release`)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.made_dir = self.made_file = False  # what acquire() created, so release() can tidy it

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirError` naming the PID that holds it.

        The lock file is opened with ``O_NOFOLLOW``: a ``.lock`` that is a symbolic link is
        refused rather than followed (the PID would be written into the file it points to).
        """
        if fcntl is None or self.fd is not None:
            return self
        self.made_dir = not self.path.parent.exists()
        make_dirs(self.path.parent)
        self.made_file = not os.path.lexists(self.path)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)  # 0o666 & ~umask, like open()
        except OSError as e:
            if e.errno == errno.ELOOP or self.path.is_symlink():
                raise RunDirError(f"{self.path}: is a symbolic link; a run's lock file must be a plain file (remove "
                                  f"the link, or choose another --out)") from None
            raise RunDirError(f"{self.path}: cannot open the run's lock file ({e.strerror})") from None
        if not _is_regular(fd):
            os.close(fd)
            raise RunDirError(f"{self.path}: is not a plain file; remove it, or choose another --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(f"{self.path.parent}: another glassformer process (PID {holder}) is writing it (a "
                              f"training run, or a convert); wait for it to finish or choose another "
                              f"directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        """Unlock. A lock file this lock created is removed when the directory holds no run files
        (a run that failed before writing any) or when ``remove`` (a convert, which leaves no lock
        behind), and so is the directory when this lock made it and it is empty. The file is
        removed while still locked, so no other process can hold a lock on a removed file."""
        if self.fd is None:
            return
        if self.made_file and self.path.parent.is_dir() and (remove or not _run_files_in(self.path.parent)):
            with contextlib.suppress(OSError):
                self.path.unlink()  # still locked: a process that opens it now gets a new file
            if self.made_dir:
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()  # only if empty
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None


def _is_regular(fd: int) -> bool:
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _run_files_in(run_dir: Path) -> list[str]:
    return [n for n in RUN_FILES if os.path.lexists(run_dir / n)]


# ------------------------------------------------------------------------------ --overwrite


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Replaced:
    """The previous run's files, moved aside by ``--overwrite`` until the new run has a checkpoint.

    ``fresh`` (not a ``--resume``): the new run's own files are removed if it fails before its
    first checkpoint, so a failed start leaves no trace (and the old run, if any, comes back).
    """

    def __init__(self, run_dir: str | os.PathLike, fresh: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.aside = self.run_dir / f"{REPLACED_PREFIX}{os.getpid()}"
        self.names: list[str] = []
        self.fresh = fresh
        self.committed = False  # the new run saved a checkpoint

    def move_aside(self) -> bool:
        """Move every run file present into ``.replaced-PID/``; True when there was any."""
        present = _run_files_in(self.run_dir)
        if not present:
            return False
        make_dirs(self.aside)
        for name in present:
            os.replace(self.run_dir / name, self.aside / name)
            self.names.append(name)
        log.info("--overwrite: the previous run in %s is kept in %s until the new run saves a checkpoint",
                 self.run_dir, self.aside.name)
        return True

    def discard(self) -> None:
        """The new run saved a checkpoint: delete the old run for good."""
        self.committed = True
        if self.names and self.aside.is_dir():
            shutil.rmtree(self.aside, ignore_errors=True)
        self.names = []

    def restore(self) -> None:
        """The new run failed before its first checkpoint: remove what it wrote (a fresh run) and
        put the old run back."""
        if self.committed:
            return
        if self.names:
            restore_dir(self.run_dir, self.aside)
        elif self.fresh:
            for name in _run_files_in(self.run_dir):
                _remove(self.run_dir / name)
        self.names = []


def restore_dir(run_dir: Path, aside: Path) -> None:
    """Put the run kept in ``aside`` back in ``run_dir``: every run file of the run that replaced it
    (which never saved a checkpoint) is removed first, so nothing of the two is mixed; then
    ``aside`` is removed."""
    for name in RUN_FILES:
        _remove(run_dir / name)
        if os.path.lexists(aside / name):
            os.replace(aside / name, run_dir / name)
    shutil.rmtree(aside, ignore_errors=True)


def recover_replaced(run_dir: str | os.PathLike, has_checkpoint: bool) -> None:
    """At start (under the lock): deal with ``.replaced-PID/`` left by a run that was killed.

    If the killed run saved a checkpoint, the old run was replaced for good and is deleted;
    otherwise the old run is put back, so an interrupted ``--overwrite`` loses nothing.
    """
    run_dir = Path(run_dir)
    for p in sorted(run_dir.iterdir()) if run_dir.is_dir() else ():
        m = _REPLACED.match(p.name)
        if not m or not p.is_dir() or p.is_symlink() or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if has_checkpoint:
            shutil.rmtree(p, ignore_errors=True)
        else:
            log.warning("%s: a run started with --overwrite was stopped before its first checkpoint; "
                        "putting the previous run back", run_dir)
            restore_dir(run_dir, p)


# ------------------------------------------------------------------------------------ paths


def is_path_spec(spec: str | None) -> bool:
    """True for a data/tokenizer/init value naming something on disk (not a built-in name)."""
    if not spec:
        return False
    return os.path.exists(spec) or glob.has_magic(spec)


def absolute_spec(spec: str | None) -> str | None:
    """An existing path (or a glob) made absolute and normalised; other values unchanged."""
    if not is_path_spec(spec):
        return spec
    if os.path.exists(spec):
        return str(Path(spec).expanduser().resolve())
    return os.path.abspath(os.path.expanduser(spec))


def same_spec(a: Any, b: Any) -> bool:
    """Two config values naming the same thing (``data/x.txt`` and ``/home/me/data/x.txt``)."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):
        return absolute_spec(a) == absolute_spec(b)
    return False


def data_root(spec: str | None) -> Path | None:
    """The directory a data spec reads below: the directory itself, or a glob's fixed prefix."""
    if not spec:
        return None
    if os.path.isdir(spec):
        return Path(spec).resolve()
    if glob.has_magic(spec):
        fixed = []
        for part in Path(spec).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        return Path(*fixed).resolve() if fixed else Path.cwd().resolve()
    return None


def check_out_outside_data(out: Path, spec: str | None) -> None:
    """Refuse an ``--out`` inside the data tree (it would become training data)."""
    root = data_root(spec)
    if root is None:
        return
    target = out.resolve()
    if target == root or root in target.parents:
        raise RunDirError(f"--out {out}: is inside the data directory {root}; the run's own files would be read as "
                          f"training data. Choose an --out outside it")


# ------------------------------------------------------------------------------ fingerprint

WHOLE_HASH_LIMIT = 64 << 20  # files up to this size are hashed whole (~0.1 s per 64 MB)
SAMPLE_BLOCK = 1 << 16  # bytes hashed at each sampled position of a larger file
SAMPLES = 16  # positions sampled through a large file (first and last block included)


def _sampled_digest(f, size: int) -> str:
    digest = hashlib.sha256()
    span = size - SAMPLE_BLOCK
    for i in range(SAMPLES):
        f.seek(span * i // (SAMPLES - 1))
        digest.update(f.read(SAMPLE_BLOCK))
    return digest.hexdigest()


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, mtime and a SHA-256 of the whole file; above :data:`WHOLE_HASH_LIMIT` bytes, of
    :data:`SAMPLES` sampled blocks only (``"hashed": "sampled"``, and a log line says so: an edit
    between the samples that keeps the size and the mtime goes unnoticed)."""
    st = path.stat()
    whole = st.st_size <= WHOLE_HASH_LIMIT
    with open(path, "rb") as f:
        if whole:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            sha = digest.hexdigest()
        else:
            sha = _sampled_digest(f, st.st_size)
            log.info("%s: %d bytes, larger than %d MB: its fingerprint hashes %d sampled blocks of %d KB, not the "
                     "whole file (a change elsewhere is noticed by its size or modification time)",
                     path, st.st_size, WHOLE_HASH_LIMIT >> 20, SAMPLES, SAMPLE_BLOCK >> 10)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha,
            "hashed": "whole" if whole else f"sampled ({SAMPLES} blocks of {SAMPLE_BLOCK} bytes)"}


def _legacy_sampled_sha256(path: str, size: int) -> str | None:
    """The hash a fingerprint from before whole-file hashing stored (``sampled_sha256``)."""
    try:
        with open(path, "rb") as f:
            if size <= SAMPLE_BLOCK * SAMPLES:
                return hashlib.sha256(f.read()).hexdigest()
            return _sampled_digest(f, size)
    except OSError:
        return None


def data_files(spec: str | None) -> list[Path]:
    """The files a data spec reads (empty for built-in and generated data)."""
    if not is_path_spec(spec):
        return []
    from glassformer.data.corpus import iter_corpus_files

    try:
        return [p.resolve() for p in iter_corpus_files(spec)]
    except GlassformerError:
        return []  # reported by the data loader with its own message


def data_fingerprint(spec: str | None) -> dict[str, Any]:
    return {"data": spec, "files": [file_fingerprint(p) for p in data_files(spec)]}


def write_data_fingerprint(run_dir: Path, fingerprint: dict[str, Any]) -> None:
    atomic_write_json(run_dir / DATA_NAME, fingerprint)


def _same_hash(new: dict[str, Any], old: dict[str, Any]) -> bool:
    if "sha256" in old:
        return new["sha256"] == old["sha256"]
    return _legacy_sampled_sha256(new["path"], new["size"]) == old.get("sampled_sha256")  # an older data.json


def _hashed_whole(old: dict[str, Any]) -> bool:
    if "hashed" in old:
        return old["hashed"] == "whole"
    return isinstance(old.get("size"), int) and old["size"] <= SAMPLE_BLOCK * SAMPLES


def check_data_unchanged(run_dir: Path, spec: str | None, allow_change: bool) -> dict[str, Any]:
    """Compare the data with the fingerprint the run saved; returns the current fingerprint.

    A change stops the resume with a line naming the file, unless ``allow_change``.
    """
    now = data_fingerprint(spec)
    path = run_dir / DATA_NAME
    if not path.is_file():
        return now  # a run from before fingerprints: nothing to compare
    saved = read_json(path, error=RunDirError)
    before = {f.get("path"): f for f in saved.get("files", []) if isinstance(f, dict)}
    after = {f["path"]: f for f in now["files"]}
    problem = None
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            problem = f"{name}: was part of the run's data and is gone"
        elif new["size"] != old.get("size") or not _same_hash(new, old):
            sizes = f"size {old.get('size')} -> {new['size']} bytes" if new["size"] != old.get("size") else \
                "same size, different contents"
            problem = f"{name}: changed since the run started ({sizes})"
        elif new["mtime_ns"] != old.get("mtime_ns") and not _hashed_whole(old):
            problem = f"{name}: was modified since the run started"  # a file hashed whole is judged by its hash
        if problem:
            break
    if problem is None:
        extra = sorted(set(after) - set(before))
        if extra:
            problem = f"{extra[0]}: is new in the run's data since the run started"
    if problem:
        if not allow_change:
            raise RunDirError(f"{problem}; --resume would continue on different data (and a different validation "
                              f"set). Pass --allow-data-change to accept that, or start a new run")
        log.warning("%s; continuing because of --allow-data-change", problem)
    return now

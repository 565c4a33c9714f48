"""Hugging Face directory <-> glassformer directory (``glassformer convert SRC DST [--to hf]``,
whose parser is :mod:`glassformer.cli.convert`).

Without ``--to``, SRC is a Hugging Face checkpoint (GPT-2, BERT or Marian) and DST becomes a
glassformer model directory (config.json + model.safetensors + the tokenizer files). With
``--to hf``, SRC is a glassformer model and DST a directory ``transformers`` can load.

Everything is read and checked before anything is written (a ``config.json`` whose model would
not fit in memory, or does not match its weights file, is refused before the model is built);
the output is assembled in a uniquely named temporary directory next to DST and renamed into
place at the end, so a failed conversion leaves no DST behind. Only what this command created
is ever removed: a sibling such as ``.DST.old/`` is never touched; the temporary directories of a
conversion that was killed (``.DST.partial-PID-RAND/``) are removed by the next one into DST.

DST is locked as a training run locks its directory (``DST/.lock``): a DST that a live
``glassformer train`` (or another convert) is writing is refused, and so is a DST that is SRC,
contains it or lies inside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
from pathlib import Path

from glassformer.errors import CheckpointError
from glassformer.io import atomic_write_text, make_dirs, read_json

log = logging.getLogger(__name__)

# tokenizer files carried over verbatim, whichever the direction
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MARIAN_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")


def convert(src: str | os.PathLike, dst: str | os.PathLike, to: str = "glassformer", overwrite: bool = False):
    """Convert ``src`` into ``dst``; returns ``(model, dst)``. Nothing is written on error."""
    from glassformer.loading import is_glassformer_dir
    from glassformer.training.rundir import RunLock

    src, dst = Path(src), Path(dst)
    if to not in ("glassformer", "hf"):
        raise ValueError(f"unknown format {to!r}; choose 'glassformer' or 'hf'")
    check_not_overlapping(src, dst)
    clean_stale_siblings(dst)  # before DST is judged: a killed conversion's swap is finished or undone
    if dst.exists() and not overwrite and not (dst.is_dir() and not any(dst.iterdir())):
        raise FileExistsError(f"{dst}: already exists; choose a new directory or pass --overwrite")
    if (dst.exists() or dst.is_symlink()) and not dst.is_dir():  # --overwrite replaces a directory, never a file
        raise FileExistsError(f"{dst}: exists and is not a directory; choose a directory")
    parent = next((p for p in dst.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotADirectoryError(f"{dst}: {parent} is a file, not a directory")
    lock = RunLock(dst)
    if dst.is_dir():  # a live training run (or convert) holds this lock: refused before anything is read
        lock.acquire()
    try:
        return _convert(src, dst, to, overwrite, is_glassformer_dir)
    finally:
        lock.release(remove=True)


def check_not_overlapping(src: Path, dst: Path) -> None:
    """Refuse a DST that is SRC, contains it (``--overwrite`` would delete the source) or is inside it."""
    s, d = src.resolve(), dst.resolve()
    if d == s:
        raise ValueError(f"{dst}: the destination is the source directory")
    if d in s.parents:
        raise ValueError(f"{dst}: the destination contains the source {src}; replacing it would delete the source. "
                         f"Choose a destination outside it")
    if s in d.parents:
        raise ValueError(f"{dst}: the destination is inside the source {src}; choose a destination outside it")


def _convert(src: Path, dst: Path, to: str, overwrite: bool, is_glassformer_dir):
    ours = is_glassformer_dir(src)  # also refuses a missing directory or config.json
    _check_memory(src, ours)
    if to == "glassformer":
        if ours:
            raise CheckpointError(f"{src}: already a glassformer model; use --to hf to write a Hugging Face directory")
        model, tokenizer, write = _from_hf(src)
    else:
        if not ours:
            raise CheckpointError(f"{src}: not a glassformer model directory (is it already in the Hugging Face layout?)")
        model, tokenizer, write = _to_hf(src)
    _write_atomically(dst, write, overwrite)
    return model, dst


def _from_hf(src: Path):
    from glassformer.interop import load_hf, load_hf_tokenizer
    from glassformer.interop.marian_tokenizer import MarianTokenizer

    model = load_hf(src)
    tokenizer = load_hf_tokenizer(src)  # loading it checks the files before we copy them
    if tokenizer is None:
        log.warning("%s: no tokenizer found; the converted model will need one for text input", src)
    names = MARIAN_FILES if isinstance(tokenizer, MarianTokenizer) else TOKENIZER_FILES if tokenizer else ()

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        _copy(src, tmp, names)

    return model, tokenizer, write


def _to_hf(src: Path):
    from glassformer.interop import export_hf, load_hf_tokenizer, write_hf
    from glassformer.interop.marian_tokenizer import MarianTokenizer
    from glassformer.loading import load_model
    from glassformer.tokenizers import HFTokenizer

    model = load_model(src)
    tokenizer = load_hf_tokenizer(src)
    exported = export_hf(model)  # refuses a model with no Hugging Face counterpart before anything is written
    extra: dict[str, str] = {}
    if isinstance(tokenizer, MarianTokenizer):
        names = MARIAN_FILES
    elif isinstance(tokenizer, HFTokenizer):
        names = TOKENIZER_FILES
        extra = _hf_tokenizer_config(src, tokenizer)
    else:
        names = ()
        if tokenizer is not None:
            log.warning("%s: the %s tokenizer has no transformers equivalent; DST gets the model only", src, tokenizer.kind)

    def write(tmp: Path) -> None:
        write_hf(tmp, *exported)
        _copy(src, tmp, names)
        for name, text in extra.items():
            atomic_write_text(tmp / name, text)

    return model, tokenizer, write


def _hf_tokenizer_config(src: Path, tokenizer) -> dict[str, str]:
    """A tokenizer_config.json that makes transformers use tokenizer.json exactly as written.

    A config that already names its class (one that came from transformers) is kept as it is.
    Otherwise transformers would pick the class from config.json's model_type and rebuild the
    pipeline from that class's defaults (e.g. lower-casing for BERT), changing the ids.
    """
    path = src / "tokenizer_config.json"
    config = read_json(path, expect=None, error=CheckpointError) if path.is_file() else {}
    if isinstance(config, dict) and "tokenizer_class" in config:
        return {}
    config = dict(config) if isinstance(config, dict) else {}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for role, token in tokenizer.special_tokens.items():
        config.setdefault(f"{role}_token", token)
    import json

    return {"tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n"}


def _check_memory(src: Path, ours: bool) -> None:
    """Refuse a model whose config does not match its weights file or cannot fit in memory, from
    the safetensors header and the config alone (see :mod:`glassformer.memory`)."""
    from glassformer.memory import check_hf_weights, check_weights_file

    if ours:
        if (src / "model.safetensors").is_file():
            check_weights_file(src)
    else:
        check_hf_weights(src)


def _copy(src: Path, dst: Path, names) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)  # a new file: mode 0o666 & ~umask, not the source's


def _sibling_pattern(dst: Path, tag: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(dst.name)}\.{tag}-(\d+)-[0-9a-f]{{8}}$")


def clean_stale_siblings(dst: Path) -> None:
    """Tidy what a conversion into ``dst`` that was killed left: its ``.DST.partial-PID-RAND/``
    output is removed; a ``.DST.old-PID-RAND/`` (the previous DST, swapped out) is put back if DST
    is missing (the swap did not finish), else removed (it did). Only names with a dead PID are
    touched, and links are never followed."""
    from glassformer.io import pid_alive

    try:
        entries = list(os.scandir(dst.parent))
    except OSError:
        return
    for tag in ("partial", "old"):
        pattern = _sibling_pattern(dst, tag)
        for entry in entries:
            m = pattern.match(entry.name)
            if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
                continue
            path = Path(entry.path)
            if tag == "old" and not os.path.lexists(dst):
                log.warning("%s: a conversion was stopped while replacing it; putting the previous %s back", dst, dst.name)
                os.replace(path, dst)
                continue
            log.info("%s: removing what a stopped conversion left (%s)", dst.parent, entry.name)
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _unique_sibling(dst: Path, tag: str) -> Path:
    """A name beside ``dst`` that nothing else uses: ``.DST.TAG-PID-RANDOM``."""
    while True:
        path = dst.with_name(f".{dst.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")
        if not path.exists() and not path.is_symlink():
            return path


def _write_atomically(dst: Path, write, overwrite: bool) -> None:
    """Run ``write(tmp)`` in a fresh directory beside ``dst``, then rename it to ``dst``.

    Both temporary names (the new output, and the old ``dst`` while it is swapped out) are
    unique to this process; only they are ever removed. If the swap fails, the old ``dst`` is put
    back.
    """
    make_dirs(dst.parent)
    tmp = _unique_sibling(dst, "partial")
    tmp.mkdir()  # mode 0o777 & ~umask, like any mkdir
    old: Path | None = None
    try:
        write(tmp)
        if dst.exists() and (overwrite or (dst.is_dir() and not [p for p in dst.iterdir() if p.name != ".lock"])):
            old = _unique_sibling(dst, "old")
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            old = None
        else:
            try:
                os.replace(tmp, dst)
            except OSError as e:  # another process made DST between our check and this rename
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise FileExistsError(f"{dst}: was written by another process meanwhile; choose a new directory "
                                      f"or pass --overwrite") from None
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not dst.exists():
            os.replace(old, dst)  # the swap did not finish: the previous output comes back
        raise

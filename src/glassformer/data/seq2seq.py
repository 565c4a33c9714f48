"""Sequence-to-sequence pairs (the encoder-decoder Transformer): files and built-in tasks.

A pair ``(source, target)`` becomes::

    src_ids = source                      src_mask = 1 on real tokens
    tgt_ids = bos + target                tgt_mask = 1 on real tokens
    labels  = target + eos                (-100 on padding)

so ``labels[:, t]`` is what the decoder must emit after reading ``tgt_ids[:, :t+1]`` (teacher
forcing). Batches gather pairs of similar length (:class:`~glassformer.data.batching.BucketSampler`).
"""

from __future__ import annotations

import logging
import os
import random
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from glassformer.data.batching import IGNORE_INDEX, BucketSampler, pad
from glassformer.data.dates import date_pairs
from glassformer.data.tables import cell, iter_rows
from glassformer.errors import DataError
from glassformer.tokenizers import Tokenizer

log = logging.getLogger(__name__)

BUILTIN_PAIRS = ("copy", "reverse", "dates")
# header cells that mark the first row of a CSV/TSV as column names, and JSON field pairs
HEADER_NAMES = {"source", "target", "src", "tgt", "input", "output"}
FIELD_PAIRS = (("source", "target"), ("src", "tgt"), ("input", "output"))


def load_pairs(path: str | os.PathLike, format: str | None = None, errors: str = "strict") -> list[tuple[str, str]]:
    """``(source, target)`` pairs from a TSV, CSV or JSON Lines file.

    TSV/CSV: two columns per line, optionally under a header row such as ``source<TAB>target``.
    JSON Lines: one object a line with ``source``/``target`` (or ``src``/``tgt``, ``input``/``output``).
    A row with the wrong number of columns, a missing field or an empty side is a DataError
    naming the file and line.
    """
    path = Path(path)
    pairs: list[tuple[str, str]] = []
    for k, (line, row) in enumerate(iter_rows(path, format, errors)):
        if isinstance(row, dict):
            keys = next((p for p in FIELD_PAIRS if p[0] in row and p[1] in row), None)
            if keys is None:
                raise DataError(f"{path}:{line}: expected fields 'source' and 'target' "
                                f"(or src/tgt, input/output), found {', '.join(map(repr, row)) or 'none'}")
            src, tgt = (cell(row[f], path, line, f) for f in keys)
        else:
            if k == 0 and len(row) == 2 and {c.strip().lower() for c in row} <= HEADER_NAMES:
                continue  # a header row
            if len(row) != 2:
                raise DataError(f"{path}:{line}: expected 2 columns (source, target), found {len(row)}")
            src, tgt = row
        for side, text in (("source", src), ("target", tgt)):
            if not text.strip():
                raise DataError(f"{path}:{line}: empty {side}; every pair needs text on both sides")
        pairs.append((src, tgt))
    if not pairs:
        raise DataError(f"{path}: no pairs (only a header or blank lines)")
    return pairs


def builtin_pairs(name: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs of a built-in task, the same for the same ``seed``.

    - ``copy``: a random lowercase string of 3-12 letters -> itself;
    - ``reverse``: the same kind of string -> its letters reversed;
    - ``dates``: a date in one of many human spellings -> ISO 8601 (see :mod:`glassformer.data.dates`).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if name == "dates":
        return date_pairs(n, seed)
    if name not in BUILTIN_PAIRS:
        raise ValueError(f"unknown built-in task {name!r}; choose one of {', '.join(BUILTIN_PAIRS)}")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        s = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12)))
        pairs.append((s, s if name == "copy" else s[::-1]))
    return pairs


class Seq2SeqDataset:
    """Padded, length-bucketed batches of pairs: ``{"src_ids", "tgt_ids", "src_mask", "tgt_mask",
    "labels"}``, the arguments of ``Transformer.forward``.

    Sources longer than ``max_len`` tokens and targets longer than ``max_len - 1`` are cut (with
    a warning saying how many), so that every sequence fits the model.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, max_len: int,
                 bucket_factor: int = 4, source: str | None = None) -> None:
        tokenizer.require("pad", "bos", "eos", purpose="sequence-to-sequence training")
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (bos + one token), got {max_len}")
        if not pairs:
            raise DataError(f"{source or 'the pairs'}: no pairs")
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(s, str) and s.strip() for s in pair):
                raise DataError(f"{source or 'the pairs'}: pair {i} must be two non-empty strings, got {pair!r}")
        self.tokenizer, self.max_len = tokenizer, max_len
        srcs = tokenizer.encode_batch([p[0] for p in pairs], add_special_tokens=False)
        tgts = tokenizer.encode_batch([p[1] for p in pairs], add_special_tokens=False)
        cut = sum(len(s) > max_len or len(t) > max_len - 1 for s, t in zip(srcs, tgts))
        if cut:
            log.warning("%s: %d of %d pairs are longer than max_len=%d tokens and were cut",
                        source or "seq2seq data", cut, len(pairs), max_len)
        self.src = [s[:max_len] for s in srcs]
        self.tgt = [t[: max_len - 1] for t in tgts]
        self.sampler = BucketSampler([len(s) + len(t) for s, t in zip(self.src, self.tgt)], bucket_factor)

    def __len__(self) -> int:
        return len(self.src)

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The batch of the pairs at ``indices``, padded to the longest of each side."""
        tok = self.tokenizer
        src_ids, src_mask = pad([self.src[i] for i in indices], tok.pad_id)  # (B, S)
        tgt_ids, tgt_mask = pad([[tok.bos_id, *self.tgt[i]] for i in indices], tok.pad_id)  # (B, T)
        labels, _ = pad([[*self.tgt[i], tok.eos_id] for i in indices], tok.pad_id, value=IGNORE_INDEX)  # (B, T)
        return {"src_ids": src_ids, "tgt_ids": tgt_ids, "src_mask": src_mask, "tgt_mask": tgt_mask, "labels": labels}

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        return self.collate(self.sampler.sample(batch_size, generator).tolist())

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every pair once, in length order (little padding), the same batches every time."""
        order = self.sampler.order.tolist()
        for i, k in enumerate(range(0, len(order), batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield self.collate(order[k: k + batch_size])

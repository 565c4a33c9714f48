"""Text classification (BERT plus a head): labelled files and a built-in task from real text.

The built-in task, ``builtin_classification``, asks "is this snippet English prose or Python
code?". Prose snippets are paragraphs of the ``python-docs`` corpus (the ``help()`` reference
text); code snippets are one to three consecutive lines of the ``python-stdlib`` sources, with
comments, docstrings and other multi-line strings left out, and the indentation removed so the
answer cannot be read off leading spaces. The ``encodings`` tables and ``pydoc_data`` (which is
the docs text) are not drawn from.
"""

from __future__ import annotations

import io
import math
import os
import random
import textwrap
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from glassformer.data.batching import BucketSampler, pad
from glassformer.data.corpus import python_docs_topics, stdlib_dir, stdlib_files
from glassformer.data.tables import cell, iter_rows
from glassformer.errors import DataError
from glassformer.tokenizers import Tokenizer

BUILTIN_LABELS = ["code", "prose"]
MAX_CHARS = 160  # longest built-in snippet, in characters


class Labelled(NamedTuple):
    """``(examples, label_names)``: ``(text, label index)`` pairs, and the names of the labels."""

    examples: list[tuple[str, int]]
    label_names: list[str]

    @property
    def texts(self) -> list[str]:
        return [text for text, _ in self.examples]

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.examples]


def _name_order(name: str) -> tuple:
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def load_labelled(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                  format: str | None = None, errors: str = "strict") -> Labelled:
    """Text + label rows from CSV/TSV (a header row names the columns) or JSON Lines.

    Label names are sorted (numerically when they are all integers). A missing column, an empty
    text or label, or a label column with a single class is a DataError naming file and line.
    """
    path = Path(path)
    texts: list[str] = []
    names: list[str] = []
    header: dict[str, int] | None = None
    for line, row in iter_rows(path, format, errors):
        if isinstance(row, dict):
            for column in (text_column, label_column):
                if column not in row:
                    raise DataError(f"{path}:{line}: no field {column!r} (fields: {', '.join(map(repr, row))})")
            text, label = cell(row[text_column], path, line, text_column), cell(row[label_column], path, line, label_column)
        else:
            if header is None:
                header = {c.strip(): i for i, c in enumerate(row)}
                for column in (text_column, label_column):
                    if column not in header:
                        raise DataError(f"{path}:{line}: no column {column!r} in the header "
                                        f"(columns: {', '.join(map(repr, header))})")
                continue
            width = max(header[text_column], header[label_column]) + 1
            if len(row) < width:
                raise DataError(f"{path}:{line}: {len(row)} columns, the header has {len(header)}")
            text, label = row[header[text_column]], row[header[label_column]]
        if not text.strip():
            raise DataError(f"{path}:{line}: empty {text_column!r}")
        if not label.strip():
            raise DataError(f"{path}:{line}: empty {label_column!r}")
        texts.append(text)
        names.append(label.strip())
    if not texts:
        raise DataError(f"{path}: no labelled rows" + (" (only a header)" if header else ""))
    label_names = sorted(set(names), key=_name_order)
    if len(label_names) < 2:
        raise DataError(f"{path}: the label column {label_column!r} has a single class ({label_names[0]!r}); "
                        f"classification needs at least two")
    index = {name: i for i, name in enumerate(label_names)}
    return Labelled([(t, index[n]) for t, n in zip(texts, names)], label_names)


# ---------------------------------------------------------------------- the built-in task


def _prose_paragraphs() -> list[str]:
    """Paragraphs of running English from the docs: no headings, no indented code, no tables."""
    paragraphs = []
    for _topic, text in python_docs_topics():
        for para in text.split("\n\n"):
            lines = para.split("\n")
            if para.startswith((" ", "\t")) or any(set(ln.strip()) <= set("*=-+| ") for ln in lines):
                continue
            flat = " ".join(para.split())
            if len(flat) >= 40 and flat[0].isalpha():
                paragraphs.append(flat)
    return paragraphs


def code_runs(path: Path) -> list[list[tuple[str, bool]]]:
    """Runs of consecutive code lines of ``path`` as ``(line, starts_a_statement)``: comments,
    strings over several lines (docstrings) and blank lines end a run."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    bad: set[int] = set()
    continued: set[int] = set()  # lines that begin inside an open bracket
    depth, last_row = 0, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.start[0] != last_row:
                if depth > 0:
                    continued.add(tok.start[0])
                last_row = tok.start[0]
            if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start[0] != tok.end[0]):
                bad.update(range(tok.start[0], tok.end[0] + 1))
            elif tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, SyntaxError):
        return []
    runs, run = [], []
    for number, line in enumerate(lines, start=1):
        if number in bad or not line.strip():
            if run:
                runs.append(run)
            run = []
        else:
            run.append((line, number not in continued))
    if run:
        runs.append(run)
    return [r for r in runs if any(starts for _, starts in r)]


def _clip(text: str, rng: random.Random) -> str:
    """At most MAX_CHARS characters of ``text``, starting at a word boundary."""
    if len(text) <= MAX_CHARS:
        return text
    starts = [0] + [i + 1 for i, c in enumerate(text[: len(text) - MAX_CHARS // 2]) if c == " "]
    start = rng.choice(starts)
    piece = text[start: start + MAX_CHARS]
    return piece[: piece.rfind(" ")] if " " in piece and start + MAX_CHARS < len(text) else piece


def builtin_classification(n: int, seed: int = 0) -> Labelled:
    """``n`` snippets labelled ``code`` (Python standard library) or ``prose`` (Python docs),
    half of each, shuffled; the same for the same ``seed``. See the module docstring."""
    if n < 2:
        raise ValueError(f"n must be at least 2 (one snippet of each class), got {n}")
    rng = random.Random(seed)
    n_prose = n // 2
    paragraphs = _prose_paragraphs()
    prose = [_clip(rng.choice(paragraphs), rng) for _ in range(n_prose)]

    root = stdlib_dir()
    files = [p for p in stdlib_files() if p.relative_to(root).parts[0] not in ("encodings", "pydoc_data")]
    code: list[str] = []
    per_file = 8  # snippets drawn from each file read: reading + tokenizing a file is the slow part
    while len(code) < n - n_prose:
        runs = code_runs(rng.choice(files))
        for _ in range(min(per_file, n - n_prose - len(code)) if runs else 0):
            run = rng.choice(runs)
            start = rng.choice([i for i, (_, starts) in enumerate(run) if starts])
            k = rng.randint(1, min(3, len(run) - start))
            snippet = textwrap.dedent("\n".join(line for line, _ in run[start: start + k])).strip()
            code.append(snippet[:MAX_CHARS])
    examples = [(t, 0) for t in code] + [(t, 1) for t in prose]
    rng.shuffle(examples)
    return Labelled(examples, list(BUILTIN_LABELS))


# ---------------------------------------------------------------------- dataset


class ClassificationDataset:
    """Padded, length-bucketed batches ``{"input_ids", "attention_mask", "labels"}`` with labels
    of shape (B,): the arguments of ``BERT.forward`` with a classification head.

    Each text is wrapped as ``bos ... eos`` (``[CLS] ... [SEP]``: the pooler reads position 0)
    when the tokenizer has both, and cut to ``max_len`` tokens. ``labels`` are indices into
    ``label_names`` or the names themselves; pass ``label_names`` when building from a split, so
    a split that lacks a class still has the full list.

    Also accepts ``ClassificationDataset(examples, tokenizer, max_len, label_names=None)`` with
    ``examples`` the ``(text, label)`` pairs of :class:`Labelled`.
    """

    def __init__(self, texts, labels, tokenizer=None, max_len=None,
                 label_names: Sequence[str] | None = None, bucket_factor: int = 4, source: str | None = None) -> None:
        if isinstance(labels, Tokenizer):  # the (examples, tokenizer, max_len, label_names) form: shift left
            names_given = max_len if max_len is not None else label_names
            examples, tokenizer, max_len, label_names = texts, labels, tokenizer, names_given
            texts, labels = [t for t, _ in examples], [y for _, y in examples]
        if not isinstance(tokenizer, Tokenizer) or not isinstance(max_len, int):
            raise TypeError("ClassificationDataset(texts, labels, tokenizer, max_len, label_names=None)")
        tokenizer.require("pad", purpose="classification batches (padding)")
        where = source or "the labelled data"
        if len(texts) != len(labels):
            raise DataError(f"{where}: {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise DataError(f"{where}: no examples")
        if label_names is None and all(isinstance(y, str) for y in labels):
            label_names = sorted(set(labels), key=_name_order)
        elif label_names is None:  # indices without names: classes 0 .. max, named by number
            label_names = [str(i) for i in range(max(int(y) for y in labels) + 1)]
        self.label_names = list(label_names)
        if len(self.label_names) < 2:
            raise DataError(f"{where}: a single class ({self.label_names!r}); classification needs at least two")
        index = {name: i for i, name in enumerate(self.label_names)}
        self.labels = []
        for i, y in enumerate(labels):
            k = index.get(y) if isinstance(y, str) else int(y)
            if k is None or not 0 <= k < len(self.label_names):
                raise DataError(f"{where}: example {i} has label {y!r}, not one of {self.label_names}")
            self.labels.append(k)
        self.tokenizer, self.max_len = tokenizer, max_len
        wrap = tokenizer.bos_id is not None and tokenizer.eos_id is not None
        body = max_len - 2 if wrap else max_len
        if body <= 0:
            raise ValueError(f"max_len={max_len} leaves no room for text")
        self.rows = []
        for i, ids in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if not ids:
                raise DataError(f"{where}: example {i} has empty text")
            ids = ids[:body]
            self.rows.append([tokenizer.bos_id, *ids, tokenizer.eos_id] if wrap else ids)
        self.sampler = BucketSampler([len(r) for r in self.rows], bucket_factor)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        input_ids, attention_mask = pad([self.rows[i] for i in indices], self.tokenizer.pad_id)  # (B, L)
        labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)  # (B,)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        return self.collate(self.sampler.sample(batch_size, generator).tolist())

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every example once, in length order, the same batches every time."""
        order = self.sampler.order.tolist()
        n_batches = math.ceil(len(order) / batch_size)
        for i in range(n_batches if max_batches is None else min(n_batches, max_batches)):
            yield self.collate(order[i * batch_size: (i + 1) * batch_size])

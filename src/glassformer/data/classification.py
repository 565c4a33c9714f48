"""Text classification (BERT plus a head): labelled files and a built-in task from real text;
sentence pairs for both classification (BERT's ``[CLS] a [SEP] b [SEP]``) and contrastive
sentence-embedding training (:class:`SentencePairDataset`); a seeded, stratified validation split.

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


Text = str | tuple[str, str]  # one text, or a sentence pair


class Labelled(NamedTuple):
    """``(examples, label_names)``: ``(text, label index)`` pairs, and the names of the labels.
    A text is a string, or a ``(first, second)`` pair of strings when read with a pair column."""

    examples: list[tuple[Text, int]]
    label_names: list[str]

    @property
    def texts(self) -> list[Text]:
        return [text for text, _ in self.examples]

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.examples]


def _name_order(name: str) -> tuple:
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def read_columns(path: str | os.PathLike, columns: Sequence[str], format: str | None = None,
                 errors: str = "strict") -> list[tuple[str, ...]]:
    """The named columns of each row of a CSV/TSV (a header row names the columns) or JSON Lines
    file. A missing column or an empty cell is a DataError naming file, line and column."""
    path = Path(path)
    rows: list[tuple[str, ...]] = []
    header: dict[str, int] | None = None
    for line, row in iter_rows(path, format, errors):
        if isinstance(row, dict):
            for column in columns:
                if column not in row:
                    raise DataError(f"{path}:{line}: no field {column!r} (fields: {', '.join(map(repr, row))})")
            values = tuple(cell(row[c], path, line, c) for c in columns)
        else:
            if header is None:
                header = {c.strip(): i for i, c in enumerate(row)}
                for column in columns:
                    if column not in header:
                        raise DataError(f"{path}:{line}: no column {column!r} in the header "
                                        f"(columns: {', '.join(map(repr, header))})")
                continue
            if len(row) < max(header[c] for c in columns) + 1:
                raise DataError(f"{path}:{line}: {len(row)} columns, the header has {len(header)}")
            values = tuple(row[header[c]] for c in columns)
        for column, value in zip(columns, values):
            if not value.strip():
                raise DataError(f"{path}:{line}: empty {column!r}")
        rows.append(values)
    if not rows:
        raise DataError(f"{path}: no rows" + (" (only a header)" if header else ""))
    return rows


def load_labelled(path: str | os.PathLike, text_column: str = "text", label_column: str = "label",
                  format: str | None = None, errors: str = "strict", pair_column: str | None = None) -> Labelled:
    """Text + label rows from CSV/TSV (a header row names the columns) or JSON Lines; with
    ``pair_column``, each text is the pair ``(text, pair)``.

    Label names are sorted (numerically when they are all integers). A missing column, an empty
    text or label, or a label column with a single class is a DataError naming file and line.
    """
    path = Path(path)
    columns = [text_column, *([pair_column] if pair_column else []), label_column]
    rows = read_columns(path, columns, format, errors)
    texts: list[Text] = [(r[0], r[1]) if pair_column else r[0] for r in rows]
    names = [r[-1].strip() for r in rows]
    label_names = sorted(set(names), key=_name_order)
    if len(label_names) < 2:
        raise DataError(f"{path}: the label column {label_column!r} has a single class ({label_names[0]!r}); "
                        f"classification needs at least two")
    index = {name: i for i, name in enumerate(label_names)}
    return Labelled([(t, index[n]) for t, n in zip(texts, names)], label_names)


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices ``(train, val)``: ``val_fraction`` of each class (rounded; at least one of a class
    with two or more examples, never all of it), drawn at random with ``seed``. A file sorted by
    label still validates on every class. Both lists keep the original order."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    val: list[int] = []
    for _, members in sorted(by_class.items()):
        rng.shuffle(members)
        n = len(members)
        k = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 else 0
        val.extend(members[:k])
    if not val:
        raise DataError(f"{len(labels)} examples are too few to hold any out for validation")
    chosen = set(val)
    return [i for i in range(len(labels)) if i not in chosen], sorted(val)


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


# ---------------------------------------------------------------------- datasets


def encode_texts(tokenizer: Tokenizer, texts: list[Text], max_len: int,
                 where: str) -> tuple[list[list[int]], list[list[int]] | None]:
    """Model input ids of each text, cut to ``max_len``, and for sentence pairs the segment ids.

    One text reads ``bos ... eos`` (``[CLS] ... [SEP]``) when the tokenizer has both; a pair
    reads as the tokenizer wraps it (:meth:`~glassformer.tokenizers.base.Tokenizer.wrap`:
    ``[CLS] a [SEP] b [SEP]``), the longer side cut first (BERT's "longest first").
    """
    pairs = bool(texts) and isinstance(texts[0], tuple)
    firsts = [t[0] if isinstance(t, tuple) else t for t in texts]
    encoded = tokenizer.encode_batch(firsts, add_special_tokens=False)
    for i, ids in enumerate(encoded):
        if not ids:
            raise DataError(f"{where}: example {i} has empty text")
    if not pairs:
        wrap = tokenizer.bos_id is not None and tokenizer.eos_id is not None
        body = max_len - 2 if wrap else max_len
        if body <= 0:
            raise ValueError(f"max_len={max_len} leaves no room for text")
        return [[tokenizer.bos_id, *ids[:body], tokenizer.eos_id] if wrap else ids[:body] for ids in encoded], None
    if not all(isinstance(t, tuple) and len(t) == 2 for t in texts):
        raise DataError(f"{where}: mixes single texts and sentence pairs")
    seconds = tokenizer.encode_batch([t[1] for t in texts], add_special_tokens=False)
    specials = len(tokenizer.wrap([], pair=[]))
    body = max_len - specials
    if body < 2:
        raise ValueError(f"max_len={max_len} leaves no room for a sentence pair")
    rows, types = [], []
    for i, (a, b) in enumerate(zip(encoded, seconds)):
        if not b:
            raise DataError(f"{where}: example {i} has an empty second text")
        a, b = list(a), list(b)
        while len(a) + len(b) > body:  # longest first, one token at a time
            (a if len(a) >= len(b) else b).pop()
        first = len(tokenizer.wrap(a))
        row = tokenizer.wrap(a, pair=b)
        rows.append(row)
        types.append([0] * first + [1] * (len(row) - first))
    return rows, types



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
        self.rows, self.types = encode_texts(tokenizer, list(texts), max_len, where)
        self.sampler = BucketSampler([len(r) for r in self.rows], bucket_factor)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        input_ids, attention_mask = pad([self.rows[i] for i in indices], self.tokenizer.pad_id)  # (B, L)
        labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)  # (B,)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.types is not None:  # sentence pairs: segment 0 for [CLS] a [SEP], 1 for b [SEP]
            batch["token_type_ids"], _ = pad([self.types[i] for i in indices], 0)  # (B, L)
        return batch

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        return self.collate(self.sampler.sample(batch_size, generator).tolist())

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every example once, in length order, the same batches every time."""
        order = self.sampler.order.tolist()
        n_batches = math.ceil(len(order) / batch_size)
        for i in range(n_batches if max_batches is None else min(n_batches, max_batches)):
            yield self.collate(order[i * batch_size: (i + 1) * batch_size])


class SentencePairDataset:
    """(anchor, positive) pairs for contrastive training with in-batch negatives.

    A batch is ``{"input_ids", "attention_mask", "positive_ids", "positive_mask", "labels"}``:
    row i's positive is row i of the positives, and every other row's positive is a negative for
    it, so ``labels`` is ``0 .. B-1`` (the loss is :func:`glassformer.training.objectives.contrastive_logits`).
    Texts are wrapped as the encoder reads them and cut to ``max_len``.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, max_len: int,
                 bucket_factor: int = 4, source: str | None = None) -> None:
        where = source or "the sentence pairs"
        if len(pairs) < 2:
            raise DataError(f"{where}: {len(pairs)} pair(s); in-batch negatives need at least two")
        tokenizer.require("pad", purpose="sentence-pair batches (padding)")
        self.tokenizer, self.max_len = tokenizer, max_len
        self.pairs = list(pairs)
        self.anchors, _ = encode_texts(tokenizer, [a for a, _ in pairs], max_len, where)
        self.positives, _ = encode_texts(tokenizer, [p for _, p in pairs], max_len, where)
        self.sampler = BucketSampler([max(len(a), len(p)) for a, p in zip(self.anchors, self.positives)], bucket_factor)

    def __len__(self) -> int:
        return len(self.anchors)

    def collate(self, indices: Sequence[int]) -> dict[str, Tensor]:
        input_ids, attention_mask = pad([self.anchors[i] for i in indices], self.tokenizer.pad_id)  # (B, L)
        positive_ids, positive_mask = pad([self.positives[i] for i in indices], self.tokenizer.pad_id)  # (B, L')
        labels = torch.arange(len(indices))  # (B,) row i's positive is column i
        return {"input_ids": input_ids, "attention_mask": attention_mask, "positive_ids": positive_ids,
                "positive_mask": positive_mask, "labels": labels}

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        return self.collate(self.sampler.sample(min(batch_size, len(self)), generator).tolist())

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every pair once, in a fixed order (a last batch of one pair is joined to the one before)."""
        order = list(range(len(self)))
        starts = list(range(0, len(order), batch_size))
        if len(starts) > 1 and len(order) - starts[-1] < 2:
            starts.pop()
        for k, start in enumerate(starts[: max_batches]):
            end = starts[k + 1] if k + 1 < len(starts) else len(order)
            yield self.collate(order[start:end])

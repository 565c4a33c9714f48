"""A classification task where word order carries the label: real Python, or two tokens swapped.

``python_swaps(n)`` draws single-line statements from the standard library sources (comments,
docstrings and lines inside open brackets left out; indentation removed) and writes them with one
space between tokens (``self . x = f ( a , b )``), so that any tokenizer that splits at spaces
sees each Python token as its own word(s). Each line is shown either as it is (label ``real``) or
with two of its tokens after the first swapped (label ``swapped``), so that:

- both versions have exactly the same length, characters and words: a length-only or a
  bag-of-words classifier is at chance (50%);
- a swapped line never parses (``ast.parse`` refuses it), so the label is always right: only the
  *order* of the tokens tells the two apart.

Each source line appears once, as one version or the other, so no line is seen in both forms.
"""

from __future__ import annotations

import ast
import io
import random
import tokenize
import warnings

from glassformer.data.classification import Labelled, code_runs
from glassformer.data.corpus import stdlib_dir, stdlib_files

SWAP_LABELS = ["real", "swapped"]
MIN_CHARS, MAX_CHARS = 16, 80  # the lines drawn, in characters
MIN_TOKENS = 4
_SKIP = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT}


def parses(line: str) -> bool:
    """Does ``line`` parse as a statement? A block header (``if x:``) is completed with ``pass``."""
    text = line + " pass" if line.rstrip().endswith(":") else line
    with warnings.catch_warnings():  # e.g. "invalid decimal literal" on a swapped `1 if`
        warnings.simplefilter("ignore")
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):  # ValueError: null bytes
            return False
    return True


def token_spans(line: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets of the Python tokens of a one-line ``line``."""
    spans = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type in _SKIP or tok.start[0] != 1 or tok.end[0] != 1:
                continue
            spans.append((tok.start[1], tok.end[1]))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    return spans


def spaced(line: str) -> str | None:
    """``line`` with exactly one space between its tokens (None when that changes its meaning or
    it cannot be tokenized: f-strings, whose inner text would gain spaces)."""
    spans = token_spans(line)
    if not spans or any(line[a:b][:2].lower() in ("f'", 'f"', "rf", "fr") for a, b in spans):
        return None
    return " ".join(line[a:b] for a, b in spans)


def swap_tokens(line: str, rng: random.Random, tries: int = 12) -> str | None:
    """``line`` with two different tokens swapped so that it no longer parses; None if no such swap
    was found in ``tries`` draws. The whitespace between tokens stays where it was, and the first
    token stays first (so every token keeps the space before it, or its lack of one)."""
    spans = token_spans(line)
    if len(spans) < MIN_TOKENS:
        return None
    for _ in range(tries):
        i, j = sorted(rng.sample(range(1, len(spans)), 2))
        (a0, a1), (b0, b1) = spans[i], spans[j]
        if line[a0:a1] == line[b0:b1]:
            continue
        swapped = line[:a0] + line[b0:b1] + line[a1:b0] + line[a0:a1] + line[b1:]
        if not parses(swapped):
            return swapped
    return None


def stdlib_statements(rng: random.Random, want: int) -> list[str]:
    """At least ``want`` distinct one-line statements from the standard library (fewer only if the
    library runs out), in the order the files were drawn."""
    root = stdlib_dir()
    files = [p for p in stdlib_files() if p.relative_to(root).parts[0] not in ("encodings", "pydoc_data")]
    rng.shuffle(files)
    seen: set[str] = set()
    lines: list[str] = []
    per_file = 60  # lines kept per file: many files, not a few long ones (reading a file is the slow part)
    for path in files:
        candidates = []
        for run in code_runs(path):
            for k, (line, starts) in enumerate(run):
                ends = k + 1 == len(run) or run[k + 1][1]  # the next line starts a statement too
                if starts and ends and MIN_CHARS // 2 <= len(line.strip()) <= MAX_CHARS:
                    candidates.append(line.strip())
        rng.shuffle(candidates)
        kept = 0
        for raw in candidates:
            text = spaced(raw)
            if text is None or not MIN_CHARS <= len(text) <= MAX_CHARS or text in seen or not parses(text):
                continue
            seen.add(text)
            lines.append(text)
            kept += 1
            if kept == per_file or len(lines) >= want:
                break
        if len(lines) >= want:
            break
    return lines


def python_swaps(n: int, seed: int = 0) -> Labelled:
    """``n`` examples (about half ``real``, half ``swapped``), shuffled; the same for the same seed."""
    if n < 2:
        raise ValueError(f"n must be at least 2 (one example of each class), got {n}")
    rng = random.Random(seed)
    lines = stdlib_statements(rng, int(n * 1.15) + 10)  # a few lines have no swap that breaks them
    examples: list[tuple[str, int]] = []
    for line in lines:
        if len(examples) == n:
            break
        swapped = swap_tokens(line, rng)
        if swapped is None:  # dropped whatever its label would be, so no kind of line is only ever real
            continue
        examples.append((line, 0) if rng.random() < 0.5 else (swapped, 1))
    rng.shuffle(examples)
    return Labelled(examples, list(SWAP_LABELS))

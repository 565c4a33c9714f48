"""Read rows from CSV, TSV or JSON Lines files, each with the line it came from.

The format comes from the extension (``.csv``, ``.tsv``/``.tab``/``.txt``, ``.jsonl``/``.ndjson``/
``.json``) unless given. Every problem is a DataError naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from glassformer.data.corpus import iter_file_text
from glassformer.errors import DataError
from glassformer.io import parse_json

Format = Literal["csv", "tsv", "jsonl"]
EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}


def table_format(path: Path, format: str | None = None) -> Format:
    if format is not None:
        if format not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"format must be csv, tsv or jsonl, got {format!r}")
        return format  # type: ignore[return-value]
    try:
        return EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                        f"use one of {', '.join(EXTENSIONS)}") from None


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """A whole (small) dataset file, with the corpus reader's UTF-8 checks."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    text = "".join(iter_file_text(path, errors))
    if not text.strip():
        raise DataError(f"{path}: the file is empty")
    return text.removeprefix("\ufeff")  # a byte-order mark some editors write


def iter_rows(path: str | os.PathLike, format: str | None = None, errors: str = "strict") -> Iterator[tuple[int, list[str] | dict]]:
    """``(line, row)``: a list of cells for CSV/TSV, a dict for JSON Lines. Blank lines are skipped."""
    path = Path(path)
    fmt = table_format(path, format)
    text = read_text(path, errors)
    if fmt == "jsonl":
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            obj = parse_json(line, f"{path}:{line_no}", DataError, lines=False)
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t",
                        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            yield reader.line_num, cells
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None


def cell(value, path: Path, line: int, field: str) -> str:
    """A JSON field as text (numbers and booleans become their JSON spelling)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return json.dumps(value)
    raise DataError(f"{path}:{line}: field {field!r} must be a string or number, got {type(value).__name__}")

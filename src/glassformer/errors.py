"""Errors that mean "the input was wrong", as opposed to a bug in glassformer.

The CLI turns these (and ValueError, TypeError, KeyError, OSError from input checks) into one
line on stderr and exit code 2.
"""


class GlassformerError(Exception):
    """Base class for user-facing errors: bad input, bad files, bad flags."""


class DataError(GlassformerError, ValueError):
    """A corpus, dataset file or tokenizer input that cannot be used; names the file and place."""


class CheckpointError(GlassformerError, ValueError):
    """A model or checkpoint directory that cannot be read or written."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A model directory without a file it needs (a CheckpointError, and a FileNotFoundError for
    code that catches that)."""


class NonFiniteError(GlassformerError, ValueError):
    """A model produced NaN or infinite scores (its weights hold NaN/inf, or a computation overflowed)."""

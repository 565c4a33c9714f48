"""sentence-transformers directories: the modules after the encoder, read from ``modules.json``.

A sentence-transformers checkpoint (e.g. all-MiniLM-L6-v2) is a Hugging Face BERT plus a list of
modules that turn its token vectors into one sentence vector:

    modules.json                 [Transformer, Pooling (1_Pooling/), Normalize (2_Normalize/)]
    1_Pooling/config.json        pooling_mode_mean_tokens / _cls_token / _max_tokens / _mean_sqrt_len_tokens ...
    sentence_bert_config.json    max_seq_length (texts are cut there), do_lower_case

:func:`read_sentence_config` reads them (None for a directory without ``modules.json``);
:func:`pool` is the Pooling module over the real tokens only (the attention mask); the encoder
is our :class:`~glassformer.models.BERT`. :func:`embed_texts` runs the whole pipeline and equals
``SentenceTransformer(dir).encode(texts)`` (cosine >= 0.99999, checked in the tests).

    encoder = load_sentence_encoder("all-MiniLM-L6-v2/")
    vectors = encoder.encode(["A man is eating food.", "Someone is eating."])   # (2, 384) numpy
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch
from tokenizers import normalizers
from torch import Tensor, nn

from glassformer.data.batching import pad
from glassformer.errors import CheckpointError
from glassformer.io import read_json
from glassformer.models import BERT
from glassformer.tokenizers.base import length_limit

log = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"
# 1_Pooling/config.json flag -> our mode name; several flags on means the vectors are concatenated
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(POOLING_FLAGS.values())
MODULE_KINDS = {"Transformer": "transformer", "Pooling": "pooling", "Normalize": "normalize"}


@dataclass(frozen=True)
class SentenceConfig:
    """What a sentence-transformers directory declares after its encoder."""

    pooling: tuple[str, ...] = ("mean",)  # in the order their vectors are concatenated
    normalize: bool = True  # L2-normalise the pooled vector (the Normalize module)
    max_seq_length: int | None = None  # texts are cut to this many tokens, specials included
    do_lower_case: bool = False  # lower-case the text before tokenizing


def _module_kind(entry: Any, path: Path) -> tuple[str, str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise CheckpointError(f"{path}: each module must be an object with a 'type'")
    name = entry["type"].rsplit(".", 1)[-1]
    if name not in MODULE_KINDS:
        raise CheckpointError(
            f"{path}: module {entry['type']!r} is not supported; glassformer runs {', '.join(MODULE_KINDS)}")
    return MODULE_KINDS[name], str(entry.get("path") or "")


def pooling_modes(config: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The modes of a ``1_Pooling/config.json``: the old ``pooling_mode_*`` flags or ``pooling_mode``."""
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
        modes = tuple(m for flag, m in POOLING_FLAGS.items() if config.get(flag) is True)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise CheckpointError(f"{path}: pooling {bad or 'none'} is not supported; choose among {', '.join(POOLING_MODES)}")
    if config.get("include_prompt") is False:
        log.debug("%s: include_prompt=false only matters with prompts, which glassformer does not add", path)
    return modes


def read_sentence_config(directory: str | os.PathLike) -> SentenceConfig | None:
    """The pipeline ``modules.json`` declares, or None when the directory has no ``modules.json``."""
    directory = Path(directory)
    path = directory / MODULES_FILE
    if not path.is_file():
        return None
    entries = read_json(path, expect=list, error=CheckpointError)
    kinds = [_module_kind(e, path) for e in entries]
    if not kinds or kinds[0][0] != "transformer":
        raise CheckpointError(f"{path}: the first module must be the Transformer encoder")
    pooling: tuple[str, ...] = ()
    normalize = False
    for kind, sub in kinds[1:]:
        if kind == "pooling":
            config_path = directory / sub / "config.json"
            pooling = pooling_modes(read_json(config_path, error=CheckpointError), config_path)
        elif kind == "normalize":
            normalize = True
        else:
            raise CheckpointError(f"{path}: a second Transformer module is not supported")
    if not pooling:
        raise CheckpointError(f"{path}: no Pooling module; glassformer needs one to make a sentence vector")
    settings: dict[str, Any] = {}
    if (directory / SENTENCE_CONFIG_FILE).is_file():
        settings = read_json(directory / SENTENCE_CONFIG_FILE, error=CheckpointError)
    max_len = settings.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2):
        raise CheckpointError(f"{directory / SENTENCE_CONFIG_FILE}: max_seq_length must be an integer >= 2, got {max_len!r}")
    return SentenceConfig(pooling, normalize, max_len, bool(settings.get("do_lower_case", False)))


def pool(hidden: Tensor, attention_mask: Tensor, modes: Sequence[str] = ("mean",)) -> Tensor:
    """Sentence vectors from token vectors, over the real tokens only: (B, T, C) -> (B, C · len(modes)).

    ``cls``: the first real token; ``lasttoken``: the last; ``max``: the largest value of each
    feature; ``mean``: the average; ``mean_sqrt_len_tokens``: the sum divided by √(number of
    tokens); ``weightedmean``: token t weighted by its position t+1.
    """
    b, t, c = hidden.shape
    mask = attention_mask.to(hidden.device).bool()  # (B, T)
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    count = weights.sum(1).clamp(min=1e-9)  # (B, 1) real tokens per row
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.int().argmax(1)  # (B,) index of the first real token
            out.append(hidden[torch.arange(b), first])  # (B, C)
        elif mode == "lasttoken":
            last = t - 1 - mask.flip(1).int().argmax(1)  # (B,) index of the last real token
            out.append(hidden[torch.arange(b), last])  # (B, C)
        elif mode == "max":
            out.append(hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values)  # (B, C)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (hidden * weights).sum(1)  # (B, C)
            out.append(total / (count if mode == "mean" else count.sqrt()))
        elif mode == "weightedmean":
            # position weights count from the first real token (left padding shifts them)
            start = mask.int().argmax(1, keepdim=True)  # (B, 1)
            pos = torch.arange(1, t + 1, device=hidden.device).unsqueeze(0) - start  # (B, T)
            w = weights * pos.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            out.append((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}; choose among {', '.join(POOLING_MODES)}")
    return torch.cat(out, dim=-1)  # (B, C · len(modes))


@torch.no_grad()
def embed_ids(model: nn.Module, rows: list[list[int]], pad_id: int, config: SentenceConfig,
              batch_size: int = 32) -> np.ndarray:
    """Sentence vectors (N, C) of token-id rows: padded by batch with an attention mask, encoded,
    pooled over the real tokens, normalised when the config says so."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        ids, mask = pad(rows[start : start + batch_size], pad_id)  # (B, T), (B, T)
        ids, mask = ids.to(device), mask.to(device)
        hidden = model(ids, mask, head="none").last_hidden_state  # (B, T, C)
        vectors = pool(hidden.float(), mask, config.pooling)
        if config.normalize:
            vectors = nn.functional.normalize(vectors, dim=-1)
        out.append(vectors.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


def lowercases(normalizer: Any) -> bool:
    """Whether a ``tokenizers`` normaliser already lower-cases (``Lowercase``, ``BertNormalizer(lowercase=True)``)."""
    if normalizer is None:
        return False
    state = json.loads(normalizer.__getstate__())
    if isinstance(state, dict) and state.get("type") == "Sequence":
        return any(n.get("type") == "Lowercase" or n.get("lowercase") is True for n in state.get("normalizers", []))
    return isinstance(state, dict) and (state.get("type") == "Lowercase" or state.get("lowercase") is True)


def apply_lower_case(tokenizer: Any) -> bool:
    """sentence-transformers' ``do_lower_case``: a ``Lowercase`` normaliser in front of the
    tokenizer's own, as sentence-transformers puts it (special tokens typed in the text are left
    alone). Idempotent. False for a tokenizer without a ``tokenizers`` backend: lower-case the text."""
    inner = getattr(tokenizer, "tokenizer", None)
    if not isinstance(inner, tokenizers.Tokenizer):
        return False
    if not lowercases(inner.normalizer):
        current = inner.normalizer
        inner.normalizer = normalizers.Sequence([normalizers.Lowercase(), *([current] if current is not None else [])])
    return True


def model_rows(tokenizer: Any, texts: Sequence[str], config: SentenceConfig, max_len: int | None) -> list[list[int]]:
    """The ids the encoder reads for each text: lower-cased if declared, cut to ``max_seq_length``."""
    lower_text = config.do_lower_case and not apply_lower_case(tokenizer)
    rows = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i + 1} must be a str, got {type(text).__name__}")
        text = text.lower() if lower_text else text
        rows.append(tokenizer.encode_for_model(text, length_limit(config.max_seq_length, max_len), what=f"text {i + 1}"))
    return rows


def embed_texts(model: nn.Module, tokenizer: Any, texts: Sequence[str], config: SentenceConfig | None = None,
                batch_size: int = 32) -> np.ndarray:
    """(N, C) float32 sentence vectors of ``texts`` (default config: mean pooling, normalised)."""
    config = config or SentenceConfig()
    pad_id = next(v for v in (tokenizer.pad_id, model.config.pad_token_id, 0) if v is not None)
    rows = model_rows(tokenizer, texts, config, model.config.max_len)
    return embed_ids(model, rows, pad_id, config, batch_size)


@dataclass
class SentenceEncoder:
    """A BERT, its tokenizer and its sentence pipeline: ``encode(texts) -> (N, C)`` numpy."""

    model: nn.Module
    tokenizer: Any
    config: SentenceConfig

    def encode(self, texts: str | Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Like ``SentenceTransformer.encode``: one text gives (C,), a list gives (N, C)."""
        single = isinstance(texts, str)
        vectors = embed_texts(self.model, self.tokenizer, [texts] if single else list(texts), self.config, batch_size)
        return vectors[0] if single else vectors


def load_sentence_encoder(directory: str | os.PathLike, map_location: str = "cpu") -> SentenceEncoder:
    """The sentence encoder in a Hugging Face BERT directory: a sentence-transformers checkpoint
    (its ``modules.json``), or a plain BERT (mean pooling, normalised)."""
    from glassformer.interop import load_hf, load_hf_tokenizer  # the package imports this module

    model = load_hf(directory, expect=BERT).to(map_location)
    tokenizer = load_hf_tokenizer(directory)
    if tokenizer is None:
        raise CheckpointError(f"{directory}: no tokenizer.json; sentence vectors start from text")
    return SentenceEncoder(model, tokenizer, read_sentence_config(directory) or SentenceConfig())


# ------------------------------------------------------------------------ writing a directory

# tokenizer files sentence-transformers' AutoTokenizer may read besides tokenizer.json, copied from
# the model a run started from when the run's directory lacks them
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def save_sentence_transformers(model: BERT, tokenizer: Any, directory: str | os.PathLike,
                               config: SentenceConfig | None = None, *, max_seq_length: int | None = None,
                               like: str | os.PathLike | None = None) -> Path:
    """Write ``model`` (a BERT) and ``tokenizer`` as a sentence-transformers directory:
    the encoder in the Hugging Face BERT layout, ``modules.json`` (Transformer, Pooling,
    Normalize), ``1_Pooling/config.json`` and ``sentence_bert_config.json``.
    ``SentenceTransformer(directory)`` loads it, and ``glassformer embed`` gives the same vectors.

    ``config`` defaults to mean pooling and Normalize; ``max_seq_length`` to the model's
    ``max_len``. ``like``: a directory (the model the run started from) whose pipeline settings
    and tokenizer files are kept when ``config`` is not given.
    """
    from glassformer.interop import save_hf  # the package imports this module
    from glassformer.io import atomic_write_json, make_dirs

    directory = make_dirs(directory)
    like_dir = Path(like) if like is not None and Path(like).is_dir() else None
    if config is None:
        config = (read_sentence_config(like_dir) if like_dir is not None else None) or SentenceConfig()
    limit = max_seq_length or config.max_seq_length or model.config.max_len
    save_hf(model, directory)
    tokenizer.save(directory)
    for name in TOKENIZER_EXTRAS:
        if like_dir is not None and (like_dir / name).is_file() and not (directory / name).is_file():
            (directory / name).write_bytes((like_dir / name).read_bytes())
    dim = model.config.d_model
    pooling = {flag: mode in config.pooling for flag, mode in POOLING_FLAGS.items()}
    make_dirs(directory / "1_Pooling")
    atomic_write_json(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": dim, **pooling})
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if config.normalize:
        make_dirs(directory / "2_Normalize")
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    atomic_write_json(directory / MODULES_FILE, modules)
    atomic_write_json(directory / SENTENCE_CONFIG_FILE, {"max_seq_length": limit, "do_lower_case": config.do_lower_case})
    return directory

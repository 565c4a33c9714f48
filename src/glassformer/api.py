"""Text in, text out from Python: ``glassformer.load(path)``.

    import glassformer
    gpt = glassformer.load("runs/demo-gpt")              # any model directory, ours or Hugging Face
    gpt.generate("The meaning of")                       # -> the continuation (a str)
    gpt.generate(["a", "b"], temperature=0.8, seed=0)    # -> one str per prompt; keywords override
    gpt.generation_config                                # the model's GenerationConfig
    gpt.model, gpt.tokenizer                             # the tensors one level down

    glassformer.load("runs/demo-seq2seq").translate("2024-03-01")
    bert = glassformer.load("runs/demo-bert")
    bert.fill_mask("the cat sat on the [MASK]."); bert.classify(["great", "awful"]); bert.embed(["a", "b"])

Each method runs what the matching command runs (``glassformer generate``, ``translate``,
``fill-mask``, ``classify``, ``embed``): the same functions of :mod:`glassformer.generation.text`,
the same :class:`GenerationConfig` read from the directory's ``generation_config.json`` (keywords
override it, as flags do), the same batching, the same seeds, so the same text comes out.
Decoding runs on a copy laid out for the number of rows
(:func:`~glassformer.generation.layout.optimize_for_decoding`), never changing ``.model``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from glassformer.generation.config import GenerationConfig, load_generation_config
from glassformer.generation.layout import optimize_for_decoding
from glassformer.generation.text import (
    classify_texts,
    embed_texts,
    fill_mask_texts,
    generate_texts,
    translate_texts,
)
from glassformer.loading import load_model_and_tokenizer

_METHODS = {"gpt": ".generate()", "transformer": ".translate()", "bert": ".fill_mask(), .classify() or .embed()"}


class Pipeline:
    """A loaded model directory: ``.model``, ``.tokenizer``, ``.generation_config`` and the
    text-in, text-out methods that fit its family."""

    def __init__(self, model, tokenizer, generation_config: GenerationConfig | None = None, *,
                 path: str | os.PathLike | None = None, batch_size: int = 32) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.generation_config = generation_config or GenerationConfig()
        self.path = Path(path) if path is not None else None
        self.batch_size = batch_size
        self._prepared: dict[tuple, Any] = {}  # decoding copies of .model, by layout

    def decoder(self, rows: int):
        """:attr:`model` laid out for decoding ``rows`` sequences at once (one row, or several):
        a prepared copy, made once per layout, dtype, device and thread count."""
        p = next(self.model.parameters())
        key = (id(self.model), rows == 1, p.dtype, p.device, torch.get_num_threads())
        if key not in self._prepared:
            self._prepared = {key: optimize_for_decoding(self.model, batch_size=rows)}
        return self._prepared[key]

    def _rows(self, n: int, config: GenerationConfig) -> int:
        return config.num_beams * min(n, self.batch_size)

    @property
    def family(self) -> str:
        """``"gpt"``, ``"transformer"`` or ``"bert"``."""
        return self.model.config.model_type

    def __repr__(self) -> str:
        return f"Pipeline({self.family}, path={str(self.path)!r}, generation_config={self.generation_config.describe()!r})"

    def _need(self, family: str, method: str) -> None:
        if self.family != family:
            raise ValueError(f"{method} needs a {family} model; {self.path} holds a {self.family} model: "
                             f"use {_METHODS.get(self.family, 'another method')}")

    def _config(self, overrides: dict[str, Any]) -> GenerationConfig:
        return self.generation_config.with_overrides(**overrides)  # the rule the flags follow

    def generate(self, text: str | Sequence[str], **overrides: Any) -> str | list[str]:
        """The continuation of a prompt (a str), or of each prompt of a list (a list of str).
        Keywords override fields of :attr:`generation_config` (``max_new_tokens=20``,
        ``num_beams=4``, ``temperature=0.8``, ``seed=0``, ``stop=["\\n"]``, ...)."""
        self._need("gpt", "generate")
        texts = [text] if isinstance(text, str) else list(text)
        config = self._config(overrides)
        out = generate_texts(self.decoder(self._rows(len(texts), config)), self.tokenizer, texts, config,
                             batch_size=self.batch_size)
        texts_out = [c.text for c in out]
        return texts_out[0] if isinstance(text, str) else texts_out

    def translate(self, text: str | Sequence[str], **overrides: Any) -> str | list[str]:
        """The translation of a text (a str), or of each text of a list."""
        self._need("transformer", "translate")
        texts = [text] if isinstance(text, str) else list(text)
        config = self._config(overrides)
        out = translate_texts(self.decoder(self._rows(len(texts), config)), self.tokenizer, texts, config,
                              batch_size=self.batch_size)
        return out[0] if isinstance(text, str) else out

    # BERT: the functions the fill-mask / classify / embed commands print, on the loaded model
    def fill_mask(self, text: str | Sequence[str], top_k: int = 5) -> list[list[dict[str, Any]]] | list[list[list[dict]]]:
        """For each mask token of the text: the ``top_k`` candidates as ``{"token", "id", "p"}``
        (a list per mask; for a list of texts, one such list per text)."""
        self._need("bert", "fill_mask")
        texts = [text] if isinstance(text, str) else list(text)
        rows = fill_mask_texts(self.model, self.tokenizer, texts, top_k=top_k, batch_size=self.batch_size)
        return rows[0] if isinstance(text, str) else rows

    def classify(self, texts: str | Sequence[str]) -> dict[str, Any] | list[dict[str, Any]]:
        """``{"label", "probabilities"}`` for a text, or a list of them for a list of texts."""
        self._need("bert", "classify")
        items = [texts] if isinstance(texts, str) else list(texts)
        rows = classify_texts(self.model, self.tokenizer, items, batch_size=self.batch_size)
        return rows[0] if isinstance(texts, str) else rows

    def embed(self, texts: str | Sequence[str]):
        """Sentence vectors as a float32 numpy array: (C,) for a text, (N, C) for a list (the
        directory's sentence-transformers pooling when it has a ``modules.json``)."""
        self._need("bert", "embed")
        items = [texts] if isinstance(texts, str) else list(texts)
        matrix = embed_texts(self.model, self.tokenizer, items, batch_size=self.batch_size, model_dir=self.path)
        return matrix[0] if isinstance(texts, str) else matrix

    def show(self, text: str, head: str | None = None, query: int | None = None):
        """The live explorer's views of ``text`` inline in a notebook (no server, no CDN): an object
        whose ``_repr_html_`` draws tokens, every head's attention and role, the four steps, the lens."""
        from glassformer.serve.notebook import show  # the page assets load only when asked for

        return show(self, text, head=head, query=query)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a ValueError naming it when it is not a device this
    machine has (before any weights are read)."""
    try:
        d = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: choose 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    return d


def load(path: str | os.PathLike, device: str = "cpu") -> Pipeline:
    """Open any model directory (a glassformer save or run directory, or a Hugging Face
    checkpoint) with its tokenizer and ``generation_config.json``. ``device`` is ``"cpu"``,
    ``"cuda"``, ``"cuda:N"`` or ``"mps"``, and must be present on this machine."""
    model, tokenizer = load_model_and_tokenizer(path, map_location=check_device(device))
    return Pipeline(model, tokenizer, load_generation_config(path), path=path)

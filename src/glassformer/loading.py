"""Open any model directory: a glassformer save/run directory or a Hugging Face checkpoint.

This is the one entry point the CLI commands and :func:`glassformer.load` use, so ``generate``,
``explain`` and friends work on a model trained here and on a converted or raw Hugging Face
directory alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from glassformer.errors import CheckpointError
from glassformer.io import read_json
from glassformer.models import MODEL_CLASSES
from glassformer.models.base import PretrainedModel
from glassformer.tokenizers import load_tokenizer


def read_config_dict(directory: str | os.PathLike) -> dict[str, Any]:
    """``directory/config.json`` as a dict; a missing directory or file is a CheckpointError."""
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; not a model directory")
    return read_json(path, error=CheckpointError)


def is_glassformer_config(config: dict[str, Any]) -> bool:
    """True for our config.json; "bert" is also Hugging Face's model_type, but theirs says hidden_size."""
    return config.get("model_type") in MODEL_CLASSES and ("d_model" in config or "hidden_size" not in config)


def is_glassformer_dir(directory: str | os.PathLike) -> bool:
    return is_glassformer_config(read_config_dict(directory))


def load_model(directory: str | os.PathLike, map_location: str = "cpu") -> PretrainedModel:
    """A glassformer model from ``directory``, converting a Hugging Face checkpoint on the fly."""
    config = read_config_dict(directory)
    from glassformer.memory import check_model_dir  # sized on the meta device, against the header and memory

    check_model_dir(directory, map_location)
    if is_glassformer_config(config):
        return MODEL_CLASSES[config["model_type"]].from_pretrained(directory, map_location=map_location)
    from glassformer.interop import load_hf  # the converters (~0.2 s) only for a Hugging Face directory

    return load_hf(directory).to(map_location)


def load_model_and_tokenizer(directory: str | os.PathLike, map_location: str = "cpu", require_tokenizer: bool = True):
    """``(model, tokenizer)``; the tokenizer is None only when absent and not required."""
    model = load_model(directory, map_location)
    tokenizer = None
    if is_glassformer_dir(directory):
        if (Path(directory) / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(directory)
        elif (Path(directory) / "source.spm").is_file():  # a converted Marian model keeps its SentencePiece files
            from glassformer.interop import load_hf_tokenizer  # only for these directories (see load_model)

            tokenizer = load_hf_tokenizer(directory)
    else:
        from glassformer.interop import load_hf_tokenizer  # only for these directories (see load_model)

        tokenizer = load_hf_tokenizer(directory)
        if tokenizer is not None:
            tokenizer.own_template = True  # the checkpoint's model was trained on its template
    if tokenizer is None and require_tokenizer:
        raise CheckpointError(f"{directory}: no tokenizer (tokenizer.json) in the model directory")
    model.eval()
    return model, tokenizer

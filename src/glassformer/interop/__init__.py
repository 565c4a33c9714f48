"""Hugging Face checkpoints in and out: GPT-2, Llama, Mistral, Qwen2 -> :class:`GPT`, BERT -> :class:`BERT`,
Marian -> :class:`Transformer`.

    model = load_hf("path/to/hf-dir")          # load_hf(dir, expect=GPT) refuses another family
    tokenizer = load_hf_tokenizer("path/to/hf-dir")
    save_hf(model, "out/")                      # config.json + model.safetensors for transformers
    load_sentence_encoder("all-MiniLM-L6-v2/").encode(texts)   # = SentenceTransformer(dir).encode(texts)

One file per family (``gpt2.py``, ``llama.py``, ``bert.py``, ``marian.py``, and ``sentence_transformers.py`` for
the pooling and Normalize modules of sentence-transformers directories) holds an explicit key map from
their parameter names to ours, the transposes it needs, and the config translation; foreign
names such as ``c_attn`` appear nowhere else. ``weights.py`` reads the weight files without
trusting them. ``config.json`` is pure data: a config that asks for remote code is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

from glassformer.errors import CheckpointError
from glassformer.interop import bert, gpt2, llama, marian
from glassformer.interop.keymap import HFConfig
from glassformer.interop.sentence_transformers import SentenceEncoder, load_sentence_encoder
from glassformer.interop.weights import read_weights
from glassformer.io import atomic_write, atomic_write_json, make_dirs, read_json
from glassformer.models import MODEL_CLASSES
from glassformer.models.base import PretrainedModel

log = logging.getLogger(__name__)

# config.json model_type -> the file that converts it (llama.py reads three model_types)
FAMILIES: dict[str, ModuleType] = {t: m for m in (gpt2, llama, bert, marian) for t in getattr(m, "MODEL_TYPES", (m.MODEL_TYPE,))}
HF_WEIGHTS_NAME = "model.safetensors"

__all__ = ["FAMILIES", "SentenceEncoder", "export_hf", "load_hf", "load_hf_tokenizer", "load_sentence_encoder",
           "read_hf_config", "save_hf", "write_hf"]


def read_hf_config(directory: str | os.PathLike) -> HFConfig:
    """``config.json`` of a Hugging Face directory, checked: a known model_type, no remote code."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json; not a model directory")
    data = read_json(path, error=CheckpointError)
    if "auto_map" in data:
        # auto_map points transformers at Python files shipped with the checkpoint; we never run them
        raise CheckpointError(f"{path}: asks for remote code (auto_map); refused, glassformer never runs code from a checkpoint")
    model_type = data.get("model_type")
    if model_type in MODEL_CLASSES and "d_model" in data and "hidden_size" not in data:  # "bert" is both ours and theirs
        cls = MODEL_CLASSES[model_type].__name__
        raise CheckpointError(f"{path}: a glassformer {cls}, not a Hugging Face checkpoint; load it with {cls}.from_pretrained")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not supported; glassformer reads {', '.join(sorted(FAMILIES))}"
        )
    return HFConfig(data, path)


def load_hf(directory: str | os.PathLike, expect: type | None = None) -> PretrainedModel:
    """The glassformer model holding a Hugging Face checkpoint (GPT-2, BERT or Marian).

    ``expect`` is the class the caller wants (e.g. ``GPT``); a checkpoint of another family is an
    error. Weights come from ``model.safetensors`` (validated), a sharded
    ``model.safetensors.index.json``, or ``pytorch_model.bin`` read with ``weights_only=True``.
    Every checkpoint tensor is used or the load fails, and every shape is checked.
    """
    cfg = read_hf_config(directory)
    family = FAMILIES[cfg.data["model_type"]]
    if expect is not None and not issubclass(family.MODEL_CLASS, expect):
        raise CheckpointError(
            f"{cfg.path}: a {cfg.data['model_type']} checkpoint loads as {family.MODEL_CLASS.__name__}, not {expect.__name__}"
        )
    if hasattr(family, "load_directory"):  # reads one tensor at a time into the model
        model = family.load_directory(cfg, Path(directory))
    else:
        weights, source = read_weights(directory)
        model = family.load(cfg, weights, source, Path(directory))
    model.eval()
    return model


def export_hf(model: PretrainedModel) -> tuple[dict, dict]:
    """``(config.json contents, tensors)`` of ``model`` in its Hugging Face family's layout.

    GPT -> GPT2LMHeadModel (LlamaForCausalLM / Qwen2ForCausalLM with rotary positions), BERT -> BertModel / BertForMaskedLM / BertForSequenceClassification
    (by its heads), Transformer -> MarianMTModel. A model whose config has no counterpart in that
    family (e.g. a post-LN GPT) is refused with the reason.
    """
    family = next((f for f in FAMILIES.values() if type(model) is f.MODEL_CLASS and getattr(f, "accepts", lambda m: True)(model)), None)
    if family is None:
        raise TypeError(f"save_hf writes GPT, BERT or Transformer models, not {type(model).__name__}")
    config, tensors = family.export(model)
    return config, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def save_hf(model: PretrainedModel, directory: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers`` loads with the same outputs."""
    write_hf(directory, *export_hf(model))


def write_hf(directory: str | os.PathLike, config: dict, tensors: dict) -> None:
    """Write what :func:`export_hf` returned; each file appears whole or not at all."""
    from safetensors.torch import save_file

    directory = make_dirs(directory)
    atomic_write(directory / HF_WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write_json(directory / "config.json", config)


def load_hf_tokenizer(directory: str | os.PathLike):
    """The tokenizer stored next to a checkpoint, or None when there is none.

    ``tokenizer.json`` (BERT's WordPiece, GPT-2's byte-level BPE) loads through the
    ``tokenizers`` library; Marian's ``source.spm``/``target.spm`` + ``vocab.json`` through
    ``sentencepiece``. Either way the ids match ``transformers``' tokenizer on the same text.
    """
    from glassformer.interop.marian_tokenizer import MarianTokenizer, is_marian_tokenizer_dir

    directory = Path(directory)
    if is_marian_tokenizer_dir(directory):
        return MarianTokenizer(directory)
    if (directory / "tokenizer.json").is_file():
        from glassformer.tokenizers import load_tokenizer

        return load_tokenizer(directory)
    legacy = [n for n in ("vocab.txt", "merges.txt", "vocab.json") if (directory / n).is_file()]
    if legacy:
        log.warning("%s: has %s but no tokenizer.json; re-save the tokenizer with transformers "
                    "(tokenizer.save_pretrained) to write one", directory, ", ".join(legacy))
    return None

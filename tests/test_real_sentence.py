"""sentence-transformers directories: embed follows modules.json (pooling, Normalize, max_seq_length).

Tiny random BERTs written in the Hugging Face layout (``save_hf``) with the synthetic padded
tokenizer of tests/data/ and a modules.json for each pooling mode. With `sentence-transformers`
installed, ``glassformer embed`` and :func:`load_sentence_encoder` must equal
``SentenceTransformer(dir).encode`` (cosine >= 0.99999), batched and one by one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from glassformer.cli import main
from glassformer.errors import CheckpointError
from glassformer.interop import load_sentence_encoder, save_hf
from glassformer.interop.sentence_transformers import read_sentence_config
from glassformer.models import BERT, BERTConfig
from glassformer.tokenizers import load_tokenizer

DATA = Path(__file__).parent / "data"
TEXTS = ["The cat sat.", "a", "Café naïve résumé", "emoji 😀 and 日本語", "UPPER Case Hello", "<|pad|> Typed",
         " ".join(["the quick brown fox jumps over the lazy dog"] * 4), "tabs\tand   spaces"]
MODES = {
    "mean": {"pooling_mode_mean_tokens": True},
    "cls": {"pooling_mode_cls_token": True},
    "max": {"pooling_mode_max_tokens": True},
    "mean_sqrt_len_tokens": {"pooling_mode_mean_sqrt_len_tokens": True},
}


def st_dir(tmp_path: Path, mode: str, normalize: bool, max_seq_length: int = 12, lower: bool = False,
           folder: str = "padded_wordpiece") -> Path:
    d = tmp_path / f"{mode}-{normalize}-{lower}"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DATA / folder / name, d / name)
    tok = load_tokenizer(d)
    torch.manual_seed(0)
    save_hf(BERT(BERTConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=32,
                            pad_token_id=tok.pad_id)), d)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (d / "2_Normalize").mkdir()
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir()
    flags = {flag: False for m in MODES.values() for flag in m}
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags, **MODES[mode]}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": lower}))
    return d


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("mode", list(MODES))
def test_modules_json_is_read(tmp_path, mode):
    config = read_sentence_config(st_dir(tmp_path, mode, normalize=mode == "mean"))
    assert config.pooling == (mode,) and config.normalize == (mode == "mean") and config.max_seq_length == 12


def test_unsupported_modules_are_refused(tmp_path):
    d = st_dir(tmp_path, "mean", True)
    modules = json.loads((d / "modules.json").read_text())
    (d / "modules.json").write_text(json.dumps(modules + [{"idx": 3, "path": "3_Dense",
                                                            "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(CheckpointError, match=r"modules.json: module 'sentence_transformers.models.Dense' is not supported"):
        read_sentence_config(d)
    (d / "modules.json").write_text(json.dumps(modules[:1]))
    with pytest.raises(CheckpointError, match="no Pooling module"):
        read_sentence_config(d)
    (d / "modules.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="modules.json: not valid JSON"):
        read_sentence_config(d)


def test_no_modules_json_means_plain_bert(tmp_path):
    d = st_dir(tmp_path, "cls", False)
    (d / "modules.json").unlink()
    assert read_sentence_config(d) is None
    v = load_sentence_encoder(d).encode(TEXTS[:2])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)  # the default: mean pooling, normalised


@pytest.mark.parametrize("mode,normalize,lower", [
    ("mean", True, False), ("cls", False, False), ("max", True, False), ("mean_sqrt_len_tokens", False, False),
    ("mean", True, True),  # do_lower_case on a cased byte-level BPE tokenizer
])
def test_equal_to_sentence_transformers(tmp_path, mode, normalize, lower):
    st = pytest.importorskip("sentence_transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    d = st_dir(tmp_path, mode, normalize, lower=lower, folder="gpt2_template" if lower else "padded_wordpiece")
    want = st.SentenceTransformer(str(d), device="cpu").encode(TEXTS, batch_size=4)
    encoder = load_sentence_encoder(d)
    batched = encoder.encode(TEXTS, batch_size=4)
    alone = np.stack([encoder.encode(t) for t in TEXTS])
    assert cosines(batched, want).min() >= 0.99999 and cosines(alone, want).min() >= 0.99999
    assert np.allclose(np.linalg.norm(batched, axis=1), np.linalg.norm(want, axis=1), rtol=1e-4)
    out = tmp_path / "v.json"
    args = ["embed", str(d), "--batch-size", "4", "--out", str(out)] + [a for t in TEXTS for a in ("--prompt", t)]
    assert main(args) == 0
    got = np.array(json.loads(out.read_text())["embeddings"])
    assert cosines(got, want).min() >= 0.99999

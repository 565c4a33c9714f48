"""Bad checkpoints: each is refused with an error that names the file and the fault, and nothing
in a checkpoint is ever executed (pickled code, remote-code configs).

The directories are written by our own ``save_hf`` (no `transformers` needed), then damaged.
"""

from __future__ import annotations

import json
import pathlib
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from glassformer import GPT, GPTConfig
from glassformer.errors import CheckpointError
from glassformer.interop import load_hf, save_hf
from glassformer.interop.weights import validate_safetensors


def hf_dir(path) -> pathlib.Path:
    torch.manual_seed(0)
    save_hf(GPT(GPTConfig.from_name("gpt-tiny")), path)
    return path


def rewrite_header(file, edit) -> None:
    """Apply ``edit`` to the JSON header of a safetensors file, keeping the data bytes."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def entry(header, key="transformer.wpe.weight"):
    return header[key]


# ------------------------------------------------------------------------------ config.json


def test_unknown_model_type(tmp_path):
    d = hf_dir(tmp_path)
    (d / "config.json").write_text(json.dumps({"model_type": "gemma", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'gemma' is not supported; glassformer reads bert, gpt2, llama, marian, mistral, qwen2"):
        load_hf(d)


def test_remote_code_is_refused_and_never_imported(tmp_path, monkeypatch):
    d = hf_dir(tmp_path / "ckpt")
    sentinel = tmp_path / "IMPORTED"
    (d / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(config))
    monkeypatch.syspath_prepend(str(d))
    with pytest.raises(CheckpointError, match=r"asks for remote code \(auto_map\); refused"):
        load_hf(d)
    assert not sentinel.exists()


def test_config_field_of_wrong_type_is_named(tmp_path):
    d = hf_dir(tmp_path)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "n_layer": "two"}))
    with pytest.raises(CheckpointError, match=r"config.json: field 'n_layer' must be int, got 'two'"):
        load_hf(d)


# ------------------------------------------------------------------------------ safetensors


@pytest.mark.parametrize("damage,match", [
    (lambda f: f.write_bytes(struct.pack("<Q", 10**9) + f.read_bytes()[8:]), r"header length 1000000000 runs past the end of the file"),
    (lambda f: f.write_bytes(f.read_bytes()[:-100]), r"tensor '.*': data_offsets \[\d+, \d+\] fall outside the \d+ data bytes"),
    (lambda f: f.write_bytes(b"\x05\x00"), r"2 bytes is too short for a safetensors file"),
    (lambda f: f.write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\x00" * 16), r"header is not valid JSON"),
    (lambda f: rewrite_header(f, lambda h: entry(h).update(shape=[64, 33])),
     r"tensor 'transformer.wpe.weight': dtype F32 and shape \[64, 33\] need 8448 bytes, but its offsets span 8192"),
    (lambda f: rewrite_header(f, lambda h: entry(h).update(dtype="F16")), r"dtype F16 and shape \[64, 32\] need 4096 bytes"),
    (lambda f: rewrite_header(f, lambda h: entry(h).update(dtype="F33")), r"unknown dtype 'F33'"),
    (lambda f: rewrite_header(f, lambda h: entry(h).update(data_offsets=[10**12, 10**12 + 8192])), r"fall outside"),
    (lambda f: rewrite_header(f, lambda h: entry(h).update(shape=[-64, 32])), r"shape \[-64, 32\] is not a list of non-negative integers"),
    (lambda f: rewrite_header(f, lambda h: entry(h, "transformer.wte.weight").update(data_offsets=entry(h)["data_offsets"])),
     r"overlap in the data section"),
])
def test_malformed_safetensors_is_refused_by_name(tmp_path, damage, match):
    d = hf_dir(tmp_path)
    damage(d / "model.safetensors")
    with pytest.raises(CheckpointError, match=match) as err:
        load_hf(d)
    assert "model.safetensors" in str(err.value)


def test_validator_accepts_what_safetensors_writes(tmp_path):
    tensors = {"a": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.arange(7), "c": torch.zeros(0, 4), "d": torch.tensor(2.0)}
    save_file(tensors, tmp_path / "x.safetensors")
    header = validate_safetensors(tmp_path / "x.safetensors")
    assert {k: v["shape"] for k, v in header.items()} == {"a": [3, 5], "b": [7], "c": [0, 4], "d": []}


def test_missing_weight_is_named(tmp_path):
    d = hf_dir(tmp_path)
    state = load_file(d / "model.safetensors")
    del state["transformer.h.1.ln_2.bias"]
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing weight 'transformer.h.1.ln_2.bias'"):
        load_hf(d)


def test_unexpected_weight_is_named(tmp_path):
    d = hf_dir(tmp_path)
    state = load_file(d / "model.safetensors")
    state["score.weight"] = torch.zeros(2, 32)  # GPT2ForSequenceClassification's head: we have none
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected weight 'score.weight': glassformer's GPT has no such part"):
        load_hf(d)


def test_shape_that_contradicts_the_config_is_named(tmp_path):
    d = hf_dir(tmp_path)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "n_positions": 128}))
    with pytest.raises(CheckpointError, match=r"weight 'transformer.wpe.weight' has shape \(64, 32\), the config implies \(128, 32\)"):
        load_hf(d)


# ------------------------------------------------------------------------------ shards


def write_shards(d, weight_map_edit=None):
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in halves.items():
        save_file({k: state[k] for k in ks}, d / name)
    weight_map = {k: name for name, ks in halves.items() for k in ks}
    if weight_map_edit:
        weight_map_edit(weight_map)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoint_loads(tmp_path):
    d = hf_dir(tmp_path)
    want = load_hf(d).state_dict()
    write_shards(d)
    got = load_hf(d).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update({"transformer.wte.weight": "../../etc/passwd.safetensors"}), r"points at '../../etc/passwd.safetensors', not a .safetensors file in this folder"),
    (lambda m: m.update({"transformer.wte.weight": "model-00003-of-00002.safetensors"}), r"shard model-00003-of-00002.safetensors is missing"),
    (lambda m: m.update({"transformer.wte.weight": m["transformer.wpe.weight"]}) if m["transformer.wte.weight"] != m["transformer.wpe.weight"]
     else m.update({"transformer.wte.weight": m["transformer.h.0.ln_1.bias"]}), r"missing weight 'transformer.wte.weight', which model.safetensors.index.json places there"),
])
def test_bad_shard_index_is_refused(tmp_path, edit, match):
    d = hf_dir(tmp_path / "ckpt")
    write_shards(d, edit)
    with pytest.raises(CheckpointError, match=match):
        load_hf(d)


# ------------------------------------------------------------------------------ pickles


class TouchSentinel:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path, writer):
    d = hf_dir(tmp_path / "ckpt")
    sentinel = tmp_path / "PWNED"
    state = {k: v for k, v in load_file(d / "model.safetensors").items()}
    state["transformer.h.0.attn.c_attn.weight"] = TouchSentinel(sentinel)
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as f:
        torch.save(state, f) if writer == "torch.save" else pickle.dump(state, f)
    assert not sentinel.exists()
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refused to unpickle: it asks for more than tensors .*nothing in it was run"):
        load_hf(d)
    assert not sentinel.exists()


def test_plain_pickled_state_dict_loads(tmp_path):
    d = hf_dir(tmp_path)
    want = load_hf(d).state_dict()
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    got = load_hf(d).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_pickle_of_something_else_is_refused(tmp_path):
    d = hf_dir(tmp_path)
    torch.save([torch.zeros(1)], d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"expected a dict of tensors, found list"):
        load_hf(d)


def test_no_weights_at_all(tmp_path):
    d = hf_dir(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights found \(looked for model.safetensors"):
        load_hf(d)

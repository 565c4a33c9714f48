"""``GenerationConfig``: frozen, validated once, read and written with Hugging Face's keys, made into flags once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import pytest

from glassformer.cli.flags import add_generation_flags, config_from_args, flag_fields
from glassformer.errors import CheckpointError
from glassformer.generation.config import GenerationConfig, load_generation_config


@pytest.mark.parametrize("name,value", [
    ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("max_new_tokens", True),
    ("temperature", -0.1), ("temperature", math.nan), ("temperature", math.inf), ("temperature", "hot"),
    ("top_k", 0), ("top_k", 3.0), ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan),
    ("repetition_penalty", 0.0), ("repetition_penalty", math.inf), ("seed", 1.5),
    ("num_beams", 0), ("length_penalty", math.nan), ("stop", [1]), ("eos_token_id", -1),
    ("suppress_tokens", ["a"]), ("bos_token_id", -2), ("use_cache", "yes"),
])
def test_every_bad_value_is_refused_naming_its_field(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        GenerationConfig(**{name: value})


def test_frozen_hashable_and_replaced_with_validation():
    c = GenerationConfig(temperature=0.8, stop=["\n"], eos_token_id=[2, 3])
    assert c.stop == ("\n",) and c.eos_token_id == (2, 3) and hash(c) == hash(GenerationConfig(**c.changes()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.temperature = 1.0
    with pytest.raises(ValueError, match="top_p"):
        c.replace(top_p=2.0)
    with pytest.raises(ValueError, match="unknown generation setting 'beam'"):
        c.replace(beam=2)
    with pytest.raises(ValueError, match="beam search is deterministic"):
        GenerationConfig(num_beams=2, temperature=0.5)
    assert (c.strategy, GenerationConfig().strategy, GenerationConfig(num_beams=3).strategy) == ("sample", "greedy", "beam")
    assert GenerationConfig(temperature=0.8, top_k=40).describe() == "temperature 0.8, top-k 40"
    assert GenerationConfig().describe() == "greedy"


def test_a_strategy_given_by_the_user_silences_the_other_from_the_file():
    sampling = GenerationConfig(temperature=0.8, top_k=40, max_new_tokens=9)
    assert sampling.with_overrides(num_beams=3) == GenerationConfig(num_beams=3, max_new_tokens=9)
    beams = GenerationConfig(num_beams=4, length_penalty=0.6)
    assert beams.with_overrides(temperature=0.7) == GenerationConfig(temperature=0.7, length_penalty=0.6)
    with pytest.raises(ValueError, match="beam search is deterministic"):
        beams.with_overrides(num_beams=2, temperature=0.7)  # both at once: a contradiction


def test_saved_file_uses_hugging_face_keys_and_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        c = GenerationConfig(max_new_tokens=20, temperature=0.8, top_k=40, stop=["\n\n"], suppress_tokens=[0])
        path = c.save(tmp_path)
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    data = json.loads(path.read_text())
    assert data["do_sample"] is True and data["num_beams"] == 1 and data["top_k"] == 40 and data["stop"] == ["\n\n"]
    assert load_generation_config(tmp_path) == c


def test_files_written_by_transformers_are_read_and_ours_are_read_by_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    theirs = transformers.GenerationConfig(num_beams=4, max_length=21, do_sample=False, bad_words_ids=[[5]],
                                           length_penalty=0.6, eos_token_id=2)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_generation_config(tmp_path / "hf")
    assert (ours.num_beams, ours.max_new_tokens, ours.suppress_tokens, ours.length_penalty, ours.eos_token_id) == \
        (4, 20, (5,), 0.6, 2)
    assert ours.temperature == 0.0
    GenerationConfig(temperature=0.7, top_p=0.9, max_new_tokens=12).save(tmp_path / "ours")
    back = transformers.GenerationConfig.from_pretrained(tmp_path / "ours")
    assert (back.do_sample, back.temperature, back.top_p, back.max_new_tokens, back.num_beams) == (True, 0.7, 0.9, 12, 1)


def test_a_bad_file_is_an_error_naming_the_file_and_key(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": "high"}))
    with pytest.raises(CheckpointError, match=r"generation_config.json: top_p must be in \(0, 1\]"):
        load_generation_config(tmp_path)


def test_flags_are_made_from_the_fields_once():
    p = argparse.ArgumentParser(add_help=False)
    add_generation_flags(p)
    dests = {a.dest for a in p._actions if a.dest not in ("help",)}
    assert dests == {f.name for f in flag_fields()}
    args = p.parse_args(["--beam", "3", "--length-penalty", "0.5", "--stop", r"\t"])
    assert config_from_args(args) == GenerationConfig(num_beams=3, length_penalty=0.5, stop=("\t",))
    for f in flag_fields():  # every flag's help is the field's one comment
        assert f.metadata["help"] in p.generation_base_help[f.name]

"""``GenerationConfig``: every decoding setting in one frozen, validated dataclass.

    config = GenerationConfig(max_new_tokens=50, temperature=0.8, top_k=40, seed=0)
    config = load_generation_config("runs/demo-gpt")        # generation_config.json, else defaults
    config.replace(temperature=0.0).save("runs/demo-gpt")   # new values are validated again

A model directory may hold ``generation_config.json``; it is read with the Hugging Face
spellings where they exist (``num_beams``, ``do_sample``, ``max_length``, ``bad_words_ids``,
``eos_token_id``, ...) and written with them, so either library reads the other's file. Other
keys (``transformers_version``, ...) are ignored; a known key with a bad value is an error that
names the file and the key. The command-line flags are made from the fields' ``metadata``
(:mod:`.flags`), so a setting is declared, documented and checked in this one place.

This module imports only the standard library and :mod:`glassformer.io`, so building ``--help``
stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glassformer.errors import CheckpointError
from glassformer.io import atomic_write_json, make_dirs, read_json

FILE = "generation_config.json"
SAMPLING = ("temperature", "top_k", "top_p", "repetition_penalty")  # the settings beam search refuses


def _setting(default: Any, help: str, flag: bool = True) -> Any:
    """A field whose ``help`` is both its documentation and its command-line help."""
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class GenerationConfig:
    """How to choose each new token. Immutable: use :meth:`replace` for a changed copy."""

    max_new_tokens: int = _setting(64, "at most this many new tokens per input (>= 1)")
    temperature: float = _setting(0.0, "0 = greedy (argmax); > 0 samples from softmax(logits / temperature)")
    top_k: int | None = _setting(None, "sample among the k most likely tokens (>= 1; unset = all)")
    top_p: float | None = _setting(None, "sample among the most likely tokens holding probability p, in (0, 1]")
    repetition_penalty: float = _setting(1.0, "> 1 makes tokens already seen less likely (1 = off)")
    seed: int | None = _setting(None, "makes sampling reproducible: input i draws with seed + i")
    num_beams: int = _setting(1, "beam width; 1 = one sequence (greedy or sampled), > 1 = beam search")
    length_penalty: float = _setting(1.0, "beam score = log P / length ** this (0 favours short outputs)")
    stop: tuple[str, ...] = _setting((), "end an input's generation once its text holds one of these strings")
    eos_token_id: int | tuple[int, ...] | None = _setting(None, "end at this id (or any of these); unset = the model's", False)
    suppress_tokens: tuple[int, ...] = _setting((), "ids that are never generated (e.g. the pad token)", False)
    bos_token_id: int | None = _setting(None, "what an empty prompt starts from; unset = the model's", False)
    pad_token_id: int | None = _setting(None, "fills rows that ended early in tensor outputs; unset = the model's", False)
    use_cache: bool = _setting(True, "keep keys and values between steps (False recomputes; for checking)", False)

    def __post_init__(self) -> None:
        # sequences become tuples, so the config stays hashable and truly frozen
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if isinstance(self.stop, (list, tuple)):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.suppress_tokens, (list, tuple, set, frozenset)):
            object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens))
        if isinstance(self.eos_token_id, (list, tuple, set, frozenset)):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        self._validate()

    def _validate(self) -> None:
        _integer("max_new_tokens", self.max_new_tokens, minimum=1)
        _number("temperature", self.temperature, "a finite number >= 0 (0 means greedy)", lambda x: x >= 0)
        if self.top_k is not None:
            _integer("top_k", self.top_k, minimum=1, hint=" (leave it unset to keep every token)")
        if self.top_p is not None:
            _number("top_p", self.top_p, "in (0, 1]", lambda x: 0 < x <= 1)
        _number("repetition_penalty", self.repetition_penalty, "a finite number > 0 (1 = off)", lambda x: x > 0)
        if self.seed is not None:
            _integer("seed", self.seed, minimum=0)
            if self.seed >= 2**63:  # torch seeds are 64-bit; input i draws with seed + i
                raise ValueError(f"seed must be below 2**63, got {self.seed}")
        _integer("num_beams", self.num_beams, minimum=1)
        _number("length_penalty", self.length_penalty, "a finite number", lambda x: True)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a list of strings, got {self.stop!r}")
        if self.eos_token_id is not None:
            for i in self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,):
                _integer("eos_token_id", i, minimum=0)
        if not isinstance(self.suppress_tokens, tuple):
            raise ValueError(f"suppress_tokens must be a list of ids, got {self.suppress_tokens!r}")
        for i in self.suppress_tokens:
            _integer("suppress_tokens", i, minimum=0)
        for name in ("bos_token_id", "pad_token_id"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), minimum=0)
        if not isinstance(self.use_cache, bool):
            raise ValueError(f"use_cache must be true or false, got {self.use_cache!r}")
        if self.num_beams > 1 and self.samples:
            raise ValueError(
                "beam search is deterministic: drop temperature/top_k/top_p/repetition_penalty, or use num_beams=1"
            )

    # ----------------------------------------------------------------------- derived views

    @property
    def samples(self) -> bool:
        """True when any setting makes decoding other than a plain argmax / beam search."""
        return self.temperature != 0 or self.top_k is not None or self.top_p is not None or self.repetition_penalty != 1

    @property
    def strategy(self) -> str:
        """``"beam"``, ``"sample"`` or ``"greedy"``."""
        return "beam" if self.num_beams > 1 else "sample" if self.temperature > 0 else "greedy"

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with ``changes`` (validated again); unknown names are a ValueError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown generation setting {unknown[0]!r}; known: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, **given: Any) -> GenerationConfig:
        """A copy with the settings a user gave (flags, keywords), where a setting for one strategy
        silences the other's that came from here: sampling settings on a config with beams give one
        beam, and ``num_beams > 1`` on a sampling config drops its sampling settings."""
        if not given:
            return self
        base = self.changes()
        sampling = any(k in given for k in SAMPLING)
        if sampling and "num_beams" not in given:
            base.pop("num_beams", None)
        if given.get("num_beams", 1) > 1 and not sampling:
            for k in SAMPLING:
                base.pop(k, None)
        return GenerationConfig().replace(**{**base, **given})

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the defaults, in declaration order."""
        default = GenerationConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def describe(self) -> str:
        """A short human summary, e.g. ``temperature 0.8, top-k 40`` or ``greedy``."""
        parts = [f"{k.replace('_', '-')} {show_value(v)}" for k, v in self.changes().items()
                 if k not in ("eos_token_id", "suppress_tokens", "bos_token_id", "pad_token_id", "use_cache")]
        return ", ".join(["greedy", *parts] if self.strategy == "greedy" else parts)

    # ------------------------------------------------------------------------------ files

    def to_json_dict(self) -> dict[str, Any]:
        """The ``generation_config.json`` object: Hugging Face keys where they exist."""
        out: dict[str, Any] = {"do_sample": self.temperature > 0}
        for name, value in self.changes().items():
            if name == "use_cache":
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        if self.num_beams == 1:
            out.setdefault("num_beams", 1)
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], source: str | os.PathLike = FILE) -> GenerationConfig:
        """Read our keys and the Hugging Face spellings; errors name ``source`` and the key."""
        return cls(**settings_from_json(data, source))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/generation_config.json`` atomically (creating the directory); returns its path."""
        return atomic_write_json(make_dirs(directory) / FILE, self.to_json_dict())


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(GenerationConfig)]


def settings_from_json(data: dict[str, Any], source: str | os.PathLike = FILE) -> dict[str, Any]:
    """The settings a ``generation_config.json`` object sets explicitly, under our field names."""
    data = dict(data)
    if "beam" in data and "num_beams" not in data:  # glassformer's own spelling before 0.2
        data["num_beams"] = data["beam"]
    if isinstance(data.get("max_length"), int) and "max_new_tokens" not in data:
        data["max_new_tokens"] = max(1, data["max_length"] - 1)  # for an encoder-decoder: minus the start token
    if data.get("do_sample") is False:
        data["temperature"] = 0.0  # transformers samples only when do_sample is true
        for key in ("top_k", "top_p"):
            data.pop(key, None)  # ignored by transformers without do_sample
    elif data.get("do_sample") is True and "temperature" not in data:
        data["temperature"] = 1.0
    if "bad_words_ids" in data and "suppress_tokens" not in data:
        words = data["bad_words_ids"]
        if isinstance(words, list) and all(isinstance(w, list) and len(w) == 1 for w in words):
            data["suppress_tokens"] = [w[0] for w in words]  # one-token "bad words" only
    out = {}
    for f in dataclasses.fields(GenerationConfig):
        value = data.get(f.name)
        if value is None:
            continue
        if f.name == "top_k" and value == 0:
            continue  # transformers' "top_k": 0 means no top-k filter
        if f.name == "stop" and not isinstance(value, list):
            raise CheckpointError(f"{source}: stop must be a list of strings, got {value!r}")
        out[f.name] = value
    try:
        GenerationConfig(**out)  # checks every value, naming the field
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return out


def read_generation_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The settings ``directory/generation_config.json`` sets, under our field names ({} when absent)."""
    path = Path(directory) / FILE
    if not path.is_file():
        return {}
    return settings_from_json(read_json(path, error=CheckpointError), path)


def load_generation_config(directory: str | os.PathLike, **overrides: Any) -> GenerationConfig:
    """``directory``'s generation_config.json (defaults when absent), then ``overrides``."""
    return GenerationConfig(**{**read_generation_config(directory), **overrides})


# ------------------------------------------------------------------------------ checks


def _integer(name: str, value: Any, minimum: int | None = None, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        want = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise ValueError(f"{name} must be {want}{hint}, got {value!r}")


def _number(name: str, value: Any, what: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")


def show_value(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(repr(v) if isinstance(v, str) else str(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)

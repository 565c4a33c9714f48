"""``generation_config.json``: the decoding defaults stored next to a model.

The file is optional. Command-line flags win over it, and it wins over the built-in defaults.
Our own keys are the flag names with underscores; the Hugging Face spellings found in
checkpoints are understood too (``num_beams``, ``do_sample``, ``max_length``,
``bad_words_ids``). Other keys are ignored; a known key with a bad value is an error naming the
file and the key.

    {"max_new_tokens": 200, "temperature": 0.8, "top_k": 40, "stop": ["\\n\\n"]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from glassformer.errors import CheckpointError

FILE = "generation_config.json"

# key -> (accepted types, description for the error message)
_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "max_new_tokens": ((int,), "an integer >= 1"),
    "temperature": ((int, float), "a number >= 0"),
    "top_k": ((int,), "an integer >= 1"),
    "top_p": ((int, float), "a number in (0, 1]"),
    "repetition_penalty": ((int, float), "a number > 0"),
    "seed": ((int,), "an integer"),
    "beam": ((int,), "an integer >= 1"),
    "length_penalty": ((int, float), "a number"),
    "stop": ((list,), "a list of strings"),
    "eos_token_id": ((int, list), "an id or a list of ids"),
    "suppress_tokens": ((list,), "a list of ids"),
}


def read_generation_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The defaults in ``directory/generation_config.json`` under our names ({} when absent)."""
    path = Path(directory) / FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    data = dict(data)
    # Hugging Face spellings
    if "num_beams" in data and "beam" not in data:
        data["beam"] = data["num_beams"]
    if "max_length" in data and "max_new_tokens" not in data and isinstance(data["max_length"], int):
        data["max_new_tokens"] = max(1, data["max_length"] - 1)  # for an encoder-decoder: minus the start token
    if data.get("do_sample") is False:
        data["temperature"] = 0.0  # transformers samples only when do_sample is true
    elif data.get("do_sample") is True and "temperature" not in data:
        data["temperature"] = 1.0
    if "bad_words_ids" in data and "suppress_tokens" not in data:
        words = data["bad_words_ids"]
        if isinstance(words, list) and all(isinstance(w, list) and len(w) == 1 for w in words):
            data["suppress_tokens"] = [w[0] for w in words]  # one-token "bad words" only
    out: dict[str, Any] = {}
    for key, (types, what) in _KEYS.items():
        if key not in data or data[key] is None:
            continue
        value = data[key]
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and key == "stop":
            ok = all(isinstance(s, str) for s in value)
        if ok and key in ("suppress_tokens", "eos_token_id") and isinstance(value, list):
            ok = all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        if not ok:
            raise CheckpointError(f"{path}: {key} must be {what}, got {value!r}")
        out[key] = value
    return out

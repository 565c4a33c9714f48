"""Internal errors that reached the user as if they were input errors (issue 30, "Errors and
hangs", the second pass): each input now gets one line naming the problem and the file or flag."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_refused, run_cli
from glassformer.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("field,value,match", [
    ("chars", [1, 2, 3], "single characters, got 1"),
    ("chars", [["a"]], "single characters, got ['a']"),
    ("specials", [7], "special token is a non-empty string, got 7"),
    ("special_roles", {"bos": 3}, "special_roles maps role names to tokens"),
])
def test_a_char_tokenizer_holding_other_types_names_the_file(dirs, tmp_path, capsys, field, value, match):
    from glassformer.tokenizers import load_tokenizer

    model = tmp_path / "m"
    shutil.copytree(dirs["gpt"], model)
    data = json.loads((model / "tokenizer.json").read_text())
    data[field] = value
    (model / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{model / 'tokenizer.json'}: .*{match[:20]}"):
        load_tokenizer(model)
    assert_refused(capsys, "generate", model, "--prompt", "hello", match=match)


def panicking_tokenizer(path):
    """A word-level tokenizer.json whose Split pre-tokenizer backtracks without end on a run of 'a's."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(a|aa)+$"), "isolated")
    path.write_text(tok.to_str())
    return path


def test_a_tokenizer_whose_regex_panics_is_a_data_error_naming_the_file(tmp_path):
    from glassformer.tokenizers import load_tokenizer

    path = panicking_tokenizer(tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)
    assert tok.encode("b") == [1]  # other texts still encode
    for encode in (tok.encode, tok.encode_for_model, lambda t: tok.encode_batch([t])):
        with pytest.raises(DataError, match=f"{path} failed on this text .*retry-limit"):
            encode("a" * 40 + "!")


# ------------------------------------------------------------------------------ sizes and seeds


def test_heads_with_a_huge_batch_is_refused_before_allocating(dirs, capsys):
    assert_refused(capsys, "heads", dirs["gpt"], "--batch", str(10**9), match="--batch 1000000000 with --n 32")
    assert_refused(capsys, "heads", dirs["gpt"], "--n", str(10**9), match="use a smaller --n")


def test_train_with_a_seed_beyond_64_bits_is_a_clear_error(corpus, tmp_path, capsys):
    code, err = run_cli(["train", "gpt", "--data", str(corpus), "--out", str(tmp_path / "run"), "--seed", str(10**23)],
                        capsys)
    assert code == 2 and "seed must be below 2**63" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_train_seq2seq_with_a_huge_num_examples_is_refused_before_generating(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(["train", "seq2seq", "--out", str(tmp_path / "run"), "--num-examples", str(10**12)], capsys)
    assert code == 2 and "--num-examples 1000000000000: needs about" in err and err.count("\n") == 1, err

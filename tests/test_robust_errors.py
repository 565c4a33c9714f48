"""Every input answered in one clear line (issue 30, "Errors and hangs" and item 1): inputs that
gave a traceback, an allocator error or a hang now give one line on stderr and exit 2 (or a
sane result), and every model directory is sized before anything is allocated."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch

from conftest import assert_refused, run_main
from glassformer import errors
from glassformer import io as gio
from glassformer.errors import CheckpointError, DataError
from glassformer.generation.sampling import sample_next
from glassformer.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")


def edited(src, dst, **changes):
    """A copy of model directory ``src`` whose config.json has ``changes``."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# ------------------------------------------------------------------------------ sampling


def test_a_tiny_temperature_is_the_greedy_limit_not_a_crash():
    logits = torch.tensor([[1e9, 0.0, -5.0], [2.0, 3.0, 1.0]])
    for t in (1e-30, 1e-40):
        assert sample_next(logits, temperature=t, generator=torch.Generator().manual_seed(0)).tolist() == [0, 1]
        assert sample_next(logits, temperature=t, top_p=0.9, top_k=2).tolist() == [0, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_scores_are_a_clear_error_greedy_and_sampled(bad):
    logits = torch.tensor([[0.0, bad, 1.0]])
    for t in (0.0, 0.7):
        with pytest.raises(errors.NonFiniteError, match="NaN or infinite"):
            sample_next(logits, temperature=t)


@pytest.fixture(scope="module")
def nan_gpt(dirs, tmp_path_factory):
    from glassformer.loading import load_model

    model = load_model(dirs["gpt"])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    d = tmp_path_factory.mktemp("nan") / "gpt"
    model.save_pretrained(d)
    shutil.copy(dirs["gpt"] / "tokenizer.json", d)
    return d


@pytest.mark.parametrize("flags", [[], ["--temperature", "0.8", "--seed", "1"], ["--beam", "2"]])
def test_a_model_with_nan_weights_is_refused_in_one_line(nan_gpt, capsys, flags):
    assert_refused(capsys, "generate", nan_gpt, "--prompt", "hello", "--max-new-tokens", "3", *flags,
                   match="NaN or infinite")


def test_a_huge_beam_count_is_bounded_before_allocating(dirs, capsys):
    assert_refused(capsys, "generate", dirs["gpt"], "--prompt", "hello", "--beam", str(10**7), match="fewer beams")
    assert_refused(capsys, "translate", dirs["seq2seq"], "--prompt", "hello", "--beam", str(10**7),
                   match="fewer beams")


# ------------------------------------------------------------------------------------- JSON


def test_deeply_nested_json_is_a_clear_error(tmp_path, dirs, capsys):
    deep = "[" * 200_000 + "]" * 200_000
    path = tmp_path / "deep.json"
    path.write_text(deep)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_json(path, error=CheckpointError)
    model = tmp_path / "model"
    shutil.copytree(dirs["gpt"], model)
    (model / "config.json").write_text(deep)
    assert_refused(capsys, "generate", model, "--prompt", "hello", match="nested too deeply")
    from glassformer.data.tables import iter_rows

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine", "label": "a"}\n' + '{"text": ' + deep + "}\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2: not usable JSON \(nested too deeply"):
        list(iter_rows(rows))


# ------------------------------------------------------------------------------- text input


def test_a_non_utf8_prompt_argument_names_the_input_and_the_byte_offset(dirs, capsys):
    prompt = b"hel\xfflo".decode("utf-8", "surrogateescape")  # what Python makes of such an argument
    assert_refused(capsys, "generate", dirs["gpt"], "--prompt", "hello", "--prompt", prompt,
                   match="--prompt 2: not UTF-8 text (byte 0xff at byte offset 3)")
    assert gio.check_text(prompt, "x", errors="replace") == "hel\ufffdlo"


class BytesStdin(io.TextIOWrapper):
    """A stdin whose bytes are not UTF-8, read through its byte layer as sys.stdin is."""

    def isatty(self) -> bool:
        return False


def test_non_utf8_stdin_names_stdin_and_the_byte_offset_or_is_replaced(dirs, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", BytesStdin(io.BytesIO(b"hello\nthe \xfe cat\n"), encoding="utf-8"))
    code, out, err = run_main(capsys, "generate", dirs["gpt"], "--max-new-tokens", "1")
    assert code == 2 and err == "glassformer: error: stdin: not UTF-8 text (byte 0xfe at byte offset 10); fix the " \
                                "input or pass --errors replace\n", err
    monkeypatch.setattr("sys.stdin", BytesStdin(io.BytesIO(b"the \xfe cat\n"), encoding="utf-8"))
    assert gio.read_stdin_text("replace") == "the \ufffd cat\n"


def test_lone_surrogates_from_python_are_a_value_error_naming_the_input(dirs):
    import glassformer

    pipe = glassformer.load(dirs["gpt"])
    with pytest.raises(ValueError, match=r"prompt 2: holds a lone surrogate U\+D800 at character 3"):
        pipe.generate(["hello", "cat\ud800"], max_new_tokens=1)
    with pytest.raises(TypeError, match="expected text"):
        gio.check_text(b"hello", "prompt 1")


# ---------------------------------------------------------------------------------- demos


def test_demo_minutes_inf_is_refused(capsys, tmp_path):
    assert_refused(capsys, "demo", "gpt", "--minutes", "inf", "--out", tmp_path / "d", match="--minutes inf")
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------ hostile directories


HOSTILE = {
    "d_ff": (10**12, "d_ff is 1000000000000"),
    "max_len": (10**13, "max_len is 10000000000000"),
    "vocab_size": (10**15, "vocab_size is 1000000000000000"),
    "n_layers": (10**6, "n_layers is 1000000, but model.safetensors holds 2 decoder layers"),
    "d_model": (64, "d_model is 64"),
}


@pytest.mark.parametrize("field", HOSTILE)
def test_a_config_that_does_not_match_its_weights_names_the_field_before_allocating(field, dirs, tmp_path, capsys):
    value, message = HOSTILE[field]
    model = edited(dirs["gpt"], tmp_path / "m", **{field: value})
    import glassformer

    with pytest.raises(CheckpointError, match=message) as e:
        glassformer.load(model)
    assert str(model / "config.json") in str(e.value)
    assert_refused(capsys, "generate", model, "--prompt", "hello", match=message)


def test_a_matching_config_that_cannot_fit_in_memory_is_refused(dirs, tmp_path, monkeypatch):
    import glassformer
    from glassformer import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 1000)  # a machine with 1 KB free
    with pytest.raises(memory.MemoryLimitError, match="parameters: needs about"):
        glassformer.load(dirs["gpt"])


def test_encoder_decoder_depths_are_checked_per_stack(dirs, tmp_path):
    from glassformer.loading import load_model

    model = edited(dirs["seq2seq"], tmp_path / "m", n_decoder_layers=7)
    with pytest.raises(CheckpointError, match="n_decoder_layers is 7, but model.safetensors holds 2 decoder layers"):
        load_model(model)



def test_a_seed_beyond_64_bits_is_a_clear_error(dirs, capsys):
    assert_refused(capsys, "generate", dirs["gpt"], "--prompt", "hello", "--temperature", "0.5", "--seed", str(10**23),
                   match="seed must be below 2**63")

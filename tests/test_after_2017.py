"""The "after 2017" benchmark (issue 27, item 4): its configs, its pairing, its smoke run. No timed assertions."""

import itertools
import json

import pytest

from conftest import benchmark_module


def test_the_pairing_is_a_round_robin_every_config_once_per_round():
    with benchmark_module("after_2017") as bench:
        names = ["2017", "rotary", "rmsnorm", "swiglu", "gqa", "all"]
        met = []
        for r in range(5):
            pairs = bench.pairings(names, r)
            assert sorted(x for pair in pairs for x in pair) == sorted(names)  # each once, no one alone
            met += [frozenset(p) for p in pairs]
        # five rounds of six: every config meets every other exactly once
        assert sorted(met, key=sorted) == sorted((frozenset(p) for p in itertools.combinations(names, 2)), key=sorted)
        assert bench.pairings(names, 5) == bench.pairings(names, 0)
        odd = bench.pairings(names[:5], 0)  # one left over: beside nothing (the busy loop)
        assert sum(b is None for _, b in odd) == 1
        assert sorted(x for p in odd for x in p if x is not None) == sorted(names[:5])


def test_each_change_alone_and_swiglu_at_the_2017_parameter_count():
    from glassformer.demos import gpt
    from glassformer.models import GPT, GPTConfig

    with benchmark_module("after_2017") as bench:
        demo = gpt.config(100)
        table = bench.configs(demo.n_heads, demo.d_model)
    assert list(table) == ["2017", "rotary", "rmsnorm", "swiglu", "gqa", "all"]
    assert table["2017"] == {} and table["gqa"] == {"n_kv_heads": demo.n_heads // 2}
    assert table["all"] == {**table["rotary"], **table["rmsnorm"], **table["swiglu"], **table["gqa"]}

    def ffn_params(**changes):
        model = GPT(GPTConfig(vocab_size=64, d_model=demo.d_model, n_heads=demo.n_heads, n_layers=1,
                              d_ff=changes.pop("d_ff", demo.ffn_width), max_len=8, **changes))
        return sum(p.numel() for name, p in model.named_parameters() if ".ffn." in name)

    base, gated = ffn_params(), ffn_params(**table["swiglu"])
    assert base > 0 and gated > 0
    assert abs(gated - base) / base < 0.002  # three matrices of d_ff = 2/3 * 4 * d_model hold what two of 4 * d_model do


@pytest.mark.slow  # six real training processes of a few seconds and their scoring: about a minute
def test_smoke_run_reports_every_config_trained_in_pairs_and_learning(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "smoke.json"
    with benchmark_module("after_2017") as bench:
        assert bench.main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = ["2017", "rotary", "rmsnorm", "swiglu", "gqa", "all"]
    assert result["smoke"] and result["seeds"] == [1337] and result["threads_per_run"] == 1 and result["autocast"]
    assert "--max-minutes" in result["base_flags"] and result["base_flags"][result["base_flags"].index("--max-minutes") + 1] == "0.1"
    assert [row["config"] for row in result["summary"]] == names
    runs = {r["config"]: r for r in result["runs"]}
    assert sorted(runs) == sorted(names) and len(result["runs"]) == len(names)
    for name, run in runs.items():
        # trained in a pair: its partner is another config, whose partner is this one
        assert run["beside"] in runs and run["beside"] != name and runs[run["beside"]]["beside"] == name
        # every run learnt: the validation loss ends below the first training steps' loss, and the
        # whole validation split costs fewer bits per character than a uniform guess over the vocabulary
        assert 0 < run["steps"] <= result["cap"]
        assert run["final_val_loss"] < run["first_train_loss"]
        assert run["bits_per_char"] < run["uniform_bits_per_char"]
    assert runs["rotary"]["params"] < runs["2017"]["params"]  # no table of learned positions
    assert runs["gqa"]["params"] < runs["2017"]["params"]  # half the key/value projections
    base = runs["2017"]["bits_per_char"]
    for row in result["summary"]:
        assert row["runs"] == 1 and row["bits_per_char_mean"] == runs[row["config"]]["bits_per_char"]
        assert row["delta_vs_2017"] == pytest.approx(row["bits_per_char_mean"] - base, abs=1e-4)

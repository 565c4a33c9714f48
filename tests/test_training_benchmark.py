"""``benchmarks/train_throughput.py --quick`` runs both sides on the same weights and reports consistent figures."""

import json
import math
import statistics

import pytest

from conftest import benchmark_module

pytestmark = pytest.mark.slow  # a benchmark's smoke run belongs to the slow lane

pytest.importorskip("transformers")


@pytest.fixture
def bench():
    with benchmark_module("train_throughput") as module:
        yield module


def test_quick_benchmark_times_the_same_model_on_both_sides(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "result.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["max_logit_diff"] < 1e-4  # the peer holds our weights: the same function, the same work
    rows = {r["precision"]: r for r in result["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for r in rows.values():
        assert r["ours_tokens_per_s"] > 0 and r["peer_tokens_per_s"] > 0 and r["matmul_peak_gflops"] > 0
        assert r["ratio"] == statistics.median(r["ratios"])  # the median of the per-repeat ratios
        tokens = result["tokens_per_step"]
        assert math.isclose(r["ours_gflops"], result["flops_per_token"] * tokens / r["ours_s_per_step"] / 1e9)
    curve = result["curve"]
    assert len(curve["fp32"]) == len(curve["bf16"]) == 3
    assert curve["max_gap"] == max(abs(a - b) for a, b in zip(curve["fp32"], curve["bf16"]))
    assert "| tiny | fp32 |" in capsys.readouterr().out


@pytest.mark.slow  # four real processes
def test_separate_processes_time_each_side_alone(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "separate.json"
    assert bench.main(["--quick", "--separate", "--json", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["separate_processes"] and len(row["ratios"]) == 2
    assert row["ratio"] == statistics.median(row["ratios"])
    assert row["ours_tokens_per_s"] > 0 and row["peer_tokens_per_s"] > 0
    printed = capsys.readouterr().out
    assert printed.count("page faults") == 4  # each side's own process reports its faults

"""``benchmarks/memory.py`` and ``benchmarks/profile_train.py`` run in ``--quick`` mode and report sane figures.

No timed assertions: only the shape of the output and invariants that hold on any machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import benchmark_module

pytestmark = pytest.mark.slow  # a benchmark's smoke run belongs to the slow lane

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_memory_quick_reports_both_sides_in_separate_processes(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "memory.json"
    stdout = run_script("memory.py", "--quick", "--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert {(r["mode"], r["side"]) for r in rows} == {(m, s) for m in ("train", "decode") for s in ("ours", "peer")}
    assert all(r["shape"] == "tiny" for r in rows)
    assert len({r["params"] for r in rows}) == 1  # the same model on both sides
    for r in rows:
        assert 0 < r["rss_import"] <= r["peak"] and r["rss_built"] <= r["peak"]
        assert r["over_import"] == r["peak"] - r["rss_import"]
        assert r["bytes_per_param"] == pytest.approx(r["peak"] / r["params"])
        assert r["bytes_per_param_over_import"] == pytest.approx(r["over_import"] / r["params"])
        if r["mode"] == "train":
            steps = r["peaks_per_step"]
            assert len(steps) == 2 and steps == sorted(steps) and steps[-1] <= r["peak"] < steps[-1] + 2**20  # a peak only grows (bookkeeping after the last step: < 1 MiB)
        else:
            assert r["new_tokens_produced"] == 8  # greedy ran the whole way, no early stop
    # ours and the peer ran in different processes: their baselines differ (different imports)
    train = {r["side"]: r for r in rows if r["mode"] == "train"}
    assert train["ours"]["rss_import"] != train["peer"]["rss_import"]
    assert "| tiny | train | ours |" in stdout and "| tiny | decode | peer |" in stdout


@pytest.mark.slow
def test_profile_quick_accounts_for_all_the_time(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "profile.json"
    stdout = run_script("profile_train.py", "--quick", "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert [(r["shape"], r["side"]) for r in results] == [("tiny", "ours"), ("tiny", "peer")]
    for r in results:
        total = r["self_total_ms_per_step"]
        assert total > 0 and r["wall_ms_per_step"] > 0
        # every op's self time lands in exactly one category and one phase: nothing lost, nothing twice
        assert sum(r["categories_ms_per_step"].values()) == pytest.approx(total, rel=1e-6)
        assert sum(r["categories_pct"].values()) == pytest.approx(100, rel=1e-6)
        assert sum(r["phases_ms_per_step"].values()) <= total * (1 + 1e-6)
        assert sum(r["phases_ms_per_step"].values()) > 0.9 * total  # the step is (almost) all inside the phases
        for cat in ("matmul/linear", "attention (sdpa)", "layernorm", "optimizer (clip + AdamW + zero_grad)"):
            assert r["categories_ms_per_step"][cat] > 0, cat
        times = [o["self_ms_per_step"] for o in r["top_ops"]]
        assert len(times) == 15 and times == sorted(times, reverse=True)
    assert "| matmul/linear |" in stdout and "Top 15 ops by self CPU time: tiny, ours" in stdout


def test_profile_attributes_generic_ops_to_their_enclosing_op():
    with benchmark_module("profile_train") as bench:

        def event(name, us, children=()):
            e = SimpleNamespace(name=name, self_cpu_time_total=us, cpu_children=list(children), cpu_parent=None)
            for c in children:
                c.cpu_parent = e
            return e

        copy = event("aten::copy_", 3)
        forward = event("## forward", 1, [event("aten::linear", 2, [event("aten::t", 4), event("aten::addmm", 10)]),
                                          event("aten::add", 5, [copy])])
        optimizer = event("## optimizer", 1, [event("aten::mul_", 7)])
        loose = event("aten::randint", 6)
        rows = bench.attribute([forward, optimizer, loose, *forward.cpu_children])  # only roots are walked
        got = {(name, cat, phase): us for name, cat, phase, us in rows}
        assert len(rows) == 9
        assert got[("aten::t", "matmul/linear", "forward")] == 4  # a transpose inside linear is the linear's time
        assert got[("aten::add", bench.ELEMENTWISE, "forward")] == 5
        assert got[("aten::copy_", bench.ELEMENTWISE, "forward")] == 3
        assert got[("aten::mul_", bench.OPTIMIZER, "optimizer")] == 7
        assert got[("## forward", bench.OVERHEAD, "forward")] == 1
        assert got[("aten::randint", bench.ELEMENTWISE, "other")] == 6
        assert sum(rows_us for *_, rows_us in rows) == 39


def test_row_product_quick_reports_every_product():
    with benchmark_module("row_product") as module:
        results = module.main(["--quick"])
    (figures,) = results.values()
    assert len(figures) == 4 and all(v > 0 for v in figures.values())


@pytest.mark.slow
def test_cpu_bf16_quick_times_both_precisions_of_each_shape(tmp_path):
    out = tmp_path / "bf16.json"
    stdout = run_script("cpu_bf16.py", "--quick", "--json", str(out))
    data = json.loads(out.read_text())
    assert [(r["d_model"], r["n_layers"]) for r in data["rows"]] == [(32, 2), (64, 2)]
    for r in data["rows"]:
        assert r["fp32_ms"] > 0 and r["bf16_ms"] > 0
        assert r["bf16_over_fp32"] == pytest.approx(r["bf16_ms"] / r["fp32_ms"], rel=0.01)
        assert f"{r['params']:,}" in stdout
    assert data["rows"][0]["params"] < data["rows"][1]["params"]


@pytest.mark.slow
def test_lora_memory_quick_reports_full_and_lora_of_the_same_model(tmp_path):
    out = tmp_path / "lora.json"
    run_script("lora_memory.py", "--quick", "--json", str(out))
    full, lora = json.loads(out.read_text())["rows"]
    assert (full["mode"], lora["mode"]) == ("full", "lora") and full["params"] == lora["params"]
    assert full["trainable"] == full["params"] and 0 < lora["trainable"] < full["params"]
    assert full["peak_mb"] > 0 and lora["peak_mb"] > 0 and full["step_s"] > 0 and lora["step_s"] > 0

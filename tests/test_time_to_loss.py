"""Time to loss as users run it (issue 28): the records it reads, and its smoke run. No timed assertions."""

import json
import math
import time

import pytest

from conftest import benchmark_module, tiny_flags
from glassformer.cli import main


def test_metrics_rows_carry_the_wall_clock_and_the_seconds_spent_outside_the_steps(corpus, tmp_path):
    out = tmp_path / "run"
    before = time.time()
    assert main(["train", "gpt", "--out", str(out), *tiny_flags(corpus), "--max-steps", "4", "--eval-every", "2"]) == 0
    after = time.time()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    kinds = {"eval", "callbacks", "best_model", "checkpoint", "plot", "log"}
    for r in rows:
        assert before <= r["time"] <= after and set(r["overhead_s"]) == kinds
    # one clock: every row's wall time minus its training time is the same moment (the first step's start)
    starts = [r["time"] - r["elapsed_s"] for r in rows]
    assert max(starts) - min(starts) < 0.5
    # totals so far, never falling; the evaluation at step 2 is in its own row, its checkpoint in the next
    for kind in kinds:
        assert all(a["overhead_s"][kind] <= b["overhead_s"][kind] for a, b in zip(rows, rows[1:]))
    assert rows[0]["overhead_s"]["eval"] == 0 and rows[1]["overhead_s"]["eval"] > 0
    assert rows[1]["overhead_s"]["checkpoint"] == 0 < rows[2]["overhead_s"]["checkpoint"]
    assert rows[1]["overhead_s"]["best_model"] > 0 and rows[0]["overhead_s"]["log"] == 0 < rows[1]["overhead_s"]["log"]


@pytest.mark.slow  # four real processes, about a minute on a busy 2-core machine
def test_smoke_run_reports_both_sides_learning_and_where_the_time_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "smoke.json"
    with benchmark_module("time_to_loss") as bench:
        assert bench.main(["--smoke", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert result["size"] == "smoke" and result["pairs"] == 1 and not result["busy"]
    (run,) = result["runs"]
    ours, minimal = run["ours"], run["minimal"]
    assert ours["vocab"] == minimal["vocab"]  # the same characters, the same ids
    steps = result["config"]["max_steps"]
    for side in (ours, minimal):
        # both learnt: the final validation loss is below the loss of the initial (uniform) guess, ln V
        assert side["evals"][-1]["step"] == steps and side["evals"][-1]["val_loss"] < side["initial_loss"]
        assert side["initial_loss"] == pytest.approx(math.log(side["vocab"]))
        assert side["parts"]["startup"] > 0 and side["parts"]["steps"] > 0
        assert [e["step"] for e in side["evals"]] == [steps // 2, steps]
        assert 0 < side["evals"][0]["at_s"] < side["evals"][1]["at_s"] < side["wall_s"]
    assert {"eval", "callbacks", "best_model", "checkpoint", "plot", "log", "tail"} <= set(ours["parts"])
    # every run reaches the default target (the worst final loss), and the ratio is ours / minimal of that pair
    assert result["target"] >= max(ours["evals"][-1]["val_loss"], minimal["evals"][-1]["val_loss"])
    o, m = (result["sides"][s]["time_to_target_s"] for s in ("ours", "minimal"))
    assert result["ratio_time_to_target"] == pytest.approx(o / m)
    assert result["sides"]["ours"]["reached"] == result["sides"]["minimal"]["reached"] == 1

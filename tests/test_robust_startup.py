"""benchmarks/startup.py runs end to end (issue 30, item 7); its figures are the lead's to take
on a quiet machine, so this only checks that each phase is measured and adds up."""

from __future__ import annotations

import pytest

from conftest import benchmark_module


@pytest.mark.slow
def test_startup_benchmark_times_a_command_and_breaks_it_down(capsys):
    with benchmark_module("startup") as startup:
        results = startup.main(["--repeats", "1", "--commands", "heads"])
    heads = results["heads"]
    phases = heads["breakdown_s"]
    assert list(phases) == ["import torch", "other imports", "load model + tokenizer", "run (loads again)"]
    assert all(s >= 0 for s in phases.values()) and results["import torch"] > 0
    assert sum(phases.values()) <= heads["median_s"] * 3  # one process's phases, not a sum over runs
    assert "glassformer heads" in capsys.readouterr().out

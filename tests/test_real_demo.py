"""``glassformer demo real``: the packaged all-MiniLM-L6-v2, looked inside in seconds (issue 11)."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from glassformer.demos import real


def demo_args(out) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), seed=1337, progress="none", minutes=None, max_steps=None, overwrite=False)


def test_missing_package_gives_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, real.PACKAGE, None)  # import now raises ImportError
    assert real.run(demo_args(tmp_path / "demo")) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'glassformer[real]'" in lines[0]
    assert captured.out == "" and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_real_shows_heads_checks_a_head_and_ranks_sentences(tmp_path, capsys):
    pytest.importorskip(real.PACKAGE)
    from glassformer.explain.heatmaps import image_stats

    out = tmp_path / "demo-real"
    assert real.run(demo_args(out)) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["elapsed_s"] < 60
    assert summary["check_ok"] and summary["check_max_error"] <= 1e-5
    assert "[PAD]" not in summary["tokens"] and summary["tokens"][0] == "[CLS]" and summary["tokens"][-1] == "[SEP]"
    shape, variance = image_stats(summary["heatmap"])
    assert len(shape) == 3 and variance > 1e-3
    ranking = summary["ranking"]
    assert [r["rank"] for r in ranking] == list(range(1, len(real.DOCUMENTS) + 1))
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    assert "kitten" in ranking[0]["sentence"].lower() or "cat" in ranking[0]["sentence"].lower()
    assert ranking[0]["score"] - ranking[2]["score"] > 0.15  # the two cat sentences lead clearly
    assert "OK (tolerance 1e-05)" in printed and ranking[0]["sentence"] in printed

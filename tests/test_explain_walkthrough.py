"""docs/walkthrough.py runs top to bottom and produces what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from glassformer.explain.viewer import read_viewer_data

DOC = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.py"


@pytest.mark.slow  # the whole walk-through in a real process, ~20 s
def test_walkthrough_runs_and_writes_its_pictures_and_pages(tmp_path):
    env = {**os.environ, "GLASSFORMER_WALKTHROUGH_OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, str(DOC)], env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert out.count("OK (tolerance 1e-05)") >= 2  # the GPT and the cross-attention walk-throughs
    assert "MISMATCH" not in out
    # the reversal model has learned: its output is the reversed input, aligned anti-diagonally
    assert "-> output ['f', 'e', 'd', 'c', 'b', 'a'" in out
    assert "looks at most: ['f', 'e', 'd', 'c', 'b', 'a']" in out
    for png in ("gpt-heads.png", "reverse-alignment.png"):
        pixels = imread(str(tmp_path / png))
        assert float(np.var(pixels[..., :3])) > 1e-3
    gallery = read_viewer_data(tmp_path / "gpt-run" / "attention" / "index.html")
    assert [s["step"] for s in gallery["snapshots"]] == [0, 50, 100, 150, 200]
    viewer = read_viewer_data(tmp_path / "gpt-viewer.html")
    assert viewer["generation"]["steps"] and viewer["family"] == "gpt"

"""Heatmaps are valid, non-blank PNGs of the right thing; bad input writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from glassformer.explain import heatmaps
from glassformer.explain.capture import attention_set
from glassformer.models import GPT, GPTConfig, Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path, min_side=150):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(str(path))
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= min_side
    assert float(np.var(pixels[..., :3])) > 1e-3  # not a blank canvas
    return pixels


@pytest.fixture(scope="module")
def gpt_maps():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny"))
    x = torch.randint(5, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    toks = [f"t{i}" for i in range(9)]
    return attention_set(model, x, {"tokens": toks}), toks


def test_every_kind_of_heatmap_is_a_real_image(tmp_path, gpt_maps):
    aset, toks = gpt_maps
    w = aset.get("decoder-self")  # (L, H, T, T)
    one = assert_real_png(heatmaps.save_head_heatmap(w[1, 2], toks, toks, tmp_path / "head.png", "layer 1 head 2"))
    grid = assert_real_png(heatmaps.save_layer_heatmaps(w[0], toks, toks, tmp_path / "grid.png"))
    assert_real_png(heatmaps.save_layer_means(w, toks, toks, tmp_path / "means.png"))
    assert grid.shape[1] > one.shape[1]  # four panels side by side are wider than one
    torch.manual_seed(1)
    s2s = Transformer(TransformerConfig.from_name("transformer-tiny"))
    src = torch.randint(5, 64, (1, 7))
    tgt = torch.randint(5, 64, (1, 5))
    cross = attention_set(s2s, src, {"source": list("abcdefg"), "target": list("vwxyz")}, tgt).get("cross")
    path = heatmaps.save_cross_alignment(cross, list("abcdefg"), list("vwxyz"), tmp_path / "align.png", layer=1)
    assert_real_png(path)


def test_the_image_shows_the_weights(tmp_path):
    """A head that looks only at the diagonal draws a bright diagonal on a dark field."""
    toks = [str(i) for i in range(6)]
    path = heatmaps.save_head_heatmap(np.eye(6), toks, toks, tmp_path / "eye.png")
    flipped = heatmaps.save_head_heatmap(np.eye(6)[::-1].copy(), toks, toks, tmp_path / "flip.png")
    a, b = imread(str(path))[..., :3], imread(str(flipped))[..., :3]
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.01  # different weights, different picture


def test_blank_detection_works():
    """The not-blank check above would catch a blank image (negative control)."""
    blank = np.ones((50, 50, 4), dtype=np.float32)
    assert float(np.var(blank[..., :3])) == 0.0


@pytest.mark.parametrize("weights,q,k,name,match", [
    (np.ones((3, 4)) / 4, list("abc"), list("ab"), "x.png", "3 query and 2 key"),
    (np.full((2, 2), np.nan), list("ab"), list("ab"), "x.png", "NaN"),
    (np.ones(3), list("abc"), list("abc"), "x.png", "2 dimensions"),
    (np.ones((2, 2)) / 2, list("ab"), list("ab"), "x.jpg", r"\.png"),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, weights, q, k, name, match):
    with pytest.raises(ValueError, match=match):
        heatmaps.save_head_heatmap(weights, q, k, tmp_path / name)
    assert list(tmp_path.iterdir()) == []

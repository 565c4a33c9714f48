"""Attention snapshots during training: JSON only, the model's numbers, and no effect on training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glassformer.explain.snapshot import (
    head_entropy,
    load_snapshots,
    save_attention_snapshot,
    snapshot_weights,
    write_snapshot_gallery,
)
from glassformer.explain.viewer import read_viewer_data
from glassformer.models import GPT, GPTConfig, Transformer, TransformerConfig
from glassformer.tokenizers import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TEXT = "abcdefgh" * 8
PROBE = "abcdefabcd"


def train_steps(model, ids, n, opt):
    for _ in range(n):
        loss = model(ids[:, :-1], labels=ids[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_snapshots_hold_the_models_attention_and_leave_training_untouched(tmp_path):
    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, dropout=0.1)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.tensor([tok.encode(TEXT)])
    for step in (0, 40, 80):
        if step:
            train_steps(model, ids, 40, opt)
        rng = torch.get_rng_state()
        path = save_attention_snapshot(model, tok, PROBE, step, tmp_path)
        assert torch.equal(rng, torch.get_rng_state())  # no random numbers drawn
        assert model.training  # mode restored
        assert path == tmp_path / "attention" / f"step_{step:07d}.json"
        data = json.loads(path.read_text())  # plain JSON
        w = snapshot_weights(data, "decoder-self")
        model.eval()
        with torch.no_grad():
            want = model(torch.tensor([tok.encode(PROBE)]), return_attentions=True)
        model.train()
        for layer in range(w.shape[0]):
            assert np.abs(w[layer] - want.attention("decoder-self", layer)[0].numpy()).max() <= 1e-5
        assert data["streams"]["tokens"] == list(PROBE)
        assert np.allclose(data["maps"]["decoder-self"]["entropy"], head_entropy(w), atol=1e-5)

    snaps = load_snapshots(tmp_path)
    assert [s["step"] for s in snaps] == [0, 40, 80]
    # training on a repeating pattern sharpens attention: the mean entropy falls
    first, last = (np.mean(s["maps"]["decoder-self"]["entropy"]) for s in (snaps[0], snaps[-1]))
    assert last < first
    gallery = read_viewer_data(tmp_path / "attention" / "index.html")
    assert [s["step"] for s in gallery["snapshots"]] == [0, 40, 80]


def test_seq2seq_probe_with_a_fixed_target_and_bad_input(tmp_path):
    tok = CharTokenizer.train("0123456789-/ abc")
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name("transformer-tiny", vocab_size=tok.vocab_size,
                                                    bos_token_id=tok.bos_id, eos_token_id=tok.eos_id))
    path = save_attention_snapshot(model, tok, "12/31/99\t1999-12-31", 5, tmp_path)
    data = json.loads(path.read_text())
    assert data["streams"]["source"] == list("12/31/99")
    assert data["streams"]["target"] == ["<bos>", *"1999-12-31"]
    assert snapshot_weights(data, "cross").shape == (2, 4, 11, 8)
    greedy = json.loads(save_attention_snapshot(model, tok, "12/31/99", 6, tmp_path).read_text())
    assert greedy["streams"]["target"][0] == "<bos>" and len(greedy["streams"]["target"]) > 1
    with pytest.raises(ValueError, match="non-empty"):
        save_attention_snapshot(model, tok, "  ", 7, tmp_path)
    with pytest.raises(ValueError, match="step"):
        save_attention_snapshot(model, tok, "1", -1, tmp_path)
    (tmp_path / "attention" / "step_0000009.json").write_text("{not json")
    assert [s["step"] for s in load_snapshots(tmp_path)] == [5, 6]  # the broken file is skipped
    with pytest.raises(ValueError, match="no attention snapshots"):
        write_snapshot_gallery(tmp_path / "elsewhere")


def test_head_entropy_bounds():
    uniform = np.full((1, 1, 3, 4), 0.25)
    one_hot = np.zeros((1, 1, 3, 4))
    one_hot[..., 0] = 1.0
    assert head_entropy(uniform)[0, 0] == pytest.approx(np.log(4))
    assert head_entropy(one_hot)[0, 0] == 0.0

"""``benchmarks/step_floor.py`` records every product and attention kernel of our training step."""

import json

import pytest
import torch

from conftest import benchmark_module

pytestmark = pytest.mark.slow  # a benchmark's smoke run belongs to the slow lane

pytest.importorskip("transformers")


@pytest.fixture
def floor():
    with benchmark_module("step_floor") as module:
        yield module


def test_quick_run_replays_all_of_the_steps_products(floor, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "floor.json"
    assert floor.main(["--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    n_layers = floor.SHAPES["tiny"][0]
    # forward, input gradient and weight gradient of 4 linears a layer and the LM head: nothing missed
    assert r["products"] == 3 * (4 * n_layers + 1)
    assert r["product_flops"] == r["linear_flops"]
    assert r["attention_calls"] == 2 * n_layers  # the fused kernel, forward and backward, in every layer
    for name in ("ours", "peer", "floor"):
        assert len(r["times"][name]) == 2 and r["s_per_step"][name] > 0
    assert min(p / o for p, o in zip(r["times"]["peer"], r["times"]["ours"])) <= r["peer_over_ours"]
    assert "peer / floor" in capsys.readouterr().out


def test_the_fused_head_and_loss_is_recorded_too(floor):
    """A vocabulary large enough for ``linear_cross_entropy``: its chunked products still add up."""
    from glassformer.linear import FUSED_MIN_VOCAB
    from glassformer.models import GPT, GPTConfig
    from glassformer.training.config import TrainConfig
    from glassformer.training.trainer import Trainer

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=FUSED_MIN_VOCAB + 7, d_model=16, n_heads=2, n_layers=1, d_ff=64, max_len=8,
                          dropout=0.0))
    cfg = TrainConfig(batch_size=3, context=8, max_steps=10, warmup_steps=0, device="cpu", progress="none",
                      compile=False)
    trainer = Trainer(model, cfg, floor.RandomTokens(FUSED_MIN_VOCAB + 7, 8))
    assert trainer.loss_in_model
    replay = floor.Replay(floor.record(trainer, 1))
    assert replay.flops == floor.linear_flops(model, 3 * 8)
    replay.train_step(0)  # the replay runs on its own operands

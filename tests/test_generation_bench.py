"""``benchmarks/generate_throughput.py --quick`` runs, and both peers generate the same tokens."""

import json

import pytest
import torch

from conftest import benchmark_module

pytestmark = pytest.mark.slow  # a benchmark's smoke run belongs to the slow lane

pytest.importorskip("transformers")


@pytest.fixture
def bench():
    with benchmark_module("generate_throughput") as module:
        yield module


def test_quick_benchmark_compares_the_same_greedy_tokens(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench.main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {(r["dtype"], r["batch"]) for r in rows} == {("fp32", 1), ("fp32", 2), ("bf16", 1)}
    for r in rows:
        assert r["ours_tokens_per_s"] > 0 and r["peer_tokens_per_s"] > 0 and r["floor_ms"] > 0
        assert abs(r["ratio"] - r["ours_tokens_per_s"] / r["peer_tokens_per_s"]) < 1e-6
        # every floor from the best bandwidth of the run, whichever row was measured first
        assert r["floor_ms"] == pytest.approx(r["weight_bytes"] / result["bandwidth_bytes_per_s"] * 1e3)
        assert r["ours_over_floor"] == pytest.approx(r["ours_ms_per_step"] / r["floor_ms"])
    assert all(r["same_tokens"] for r in rows if r["dtype"] == "fp32")  # the same weights, the same work
    assert "| tiny | fp32 | 1 |" in capsys.readouterr().out


def test_our_copy_of_the_peer_weights_gives_the_same_logits(bench):
    peer, ours = bench.build_pair("tiny")
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(peer(ids).logits, ours(ids).logits, atol=1e-4)
    params = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("pos_emb"))
    assert bench.weight_bytes(ours) == 4 * params

"""benchmarks/gpu_train.py runs end to end on the CPU with its tiny config, before any GPU time is spent."""

from __future__ import annotations

import json

import pytest

from conftest import benchmark_module

pytestmark = pytest.mark.slow  # a benchmark's smoke run belongs to the slow lane


@pytest.fixture
def script():
    with benchmark_module("gpu_train") as module:
        yield module


def test_the_gpu_benchmark_runs_on_the_cpu_with_a_tiny_config(script, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "result.json"
    assert script.main(["--tiny", "--json", str(out)]) == 0
    result = json.loads(out.read_text())

    train = result["train"]
    assert train["loss_gap"] < 1e-4  # both sides hold the same weights: the same loss on the same batch
    for side in ("ours", "peer"):
        r = train[side]
        assert len(r["rounds_s"]) == 2 and all(s > 0 for s in r["rounds_s"])
        # MFU is model FLOPs per second over the peak measured in the same run
        assert abs(r["mfu"] - train["flops_per_token"] * r["tokens_per_s"] / train["matmul_peak_flops"]) < 1e-12
    # the generation benchmark ran on the same device: greedy decoding of the same weights agrees
    rows = result["generate"]
    assert isinstance(rows, list) and rows and all(row["same_tokens"] for row in rows)
    # the torchrun check: an FSDP run resumed from a DDP checkpoint continues the same losses
    check = result["torchrun"]
    assert check["ok"] and check["backend"] == "gloo"
    assert check["fsdp_resumed"] == check["ddp_losses"][2:]


def test_without_a_gpu_the_full_benchmark_refuses_with_a_hint(script, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        script.main([])
    assert exit_info.value.code == 2 and "--tiny" in capsys.readouterr().err

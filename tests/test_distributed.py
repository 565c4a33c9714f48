"""torchrun on the CPU (gloo, 2 processes): DDP equals one process, FSDP equals DDP, checkpoints cross world sizes.

One torchrun launch runs every multi-process phase (each a ``glassformer train`` command, in the
same two worker processes, which is what keeps this file fast); the checks then run here:

1. DDP, 8 steps, 2 micro-batches per step  ==  one process stepping on both ranks' batches at once;
2. DDP for 4 steps, then resumed with FSDP to step 8  ==  the uninterrupted DDP run, and the
   FSDP-gathered checkpoint holds the same weights and moments as the DDP one;
3. a 2-rank checkpoint resumes in one process;
4. SIGTERM sent to rank 1 alone: both ranks stop after the same step, save, and exit cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TRAIN_TEXT

pytestmark = pytest.mark.slow  # torchrun: real processes (~25 s)

FIELDS = dict(n_layers=2, n_heads=2, d_model=32, context=32, batch_size=4, grad_accum=2, eval_batches=2,
              sample_tokens=0, progress="none", log_every=1, dropout=0.0, lr=1e-2, warmup_steps=2, seed=7,
              eval_every=4)
TOL = 1e-5
# Two ranks' all-reduced mean gradient and one process's gradient of the whole batch are equal in
# exact arithmetic, not in floats: the sums run in another order, and the kernels may block a
# 4-row and an 8-row batch differently. Adam divides by sqrt(v), so those 1e-7 differences grow
# over the steps: below 1e-5 in the loss by step 8 on AVX2 (AMD EPYC), 2e-4 on AVX-512 + AMX
# (Intel Xeon). Batches drawn wrong change the very first loss, which is held to TOL.
TOL_ACROSS_WORLD_SIZES = 1e-3


def flags(corpus: str) -> list[str]:
    out = ["--data", corpus]
    for k, v in FIELDS.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def phases(root: Path, corpus: str) -> list[list[str]]:
    """The ``glassformer train`` commands the torchrun workers run, in order."""
    common = ["train", "gpt", *flags(corpus)]
    return [
        [*common, "--out", str(root / "straight"), "--max-steps", "8"],
        [*common, "--out", str(root / "halves"), "--max-steps", "4", "--lr-decay-steps", "8"],
        ["train", "gpt", "--out", str(root / "halves"), "--resume", "--max-steps", "8", "--parallel", "fsdp"],
        [*common, "--out", str(root / "signal"), "--max-steps", "100000", "--eval-every", "100000"],
        # a checkpoint of one process (written by the fixture) resumed on two ranks
        ["train", "gpt", "--out", str(root / "single"), "--resume", "--max-steps", "4"],
        # BERT's pooler gets no gradient from masked-LM training: DDP must not wait for it
        ["train", "bert", *flags(corpus), "--out", str(root / "bert"), "--max-steps", "2"],
    ]


def worker(root: str, corpus: str) -> None:
    """What each torchrun process runs: the phases above, through the CLI."""
    from glassformer.cli import main
    from glassformer.training.trainer import Trainer

    step_once = Trainer.train_step

    def train_step(self, step):  # only rank 1 is signalled, in the middle of step 3 of the last phase
        if self.run_dir.name == "signal" and self.process.rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step_once(self, step)

    Trainer.train_step = train_step
    for argv in phases(Path(root), corpus):
        code = main(argv)
        if code:
            raise SystemExit(code)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run the torchrun job once for the whole module; returns (root, corpus, stdout)."""
    root = tmp_path_factory.mktemp("distributed")
    corpus = root / "corpus.txt"
    corpus.write_text(TRAIN_TEXT)
    from glassformer.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLASSFORMER_CACHE", str(root / "cache"))
        argv = ["train", "gpt", *flags(str(corpus)), "--out", str(root / "single"), "--max-steps", "2"]
        assert main([*argv, "--lr-decay-steps", "4"]) == 0
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLASSFORMER_CACHE": str(root / "cache"),
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, str(root), str(corpus)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return root, corpus, done.stdout + done.stderr


def reference_losses(corpus: Path, cache: Path, monkeypatch) -> tuple[list[float], dict[int, float]]:
    """One process whose micro-batch i stacks rank 0's and rank 1's i-th micro-batches."""
    from glassformer.training.config import TrainConfig
    from glassformer.training.runtime import ProcessContext
    from glassformer.training.tasks import prepare
    from glassformer.training.trainer import Trainer

    monkeypatch.setenv("GLASSFORMER_CACHE", str(cache))
    config = TrainConfig(task="gpt", data=str(corpus), max_steps=8, **FIELDS)
    setup = prepare(config)

    def rank(r: int) -> ProcessContext:
        p = ProcessContext()
        p.rank = r
        return p

    class GlobalBatch(Trainer):
        streams = [torch.Generator().manual_seed(rank(r).data_seed(config.seed)) for r in range(2)]

        def draw_batches(self):
            per_rank = [[self.train_data.batch(config.batch_size, g) for _ in range(config.grad_accum)]
                        for g in self.streams]
            return [{k: torch.cat([micro[i][k] for micro in per_rank]) for k in per_rank[0][i]}
                    for i in range(config.grad_accum)]

    trainer = GlobalBatch(setup.model, config, setup.train_data, setup.val_data)
    losses, val = [], {}
    for step in range(1, 9):
        losses.append(trainer.train_step(step)[0])
        trainer.step = step
        if step % 4 == 0:
            val[step] = trainer.evaluate()["val_loss"]
    return losses, val


def test_ddp_on_two_processes_equals_one_process_with_the_global_batch(launched, monkeypatch):
    root, corpus, stdout = launched
    rows = metrics(root / "straight")
    assert [r["step"] for r in rows] == list(range(1, 9))  # rank 0 alone wrote the metrics
    want, want_val = reference_losses(corpus, root / "cache", monkeypatch)
    got = [r["train_loss"] for r in rows]
    assert abs(got[0] - want[0]) < TOL  # the first step: the same batches and weights, before any update
    assert max(abs(a - b) for a, b in zip(got, want)) < TOL_ACROSS_WORLD_SIZES, (got, want)
    for r in rows:
        if "val_loss" in r:
            assert abs(r["val_loss"] - want_val[r["step"]]) < TOL_ACROSS_WORLD_SIZES
    assert got[-1] < got[0] - 0.3  # and it learnt something: not a trivially equal flat curve
    # only rank 0 reports: one "done" per phase that ran to the end (all but the signalled one)
    assert stdout.count("done: ") == len(phases(root, str(corpus))) - 1


def test_a_ddp_run_resumed_under_fsdp_continues_the_same_curve_and_checkpoint(launched):
    from glassformer.training import checkpoint as ckpt

    root, _, _ = launched
    straight, resumed = metrics(root / "straight"), metrics(root / "halves")
    assert [r["step"] for r in resumed] == list(range(1, 9))
    for a, b in zip(straight, resumed):
        assert abs(a["train_loss"] - b["train_loss"]) < TOL, (a, b)
        assert abs(a["lr"] - b["lr"]) < 1e-12
    # the FSDP checkpoint was gathered into the single-process layout, with every rank's RNG streams
    a, b = ckpt.latest_checkpoint(root / "straight"), ckpt.latest_checkpoint(root / "halves")
    assert a.name == b.name == "step_000008"
    for name in ("model.safetensors", "optimizer.safetensors"):
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and len(x) > 10
        for k in x:
            assert x[k].shape == y[k].shape and torch.allclose(x[k], y[k], atol=TOL, rtol=1e-4), (name, k)
    streams = load_file(b / "rng_ranks.safetensors")
    assert {k.split(".")[0] for k in streams} == {"rank0", "rank1"}
    assert not torch.equal(streams["rank0.data_generator"], streams["rank1.data_generator"])
    state = json.loads((b / ckpt.STATE_NAME).read_text())
    assert state["world_size"] == 2 and state["train_config"]["parallel"] == "fsdp"


def test_a_two_rank_checkpoint_resumes_in_one_process(launched, tmp_path, monkeypatch):
    from glassformer.cli import main
    from glassformer.loading import load_model

    root, _, _ = launched
    run = tmp_path / "run"
    shutil.copytree(root / "halves", run)
    monkeypatch.setenv("GLASSFORMER_CACHE", str(root / "cache"))
    saved = load_file(run / "checkpoints" / "step_000008" / "model.safetensors")
    model = load_model(run / "checkpoints" / "step_000008")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert main(["train", "gpt", "--out", str(run), "--resume", "--max-steps", "10"]) == 0
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(r["train_loss"] == s["train_loss"] for r, s in zip(rows[:8], metrics(root / "halves")))


def test_a_one_process_checkpoint_resumes_on_two_ranks_with_a_fresh_stream_for_rank_1(launched):
    from glassformer.training import checkpoint as ckpt

    root, _, output = launched
    run = root / "single"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    last = ckpt.latest_checkpoint(run)
    assert last.name == "step_000004" and json.loads((last / ckpt.STATE_NAME).read_text())["world_size"] == 2
    streams = load_file(last / "rng_ranks.safetensors")
    # rank 1 did not simply continue rank 0's restored stream: the two ranks drew different batches
    assert not torch.equal(streams["rank0.data_generator"], streams["rank1.data_generator"])
    assert "resuming a 1-rank checkpoint on 2 ranks: the global batch is now 16 sequences (was 8)" in output


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(launched):
    from glassformer.training import checkpoint as ckpt

    root, _, stdout = launched
    run = root / "signal"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    assert ckpt.latest_checkpoint(run).name == "step_000003"
    assert stdout.count("stopped by SIGTERM at step 3") == 1


if __name__ == "__main__":  # a torchrun worker (see the `launched` fixture)
    worker(*sys.argv[1:])

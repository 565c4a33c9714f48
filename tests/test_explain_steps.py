"""The four-step walk-through reproduces each family's attention, head by head, within 1e-5."""

from __future__ import annotations

import re

import pytest
import torch

from glassformer.explain.capture import attention_module, capture_calls
from glassformer.explain.render import format_four_steps
from glassformer.explain.steps import TOLERANCE, four_steps
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def ids(t, seed=0, v=64):
    return torch.randint(5, v, (1, t), generator=torch.Generator().manual_seed(seed))


def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("gpt-tiny"))


def bert():
    torch.manual_seed(1)
    return BERT(BERTConfig.from_name("bert-tiny"))


def seq2seq():
    torch.manual_seed(2)
    m = Transformer(TransformerConfig.from_name("transformer-tiny"))
    for p in m.parameters():  # xavier init leaves the attention near uniform; sharpen it so rows differ
        p.data.mul_(1.5)
    return m


CASES = [
    ("gpt", gpt, "auto", None),
    ("bert", bert, "auto", None),
    ("encoder-self", seq2seq, "encoder-self", 4),
    ("decoder-self", seq2seq, "decoder-self", 4),
    ("cross", seq2seq, "cross", 4),
]


@pytest.mark.parametrize("name,make,kind,tgt_len", CASES, ids=[c[0] for c in CASES])
def test_four_steps_rebuild_the_modules_output_for_every_head_and_token(name, make, kind, tgt_len):
    """Concatenate the walk-through's z over every head and token, apply W^O: that must be the
    attention module's own output in the model's forward pass (caught by a hook in this test)."""
    model = make().eval()
    src = ids(7)
    tgt = ids(tgt_len, seed=1) if tgt_len else None
    steps0 = four_steps(model, src, 1, 0, 0, kind=kind, tgt_ids=tgt)
    module = attention_module(model, steps0.kind, 1)
    outputs = []
    handle = module.register_forward_hook(lambda _m, _a, out: outputs.append(out[0].detach()))
    try:
        with torch.no_grad():
            model(src, tgt, return_attentions=False) if tgt is not None else model(src)
    finally:
        handle.remove()
    t_q = outputs[0].shape[1]
    tokens = [0, t_q // 2, t_q - 1]  # row i of the output depends on row i of Concat(heads) only
    z = torch.zeros(len(tokens), module.d_model, dtype=torch.float64)
    for row, token in enumerate(tokens):
        for head in range(module.n_heads):
            s = four_steps(model, src, 1, head, token, kind=kind, tgt_ids=tgt)
            assert s.max_diff <= TOLERANCE and s.weights_max_diff <= TOLERANCE, (token, head)
            assert abs(float(s.weights.sum()) - 1.0) < 1e-9
            assert torch.allclose(s.scaled_scores, s.raw_scores / s.d_k**0.5)
            assert (s.weights[~s.mask] == 0).all()
            z[row, head * s.d_k : (head + 1) * s.d_k] = s.z
    rebuilt = module.w_o(z.float())  # (3, C): Concat(heads) W^O
    assert (rebuilt - outputs[0][0, tokens]).abs().max() <= TOLERANCE
    assert not module._forward_hooks and not module._forward_pre_hooks  # nothing left behind


def test_decoder_self_attention_shows_which_positions_the_mask_hid():
    model = seq2seq().eval()
    s = four_steps(model, ids(6), 0, 1, 2, kind="decoder-self", tgt_ids=ids(6, seed=3))
    assert s.mask.tolist() == [True, True, True, False, False, False]
    text = format_four_steps(s, list("abcdef"))
    assert text.count("masked") == 3 and "the mask hid 3 of 6 positions" in text
    gpt_steps = four_steps(gpt().eval(), ids(5), 0, 0, 4)  # the last GPT token sees everything
    assert gpt_steps.mask.all()


def test_padding_is_hidden_and_batch_rows_are_independent():
    model = bert().eval()
    x = torch.cat([ids(6), ids(6, seed=4)])
    am = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    s = four_steps(model, x, 1, 3, 1, attention_mask=am)
    assert s.mask.tolist() == [True] * 4 + [False] * 2 and s.max_diff <= TOLERANCE
    alone = four_steps(model, x[1:], 1, 3, 1, attention_mask=am[1:])
    row1 = four_steps(model, x, 1, 3, 1, attention_mask=am, batch=1)
    assert torch.allclose(alone.z, row1.z, atol=1e-6) and row1.max_diff <= TOLERANCE


def test_walkthrough_leaves_the_model_as_it_was():
    model = gpt().train()
    with capture_calls(attention_module(model, "decoder-self", 0)) as calls:
        pass
    assert calls == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    four_steps(model, ids(5), 0, 0, 3)
    assert model.training  # the mode is restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_plain_rendering_prints_the_computed_numbers():
    s = four_steps(gpt().eval(), ids(6), 1, 2, 3)
    text = format_four_steps(s, list("abcdef"))
    rows = [line.split() for line in text.splitlines() if re.match(r"^\d+\s", line)]
    assert [int(r[0]) for r in rows] == list(range(6))
    printed = [r[-5] for r in rows]  # the softmax column, before the 3-entry value vector (4 cells)
    for j, cell in enumerate(printed):
        if cell == "masked":
            assert not s.mask[j]
        else:
            assert abs(float(cell) - float(s.weights[j])) < 5e-5
    assert "OK (tolerance 1e-05)" in text
    assert f"{s.max_diff:.2e}" in text
    rich_text = format_four_steps(s, list("abcdef"), plain=False)
    assert "\x1b[" in rich_text and "q·kⱼ" in rich_text


@pytest.mark.parametrize("bad,match", [
    (dict(layer=5, head=0, token=0), "layer 5 is out of range"),
    (dict(layer=0, head=4, token=0), "head 4 is out of range"),
    (dict(layer=0, head=0, token=9), "token 9 is out of range"),
    (dict(layer=0, head=0, token=0, kind="cross"), "no cross attention"),
])
def test_bad_arguments_name_the_problem(bad, match):
    with pytest.raises(ValueError, match=match):
        four_steps(gpt().eval(), ids(5), **bad)


# ----------------------------------------------------------------- Hugging Face checkpoints


HF_CORPUS = ["the quick brown fox jumps over the lazy dog", "attention is all you need"] * 4


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """A tiny GPT-2 and a tiny BERT as transformers writes them, each with its tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        GPT2Tokenizer,
    )

    root = tmp_path_factory.mktemp("hf")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(HF_CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = __import__("json").loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    GPT2Tokenizer(vocab=model["vocab"], merges=merges).save_pretrained(root / "gpt2")
    torch.manual_seed(3)
    n = len(model["vocab"])
    GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_head=4, n_layer=2, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(root / "gpt2")

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(HF_CORPUS, trainers.WordPieceTrainer(
        vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    BertTokenizer(vocab=wp.get_vocab()).save_pretrained(root / "bert")
    torch.manual_seed(4)
    BertForMaskedLM(BertConfig(vocab_size=len(wp.get_vocab()), hidden_size=32, num_attention_heads=4,
                               num_hidden_layers=2, intermediate_size=48, max_position_embeddings=64)
                    ).save_pretrained(root / "bert")
    return root


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_hf_checkpoints_walk_through_equals_transformers_attention(hf_dirs, name):
    from transformers import AutoModel

    from glassformer.explain.tokens import encode_text
    from glassformer.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(hf_dirs / name)
    x = encode_text(tokenizer, "the lazy fox jumps")
    ref = AutoModel.from_pretrained(hf_dirs / name, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_att = ref(torch.tensor([x]), output_attentions=True).attentions  # L × (1, H, T, T)
    t = len(x)
    for layer, head, token in [(0, 1, t - 1), (1, 3, t // 2)]:
        s = four_steps(model, x, layer, head, token)
        assert s.max_diff <= TOLERANCE and s.weights_max_diff <= TOLERANCE
        assert (s.weights - hf_att[layer][0, head, token].double()).abs().max() <= 1e-5

"""Language-model datasets: causal windows and BERT masking, fed straight into the models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glassformer.data import CausalLMDataset, MLMDataset, encode_corpus, load_corpus, split_tokens
from glassformer.errors import DataError
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig
from glassformer.tokenizers import CharTokenizer, train_bpe

DOCS = load_corpus("python-docs")[:30_000]


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.train(DOCS)


@pytest.fixture(scope="module")
def tokens(char, tmp_path_factory):
    return encode_corpus(DOCS, char, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- causal LM


def test_causal_windows_are_corpus_slices_with_next_token_labels(tokens):
    data = CausalLMDataset(tokens, context=16)
    batch = data.batch(32, gen())
    assert set(batch) == {"input_ids", "labels"}
    x, y = batch["input_ids"], batch["labels"]
    assert x.dtype == torch.long and x.shape == y.shape == (32, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])  # labels[:, t] is the token after input_ids[:, t]
    corpus = np.asarray(tokens, dtype=np.int64)
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        window = row_x + row_y[-1:]
        starts = np.flatnonzero(corpus[: len(corpus) - 16] == window[0])
        assert any(corpus[s: s + 17].tolist() == window for s in starts)


def test_causal_batches_depend_only_on_the_generator_state(tokens):
    data = CausalLMDataset(tokens, context=8)
    g = gen(3)
    first = data.batch(4, g)
    state = g.get_state()
    second = data.batch(4, g)
    g2 = torch.Generator()
    g2.set_state(state)  # a resumed run restores the generator: same next batch
    assert torch.equal(data.batch(4, g2)["input_ids"], second["input_ids"])
    assert not torch.equal(first["input_ids"], second["input_ids"])
    assert torch.equal(data.batch(4, gen(3))["input_ids"], first["input_ids"])


def test_causal_windows_cover_the_whole_corpus_including_the_last_token():
    tokens = np.arange(10, dtype=np.uint16)
    data = CausalLMDataset(tokens, context=4)
    seen = torch.cat([data.batch(64, gen(s))["labels"] for s in range(5)])
    assert set(seen.flatten().tolist()) == set(range(1, 10))


def test_causal_corpus_shorter_than_one_window(char):
    with pytest.raises(DataError, match=r"tiny.txt: 5 tokens is shorter than one window of 9 tokens \(context 8\)"):
        CausalLMDataset(np.arange(5), context=8, source="tiny.txt")
    CausalLMDataset(np.arange(9), context=8)  # exactly one window is enough


def test_causal_eval_batches_are_fixed_and_disjoint(tokens):
    train, val = split_tokens(tokens, 0.2)
    data = CausalLMDataset(val, context=32)
    a, b = list(data.eval_batches(8, max_batches=3)), list(data.eval_batches(8, max_batches=3))
    assert all(torch.equal(p["input_ids"], q["input_ids"]) for p, q in zip(a, b))
    rows = torch.cat([p["input_ids"] for p in a])
    assert rows.flatten().tolist() == np.asarray(val[: rows.numel()], dtype=np.int64).tolist()


def test_gpt_takes_a_causal_batch(tokens, char):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=char.vocab_size))
    out = model(**CausalLMDataset(tokens, context=32).batch(4, gen()))
    assert torch.isfinite(out.loss) and abs(out.loss.item() - np.log(char.vocab_size)) < 1.0


# ---------------------------------------------------------------------- masked LM


def test_mlm_masks_about_15_percent_with_the_80_10_10_rule(tokens, char):
    data = MLMDataset(tokens, char, context=64)
    batch = data.batch(256, gen())
    x, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    chosen = labels != -100
    frac = chosen.float().mean().item() * 64 / 62  # bos and eos are never candidates
    assert 0.13 < frac < 0.17
    original = labels[chosen]
    now = x[chosen]
    to_mask = (now == char.mask_id).float().mean().item()
    kept = (now == original).float().mean().item()
    assert 0.76 < to_mask < 0.84 and 0.07 < kept < 0.14  # kept includes random draws of the same id
    random_ids = now[(now != char.mask_id) & (now != original)]
    assert len(random_ids) > 0 and not set(random_ids.tolist()) & char.special_ids
    assert 0.07 < len(random_ids) / len(now) < 0.13
    assert attention.all()


def test_mlm_never_masks_special_tokens_and_leaves_unchosen_positions_alone(tokens, char):
    data = MLMDataset(tokens, char, context=32)
    g = gen(1)
    ids, attention = data._sequences(64, g)
    batch = data.mask(ids, attention, g)
    special = torch.isin(ids, torch.tensor(sorted(char.special_ids)))
    assert special[:, 0].all() and special[:, -1].all()  # wrapped as bos ... eos
    assert (batch["labels"][special] == -100).all()
    assert torch.equal(batch["input_ids"][special], ids[special])
    unchosen = batch["labels"] == -100
    assert torch.equal(batch["input_ids"][unchosen], ids[unchosen])
    chosen = ~unchosen
    assert torch.equal(batch["labels"][chosen], ids[chosen])
    assert chosen.any(1).all()  # every row has something to predict


def test_mlm_masking_is_dynamic_but_reproducible(tokens, char):
    data = MLMDataset(tokens, char, context=32)
    g = gen(5)
    ids, attention = data._sequences(8, g)
    a, b = data.mask(ids, attention, g), data.mask(ids, attention, g)
    assert not torch.equal(a["labels"], b["labels"])  # the same text masked afresh
    assert torch.equal(data.batch(8, gen(5))["labels"], data.batch(8, gen(5))["labels"])


def test_mlm_on_texts_pads_and_never_masks_padding(char):
    texts = [DOCS[i: i + n] for i, n in zip(range(0, 4000, 400), [5, 40, 12, 80, 3, 60, 20, 9, 33, 70])]
    data = MLMDataset(texts, char, context=48)
    batch = data.batch(10, gen())
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["input_ids"][pad] == char.pad_id).all() and (batch["labels"][pad] == -100).all()
    assert batch["input_ids"].shape[1] <= 48


def test_mlm_needs_a_mask_token():
    tok = train_bpe(["some words to train on " * 30], vocab_size=300, specials=["<|endoftext|>"])
    with pytest.raises(DataError, match="masked-language modelling needs .*mask"):
        MLMDataset(np.arange(100), tok, context=16)


def test_bert_takes_an_mlm_batch(tokens, char):
    torch.manual_seed(0)
    model = BERT(BERTConfig.from_name("bert-tiny", vocab_size=char.vocab_size, mask_token_id=char.mask_id))
    out = model(**MLMDataset(tokens, char, context=32).batch(4, gen()))
    assert out.logits.shape[-1] == char.vocab_size
    assert torch.isfinite(out.loss) and out.loss.item() > 0


def test_both_objectives_draw_from_a_users_file(tmp_path, char):
    (tmp_path / "notes.txt").write_text(DOCS[:3000])
    tokens = encode_corpus(str(tmp_path / "notes.txt"), char, cache_dir=tmp_path / "cache", progress=False)
    causal = CausalLMDataset(tokens, context=16, source=str(tmp_path / "notes.txt")).batch(2, gen())
    assert char.decode(causal["input_ids"][0].tolist()) in DOCS[:3000]
    mlm = MLMDataset(tokens, char, context=16).batch(2, gen())
    assert (mlm["labels"] != -100).any(1).all()

"""Seq2seq pairs and classification: files, built-in tasks, batches fed straight into the models."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

import pytest
import torch

from glassformer.data import (
    ClassificationDataset,
    Seq2SeqDataset,
    builtin_classification,
    builtin_pairs,
    load_corpus,
    load_labelled,
    load_pairs,
)
from glassformer.data.batching import BucketSampler
from glassformer.errors import DataError
from glassformer.models import BERT, BERTConfig, Transformer, TransformerConfig
from glassformer.tokenizers import build_tokenizer


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- built-in pairs


def test_copy_and_reverse_are_deterministic_by_seed():
    copy = builtin_pairs("copy", 50, seed=1)
    assert all(s == t and s.isalpha() and s.islower() for s, t in copy)
    assert builtin_pairs("copy", 50, seed=1) == copy != builtin_pairs("copy", 50, seed=2)
    assert all(t == s[::-1] for s, t in builtin_pairs("reverse", 50, seed=1))
    with pytest.raises(ValueError, match="unknown built-in task 'sort'"):
        builtin_pairs("sort", 5, 0)


STRPTIME = ["%d %b %Y", "%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%b. %d, %Y", "%m/%d/%y", "%m/%d/%Y", "%d.%m.%Y",
            "%d.%m.%y", "%A, %B %d, %Y", "%A, %d %B %Y", "%a %d %b %Y", "%d %B, %Y", "%B %d %Y", "%Y-%m-%d", "%Y/%m/%d"]


def parse_human_date(text: str) -> dt.date:
    """An independent reading of the sources with the C library's parser (English names)."""
    text = re.sub(r"^the ", "", text)
    text = re.sub(r"(\d+)(st|nd|rd|th)( of)?", r"\1", text).title()
    for fmt in STRPTIME:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise AssertionError(f"unparseable source {text!r}")


def test_dates_targets_are_the_iso_form_of_the_source():
    pairs = builtin_pairs("dates", 400, seed=7)
    for src, tgt in pairs:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", tgt)
        assert parse_human_date(src) == dt.date.fromisoformat(tgt), src
    shapes = {re.sub(r"[A-Za-z]+", "A", re.sub(r"\d", "9", s)) for s, _ in pairs}
    assert len(shapes) >= 12  # many spellings, not one
    assert builtin_pairs("dates", 400, seed=7) == pairs


# ---------------------------------------------------------------------- pair files


def test_load_pairs_tsv_csv_jsonl(tmp_path):
    (tmp_path / "p.tsv").write_text("source\ttarget\nhello\tbonjour\n\ncat\tchat\n")
    (tmp_path / "p.csv").write_text('src,tgt\n"hello, you",salut\ncat,chat\n')
    (tmp_path / "p.jsonl").write_text('{"source": "hello", "target": "bonjour"}\n\n{"input": "cat", "output": "chat"}\n')
    assert load_pairs(tmp_path / "p.tsv") == [("hello", "bonjour"), ("cat", "chat")]
    assert load_pairs(tmp_path / "p.csv") == [("hello, you", "salut"), ("cat", "chat")]
    assert load_pairs(tmp_path / "p.jsonl") == [("hello", "bonjour"), ("cat", "chat")]
    (tmp_path / "noheader.tsv").write_text("a\tb\n")
    assert load_pairs(tmp_path / "noheader.tsv") == [("a", "b")]


@pytest.mark.parametrize("name, content, message", [
    ("empty_side.tsv", "hello\tbonjour\ncat\t  \n", r"empty_side.tsv:2: empty target"),
    ("empty_src.csv", "a,b\n,chat\n", r"empty_src.csv:2: empty source"),
    ("three.tsv", "a\tb\tc\n", r"three.tsv:1: expected 2 columns \(source, target\), found 3"),
    ("fields.jsonl", '{"source": "a", "target": "b"}\n{"en": "a"}\n', r"fields.jsonl:2: expected fields 'source' and 'target'"),
    ("broken.jsonl", '{"source": "a", "target": "b"}\n{"source": \n', r"broken.jsonl:2: not valid JSON"),
    ("blank.tsv", "\n\n", r"blank.tsv: the file is empty"),
    ("header_only.tsv", "source\ttarget\n", r"header_only.tsv: no pairs"),
    ("pairs.xml", "<a/>", r"pairs.xml: cannot tell the format"),
])
def test_bad_pair_files_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_pairs(tmp_path / name)


def test_missing_and_non_utf8_pair_files(tmp_path):
    with pytest.raises(DataError, match="nope.tsv: no such file"):
        load_pairs(tmp_path / "nope.tsv")
    (tmp_path / "latin.tsv").write_bytes("a\tb\ncaf\xe9\tx\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.tsv: byte offset 7 \(line 2\)"):
        load_pairs(tmp_path / "latin.tsv")
    assert load_pairs(tmp_path / "latin.tsv", errors="replace")[1] == ("caf\ufffd", "x")


# ---------------------------------------------------------------------- seq2seq batches


@pytest.fixture(scope="module")
def date_data():
    pairs = builtin_pairs("dates", 300, seed=0)
    tok = build_tokenizer("char", [s for p in pairs for s in p])
    return pairs, tok


def test_seq2seq_batch_layout(date_data):
    pairs, tok = date_data
    data = Seq2SeqDataset(pairs, tok, max_len=40)
    batch = data.batch(16, gen())
    assert set(batch) == {"src_ids", "tgt_ids", "src_mask", "tgt_mask", "labels"}
    src, tgt, labels = batch["src_ids"], batch["tgt_ids"], batch["labels"]
    assert (tgt[:, 0] == tok.bos_id).all()
    real = batch["tgt_mask"].bool()
    assert torch.equal(labels != -100, real)  # padding is ignored by the loss, nothing else
    assert torch.equal(src == tok.pad_id, ~batch["src_mask"].bool())
    for b in range(16):
        n = int(real[b].sum())
        assert labels[b, n - 1] == tok.eos_id  # labels = target + eos
        assert torch.equal(labels[b, : n - 1], tgt[b, 1:n])  # tgt_ids = bos + target, shifted
        source = tok.decode(src[b][batch["src_mask"][b].bool()].tolist())
        target = tok.decode(tgt[b, 1:n].tolist())
        assert (source, target) in pairs


def test_seq2seq_buckets_cut_padding_but_sample_every_pair_evenly():
    lengths = list(range(1, 401))
    sampler = BucketSampler(lengths, bucket_factor=4)
    g = gen()
    counts = Counter()
    spreads = []
    for _ in range(2000):
        idx = sampler.sample(8, g)
        counts.update(idx.tolist())
        batch_lengths = [lengths[i] for i in idx]
        spreads.append(max(batch_lengths) - min(batch_lengths))
    assert max(spreads) < 32  # one bucket = 32 neighbours in length order
    # every pair equally likely, the shortest and longest included (a sliding window would starve the ends)
    expected = 2000 * 8 / 400
    for ends in (range(16), range(384, 400), range(192, 208)):
        assert abs(sum(counts[i] for i in ends) / (16 * expected) - 1) < 0.2
    assert len(counts) == 400


def test_seq2seq_long_pairs_are_cut_to_fit(date_data, caplog):
    _, tok = date_data
    data = Seq2SeqDataset([("1 January 2020" * 5, "2020-01-01" * 5)], tok, max_len=12)
    batch = data.batch(2, gen())
    assert batch["src_ids"].shape[1] == 12 and batch["tgt_ids"].shape[1] == 12
    assert "1 of 1 pairs are longer than max_len=12" in caplog.text


def test_seq2seq_needs_pad_bos_eos():
    tok = build_tokenizer("char", "abc")
    tok.special_tokens.pop("bos")
    with pytest.raises(DataError, match="sequence-to-sequence training needs .*bos"):
        Seq2SeqDataset([("a", "b")], tok, max_len=8)


def test_transformer_takes_a_seq2seq_batch(date_data):
    pairs, tok = date_data
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name("transformer-tiny", vocab_size=tok.vocab_size))
    out = model(**Seq2SeqDataset(pairs, tok, max_len=40).batch(8, gen()))
    assert torch.isfinite(out.loss) and out.loss.item() > 0


def test_eval_batches_visit_every_pair_once(date_data):
    pairs, tok = date_data
    data = Seq2SeqDataset(pairs, tok, max_len=40)
    seen = []
    for batch in data.eval_batches(32):
        for row, mask in zip(batch["src_ids"], batch["src_mask"]):
            seen.append(tok.decode(row[mask.bool()].tolist()))
    assert sorted(seen) == sorted(s for s, _ in pairs)


# ---------------------------------------------------------------------- classification files


def test_load_labelled_csv_tsv_jsonl(tmp_path):
    (tmp_path / "l.csv").write_text('id,text,label\n1,"good, very",pos\n2,bad,neg\n3,fine,pos\n')
    (tmp_path / "l.tsv").write_text("sentence\tstars\nok\t10\nmeh\t2\nyes\t10\n")
    (tmp_path / "l.jsonl").write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n')
    assert load_labelled(tmp_path / "l.csv") == ([("good, very", 1), ("bad", 0), ("fine", 1)], ["neg", "pos"])
    tsv = load_labelled(tmp_path / "l.tsv", text_column="sentence", label_column="stars")
    assert tsv.label_names == ["2", "10"] and tsv.labels == [1, 0, 1]  # numbers sort as numbers
    assert tsv.texts == ["ok", "meh", "yes"]
    assert load_labelled(tmp_path / "l.jsonl") == ([("good", 1), ("bad", 0)], ["0", "1"])


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("nolabel.csv", "text,category\nhi,a\n", {}, r"nolabel.csv:1: no column 'label' in the header \(columns: 'text', 'category'\)"),
    ("one.csv", "text,label\nhi,a\nyo,a\n", {}, r"one.csv: the label column 'label' has a single class \('a'\)"),
    ("field.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', {}, r"field.jsonl:2: no field 'label'"),
    ("short.tsv", "text\tlabel\nhi\n", {}, r"short.tsv:2: 1 columns, the header has 2"),
    ("emptytext.csv", "text,label\n,a\nb,c\n", {}, r"emptytext.csv:2: empty 'text'"),
    ("custom.csv", "text,label\nhi,a\n", {"label_column": "y"}, r"custom.csv:1: no column 'y'"),
])
def test_bad_labelled_files_name_the_problem(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        load_labelled(tmp_path / name, **kwargs)


# ---------------------------------------------------------------------- built-in classification


@pytest.fixture(scope="module")
def builtin():
    return builtin_classification(200, seed=3)


def test_builtin_classification_is_real_balanced_text(builtin):
    assert builtin.label_names == ["code", "prose"]
    assert Counter(builtin.labels) == {0: 100, 1: 100} and len(builtin.examples) == 200
    docs = " ".join(load_corpus("python-docs").split())
    stdlib = load_corpus("python-stdlib")
    for text, label in zip(builtin.texts, builtin.labels):
        assert 0 < len(text) <= 160
        if label == 1:
            assert text in docs
        else:
            assert all(line.strip() in stdlib for line in text.splitlines())
    assert builtin_classification(200, seed=3) == builtin
    assert builtin_classification(200, seed=4).texts != builtin.texts


def test_classification_batches_feed_bert(builtin):
    tok = build_tokenizer("char", builtin.texts)
    data = ClassificationDataset(builtin.texts, builtin.labels, tok, max_len=64, label_names=builtin.label_names)
    batch = data.batch(16, gen())
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["labels"].shape == (16,)
    assert (batch["input_ids"][:, 0] == tok.bos_id).all()  # the pooler reads [CLS]/<bos>
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == tok.pad_id).all()
    for row, mask, y in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        ids = row[mask.bool()].tolist()
        assert ids[-1] == tok.eos_id
        text = tok.decode(ids[1:-1])
        assert any(t.startswith(text) and lab == y for t, lab in zip(builtin.texts, builtin.labels))
    torch.manual_seed(0)
    config = BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size, num_labels=2, label_names=data.label_names)
    out = BERT(config)(**batch)
    assert out.logits.shape == (16, 2) and torch.isfinite(out.loss)


def test_classification_dataset_from_a_user_file(tmp_path):
    (tmp_path / "reviews.csv").write_text("text,label\ngreat film,pos\nawful plot,neg\nloved it,pos\nboring,neg\n")
    examples, names = load_labelled(tmp_path / "reviews.csv")
    texts, labels = [t for t, _ in examples], [y for _, y in examples]
    tok = build_tokenizer("char", texts)
    data = ClassificationDataset(texts, labels, tok, max_len=16, label_names=names)
    pairs_form = ClassificationDataset(examples[:2], tok, 16, names)  # (examples, tokenizer, max_len, names)
    assert pairs_form.rows == data.rows[:2] and pairs_form.labels == labels[:2] and pairs_form.label_names == names
    batch = data.batch(4, gen())
    for row, mask, y in zip(batch["input_ids"], batch["attention_mask"], batch["labels"].tolist()):
        assert labels[texts.index(tok.decode(row[mask.bool()].tolist()[1:-1]))] == y
    by_name = ClassificationDataset(texts, [names[y] for y in labels], tok, max_len=16, label_names=names)
    assert by_name.labels == data.labels
    with pytest.raises(DataError, match="example 1 has label 'meh'"):
        ClassificationDataset(texts[:2], ["pos", "meh"], tok, max_len=16, label_names=names)
    with pytest.raises(DataError, match="a single class"):
        ClassificationDataset(texts[:2], ["pos", "pos"], tok, max_len=16)
    # indices without names: a split that lacks class 1 still knows classes 0..2
    assert ClassificationDataset(texts[:2], [0, 2], tok, max_len=16).label_names == ["0", "1", "2"]


def test_seq2seq_from_a_users_file(tmp_path):
    (tmp_path / "en-fr.tsv").write_text("source\ttarget\nthe cat\tle chat\na dog\tun chien\nbread\tdu pain\n")
    pairs = load_pairs(tmp_path / "en-fr.tsv")
    tok = build_tokenizer("char", [s for p in pairs for s in p])
    batch = Seq2SeqDataset(pairs, tok, max_len=16, source="en-fr.tsv").batch(3, gen())
    for src, mask in zip(batch["src_ids"], batch["src_mask"]):
        assert tok.decode(src[mask.bool()].tolist()) in {"the cat", "a dog", "bread"}

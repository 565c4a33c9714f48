"""``glassformer convert SRC DST [--to hf]``: both directions keep the numbers and the token ids;
bad input gives exit code 2, one line on stderr, and no DST."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import AutoTokenizer, BertForMaskedLM, BertTokenizer, GPT2LMHeadModel, GPT2Tokenizer  # noqa: E402

from glassformer import GPT, GPTConfig  # noqa: E402
from glassformer.cli import main  # noqa: E402
from glassformer.interop import save_hf  # noqa: E402
from glassformer.loading import load_model_and_tokenizer  # noqa: E402

TEXTS = ["Hello world, hello fox!", "  Café naïve\ttab  ", "日本語 😀", ""]
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is a test!", "Café naïve résumé"] * 4


def randomize(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def gpt2_hf(tmp_path_factory):
    """A GPT-2 directory as transformers writes it: model, config, byte-level BPE tokenizer."""
    d = tmp_path_factory.mktemp("gpt2")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = GPT2Tokenizer(vocab=spec["vocab"], merges=merges)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=300, n_embd=32, n_head=4, n_layer=2, n_positions=64,
                                     bos_token_id=eos, eos_token_id=eos)
    randomize(GPT2LMHeadModel(config)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_gpt2_converts_both_ways_with_same_logits_and_ids(gpt2_hf, tmp_path, capsys):
    assert run("convert", gpt2_hf, tmp_path / "ours") == 0
    assert "wrote" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path / "ours"))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "gpt"
    model, tok = load_model_and_tokenizer(tmp_path / "ours")
    hf = GPT2LMHeadModel.from_pretrained(gpt2_hf).eval()
    hf_tok = AutoTokenizer.from_pretrained(gpt2_hf)
    ids = torch.tensor([hf_tok("Hello world, hello fox!")["input_ids"]])
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    assert all(tok.encode(t) == hf_tok(t)["input_ids"] for t in TEXTS)

    assert run("convert", tmp_path / "ours", tmp_path / "back", "--to", "hf") == 0
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    back_tok = AutoTokenizer.from_pretrained(tmp_path / "back")
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max() <= 1e-4
    assert all(back_tok(t)["input_ids"] == hf_tok(t)["input_ids"] for t in TEXTS)


def test_bert_convert_keeps_tokenizer_and_mask_id(tmp_path):
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    src = tmp_path / "hf"
    tok = BertTokenizer(vocab=wp.get_vocab(), do_lower_case=False)
    config = transformers.BertConfig(vocab_size=len(wp.get_vocab()), hidden_size=32, num_attention_heads=4,
                                     num_hidden_layers=2, intermediate_size=48, max_position_embeddings=64)
    randomize(BertForMaskedLM(config)).save_pretrained(src)
    tok.save_pretrained(src)
    assert run("convert", src, tmp_path / "ours") == 0
    model, ours_tok = load_model_and_tokenizer(tmp_path / "ours")
    assert model.config.mask_token_id == ours_tok.mask_id == wp.token_to_id("[MASK]")
    assert all(ours_tok.encode(t) == AutoTokenizer.from_pretrained(src)(t)["input_ids"] for t in TEXTS)
    # a cased WordPiece must stay cased in transformers after --to hf (its BertTokenizer lower-cases by default)
    assert run("convert", tmp_path / "ours", tmp_path / "back", "--to", "hf") == 0
    back_tok = AutoTokenizer.from_pretrained(tmp_path / "back")
    assert all(back_tok(t)["input_ids"] == ours_tok.encode(t) for t in TEXTS + ["UPPER Case"])


def test_glassformer_trained_tokenizer_goes_to_hf_unchanged(tmp_path):
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("bpe", CORPUS, vocab_size=300)
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id))
    model.save_pretrained(tmp_path / "ours")
    tok.save(tmp_path / "ours")
    assert run("convert", tmp_path / "ours", tmp_path / "hf", "--to", "hf") == 0
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert all(hf_tok(t)["input_ids"] == tok.encode(t) for t in TEXTS)
    assert all(hf_tok.decode(tok.encode(t)) == tok.decode(tok.encode(t)) for t in TEXTS)


def write_marian_tokenizer(d):
    import io

    import sentencepiece

    vocab = {"</s>": 0, "<unk>": 1}
    for name in ("source.spm", "target.spm"):
        buf = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=60,
                                                 character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
        (d / name).write_bytes(buf.getvalue())
        sp = sentencepiece.SentencePieceProcessor(model_file=str(d / name))
        for piece in (sp.id_to_piece(i) for i in range(sp.get_piece_size())):
            if piece not in vocab and piece not in ("<s>", "</s>", "<unk>"):
                vocab[piece] = len(vocab)
    vocab["<pad>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    return vocab


def test_marian_converts_both_ways_with_its_sentencepiece_tokenizer(tmp_path):
    from transformers import MarianConfig, MarianMTModel

    src = tmp_path / "hf"
    src.mkdir()
    vocab = write_marian_tokenizer(src)
    pad = vocab["<pad>"]
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                          pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, scale_embedding=True,
                          activation_function="swish")
    hf = randomize(MarianMTModel(config))
    hf.save_pretrained(src)
    assert run("convert", src, tmp_path / "ours") == 0
    assert {"source.spm", "target.spm", "vocab.json"} <= set(os.listdir(tmp_path / "ours"))
    model, tok = load_model_and_tokenizer(tmp_path / "ours")
    assert run("convert", tmp_path / "ours", tmp_path / "back", "--to", "hf") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        hf_tok = AutoTokenizer.from_pretrained(tmp_path / "back")
    back = MarianMTModel.from_pretrained(tmp_path / "back").eval()
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_tok(text)["input_ids"]
        src_ids, tgt_ids = torch.tensor([ids]), torch.tensor([[pad] + ids[:-1]])
        with torch.no_grad():
            want = hf(input_ids=src_ids, decoder_input_ids=tgt_ids).logits
            assert (model(src_ids, tgt_ids).logits - want).abs().max() <= 1e-4
            assert (back(input_ids=src_ids, decoder_input_ids=tgt_ids).logits - want).abs().max() <= 1e-4


# ------------------------------------------------------------------------------ bad input


class TouchSentinel:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (self.path,))


def tiny_hf(path):
    torch.manual_seed(0)
    save_hf(GPT(GPTConfig.from_name("gpt-tiny")), path)
    return path


def edit_config(d, **fields):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **fields}))


def drop_weight(d):
    state = load_file(d / "model.safetensors")
    del state["transformer.ln_f.weight"]
    save_file(state, d / "model.safetensors")


def evil_pickle(d):
    state = dict(load_file(d / "model.safetensors"))
    state["transformer.wte.weight"] = TouchSentinel(d.parent / "PWNED")
    (d / "model.safetensors").unlink()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump(state, f)


BAD = {
    "unknown model_type": (lambda d: edit_config(d, model_type="t5"), "model_type 't5' is not supported"),
    "remote code": (lambda d: edit_config(d, auto_map={"AutoModel": "evil.Model"}), "asks for remote code"),
    "truncated safetensors": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:4000]),
                              "fall outside"),
    "missing weight": (drop_weight, "missing weight 'transformer.ln_f.weight'"),
    "pickle with code": (evil_pickle, "refused to unpickle"),
    "no directory": (lambda d: None, "no such model directory"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, case):
    damage, message = BAD[case]
    src = tmp_path / "src"
    if case != "no directory":
        damage(tiny_hf(src))
    out = tmp_path / "out"
    assert run("convert", src, out / "dst") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("glassformer: error: ") and message in err
    assert not out.exists()  # not even the parent: everything is checked before anything is written
    assert not (tmp_path / "PWNED").exists()


def test_existing_destination_is_kept_unless_overwrite(tmp_path, capsys):
    src = tiny_hf(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert run("convert", src, dst) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(dst) == ["keep.txt"]
    assert run("convert", src, dst, "--overwrite") == 0
    assert "keep.txt" not in os.listdir(dst) and (dst / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]  # no temporary directories left behind


def test_wrong_direction_is_explained(tmp_path, capsys):
    src = tiny_hf(tmp_path / "hf")
    assert run("convert", src, tmp_path / "x", "--to", "hf") == 2
    assert "not a glassformer model directory" in capsys.readouterr().err
    GPT(GPTConfig.from_name("gpt-tiny")).save_pretrained(tmp_path / "ours")
    assert run("convert", tmp_path / "ours", tmp_path / "y") == 2
    assert "already a glassformer model; use --to hf" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_real_process_prints_exactly_one_line_for_a_code_pickle(tmp_path):
    """In a real process logging and warnings reach stderr too; still only the error line."""
    src = tiny_hf(tmp_path / "src")
    evil_pickle(src)
    proc = subprocess.run([sys.executable, "-m", "glassformer", "convert", str(src), str(tmp_path / "dst")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused to unpickle" in proc.stderr, proc.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "PWNED").exists()

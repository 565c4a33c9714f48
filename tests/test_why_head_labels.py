"""One name per head: what ``heads`` reports is what ``ablate`` switches off, on a trained seq2seq.

Before the family protocol, ``heads`` scored an encoder-decoder's *encoder* heads and printed bare
"layer, head" numbers, while ``ablate --head L.H`` silenced the *decoder* head with those numbers:
one label named two heads. Here the label comes out of ``heads --json`` and goes into ``ablate``;
the hooked run must show that very head's output z at zero, and only it.
"""

from __future__ import annotations

import json

import pytest
import torch

from glassformer.cli import main
from glassformer.explain.hooks import ablate_heads, ablation_hooks
from glassformer.models import Transformer, TransformerConfig
from glassformer.tokenizers import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

LETTERS = "abcdefghijklmnop"
TEXT = "abcdefg"


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    """A tiny encoder-decoder trained for 200 steps to reverse 7 letters: its heads learn different jobs."""
    tok = CharTokenizer.train(LETTERS)
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name(
        "transformer-tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, dropout=0.0))
    letters = torch.tensor(tok.encode(LETTERS))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        src = letters[torch.randint(len(letters), (32, 7), generator=g)]  # (B, S)
        tgt = torch.cat([torch.full((32, 1), tok.bos_id), src.flip(1)], 1)  # (B, 1 + S): start, then reversed
        loss = model(src, tgt[:, :-1], labels=tgt[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 1.5  # it learned something (uniform over 16 letters is 2.8 nats)
    d = tmp_path_factory.mktemp("s2s")
    model.save_pretrained(d)
    tok.save(d)
    return model, tok, str(d)


def _json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_the_label_heads_reports_is_the_head_ablate_switches_off(seq2seq, capsys):
    model, tok, directory = seq2seq
    report = _json(capsys, "heads", directory, "--json", "--n", "6", "--batch", "4")
    rows = report["heads"]
    assert report["attention"] == "encoder-self" and all(r["label"].startswith("encoder.") for r in rows)
    layer = rows[-1]["layer"]
    chosen, other = [r["label"] for r in rows if r["layer"] == layer][:2]  # two heads of one layer
    assert (chosen, other) == (f"encoder.{layer}.0", f"encoder.{layer}.1")

    # the command line acts on the label as given, and says which attention that is
    ablated = _json(capsys, "ablate", directory, TEXT, "--head", chosen, "--json")
    assert ablated["heads"] == [chosen] and ablated["attention"] == ["encoder-self"]
    bare = _json(capsys, "ablate", directory, TEXT, "--head", chosen.split(".", 1)[1], "--json")
    assert bare["heads"] == ["decoder." + chosen.split(".", 1)[1]] and bare["attention"] == ["decoder-self"]

    # in a hooked run, exactly that head's z is zero
    ref = model.parse_head(chosen)
    src = torch.tensor([tok.encode(TEXT)])
    tgt = torch.tensor([[tok.bos_id] + tok.encode("gfe")])
    hooks = ablation_hooks(model, [chosen])
    site = f"encoder.{ref.layer}.attn.z"
    assert list(hooks) == [site]
    seen = {}
    with torch.no_grad():
        _, clean = model.run_with_cache(src, tgt, names=[site])
        model.run_with_hooks(src, tgt, hooks={site: lambda z: seen.setdefault("z", hooks[site](z))})
    z, z0 = seen["z"], clean[site]  # (B, H, T, D)
    assert z0[:, ref.head].abs().max() > 0 and torch.all(z[:, ref.head] == 0)
    keep = [h for h in range(z.shape[1]) if h != ref.head]
    torch.testing.assert_close(z[:, keep], z0[:, keep], atol=0, rtol=0)

    # another label switches off another head: the outputs differ
    with torch.no_grad():
        outputs = {label: ablate_heads(model, src, [label], tgt_ids=tgt).logits
                   for label in (chosen, other, chosen.split(".", 1)[1])}
    assert not torch.allclose(outputs[chosen], outputs[other], atol=1e-5)
    assert not torch.allclose(outputs[chosen], outputs[chosen.split(".", 1)[1]], atol=1e-5)


def test_decoder_self_heads_are_scored_and_labelled_on_request(seq2seq, capsys):
    _, _, directory = seq2seq
    report = _json(capsys, "heads", directory, "--json", "--n", "6", "--batch", "4", "--kind", "decoder-self")
    assert report["attention"] == "decoder-self" and report["heads"][0]["label"] == "decoder.0.0"
    assert main(["heads", directory, "--kind", "cross"]) == 2
    assert "self-attention" in capsys.readouterr().err

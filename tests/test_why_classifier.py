"""The "why" tools on what users fine-tune (issue 29): classifiers and embedding models.

Identities, each able to fail: ablating nothing changes nothing; ablation equals switching the head
off by hand; the class-logit parts sum to the class logit (post-LN and pre-LN); a head whose W^O
slice is zero has share and effect 0; patching clean into clean changes nothing and patching the
last layer's whole output restores the clean run; --vs sums to the logit difference. The last test
trains a classifier with ``train classifier`` and runs ablate, patch and attribute --label on it.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from conftest import assert_refused, randomize, run_main, save_tiny_models
from glassformer.explain.class_attribution import (
    class_attribution,
    class_logit_parts,
    stream_names,
    stream_parts,
)
from glassformer.explain.hooks import ablate_heads
from glassformer.explain.insight import ablation, attribution_report
from glassformer.explain.patching import patching
from glassformer.explain.readouts import choose_readout
from glassformer.models import BERT, BERTConfig

TEXT = "the cat sat on"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """The shared tiny models, plus a headless BERT (an embedding model) and a pre-LN classifier."""
    root = tmp_path_factory.mktemp("models")
    out = save_tiny_models(root)
    tok = out["tok"]
    torch.manual_seed(1)
    for name, config in (("embed", dict(mlm_head=False)),
                         ("preln", dict(num_labels=2, mlm_head=False, norm_first=True, label_names=["a", "b"]))):
        model = randomize(BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                                    **config)), std=0.1)
        model.save_pretrained(root / name)
        tok.save(root / name)
        out[name] = root / name
    return out


def _load(path):
    from glassformer.explain.insight import load

    return load(str(path))


def test_the_protocol_says_what_each_model_reads_out(dirs):
    bert, _ = _load(dirs["bert"])  # a classifier with a masked-LM head too
    gpt, _ = _load(dirs["gpt"])
    embed, _ = _load(dirs["embed"])
    assert bert.readouts == ("classes", "masked", "embedding") and bert.readout_kind == "classes"
    assert gpt.readouts == ("next",) and not gpt.has_classifier and gpt.class_labels == []
    assert embed.readouts == ("embedding",) and embed.predicts == "none"
    assert bert.class_labels == ["neg", "neutral", "pos"]
    ids = torch.tensor([dirs["tok"].encode(TEXT)])
    with torch.no_grad():
        out = bert(ids)
        assert torch.equal(bert.class_readout(out.last_hidden_state), out.logits)  # what forward returns


def test_ablating_nothing_changes_nothing_and_ablation_is_switching_the_head_off(dirs):
    bert, tok = _load(dirs["bert"])
    none = ablation(bert, tok, TEXT, [])
    assert none["readout"] == "classes" and none["kl_before_after"] == 0.0
    assert all(c["p_before"] == c["p_after"] and c["logit_before"] == c["logit_after"] for c in none["classes"])
    r = ablation(bert, tok, TEXT, ["encoder.1.2", "0.0"])
    with torch.no_grad():
        want = ablate_heads(bert, torch.tensor([tok.encode(TEXT)]), ["encoder.1.2", "encoder.0.0"]).logits[0].softmax(-1)
    assert [c["p_after"] for c in r["classes"]] == pytest.approx(want.tolist(), abs=1e-6)
    assert r["kl_before_after"] > 0 and r["predicted_before"] in bert.class_labels
    # the same BERT read through its masked-LM head when asked
    ids = tok.encode(TEXT)[:3] + [tok.mask_id] + tok.encode(TEXT)[4:]
    masked = choose_readout(bert, tok, ids, "tokens")
    assert (masked.kind, masked.position) == ("masked", 3)

    embed, tok = _load(dirs["embed"])
    nothing = ablation(embed, tok, TEXT, [], pair="a dog")
    assert nothing["cosine_before_after"] == pytest.approx(1.0, abs=1e-12)
    assert nothing["pair"]["cosine_before"] == nothing["pair"]["cosine_after"]
    moved = ablation(embed, tok, TEXT, ["1.0", "1.1", "1.2", "1.3"], pair="a dog")
    assert moved["cosine_before_after"] < 1.0 - 1e-6 and moved["pair"]["cosine_after"] != moved["pair"]["cosine_before"]


@pytest.mark.parametrize("name", ["bert", "preln"])
def test_class_logit_parts_sum_to_the_class_logits(dirs, name):
    model, tok = _load(dirs[name])
    ids = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():
        out, cache = model.run_with_cache(ids, names=stream_names(model))
        labels, parts = stream_parts(model, cache, 0)
    assert (parts.sum(0) - out.last_hidden_state[:, 0]).abs().max() <= 1e-5  # the stream the pooler reads
    labels, shares, logits = class_logit_parts(model, ids)
    assert (shares.sum(0) - out.logits[0]).abs().max() <= 1e-4 and len(labels) == shares.shape[0]
    a = class_attribution(model, ids, 1)
    assert a.check_error <= 1e-4 and a.logit == pytest.approx(float(out.logits[0, 1]), abs=1e-6)
    d = class_attribution(model, ids, 1, vs=0)
    assert d.check_error <= 1e-4 and d.logit == pytest.approx(float(out.logits[0, 1] - out.logits[0, 0]), abs=1e-5)
    assert torch.allclose(d.heads, a.heads - class_attribution(model, ids, 0).heads, atol=1e-5)


def test_a_silent_head_has_no_share_and_no_effect(dirs):
    model, tok = _load(dirs["bert"])
    d = model.config.d_model // model.config.n_heads
    with torch.no_grad():
        model.encoder.layers[1].self_attn.w_o.weight[:, 2 * d:3 * d] = 0.0  # head 2 of layer 1 writes nothing
    direct, _ = attribution_report(model, tok, TEXT, label="pos")
    effects, _ = attribution_report(model, tok, TEXT, label="pos", method="ablation")
    assert direct.heads[1, 2] == 0.0 and effects.heads[1, 2] == 0.0
    assert direct.heads[1].abs().sum() > 0 and effects.heads[0].abs().sum() > 0
    ids = torch.tensor([tok.encode(TEXT)])
    with torch.no_grad():  # an effect is the logit minus the logit without that head, computed apart
        clean = model(ids).logits[0, 2]
        without = ablate_heads(model, ids, ["0.1"]).logits[0, 2]
    assert effects.heads[0, 1] == pytest.approx(float(clean - without), abs=1e-5)
    assert effects.method == "ablation" and effects.check_error != effects.check_error  # nan: no sum claimed


def test_patching_identities_for_every_readout(dirs):
    model, tok = _load(dirs["bert"])
    last = "encoder.1.resid_post"
    same = patching(model, tok, TEXT, TEXT, "encoder.0.attn.z")
    d = same["logit_diff"]
    assert d["patched"] == d["clean"] == d["corrupted"] and d["restored"] is None
    full = patching(model, tok, TEXT, "the dog sat on", last)
    d = full["logit_diff"]
    assert d["patched"] == pytest.approx(d["clean"], abs=1e-5) and d["restored"] == pytest.approx(1.0, abs=1e-4)
    assert [c["p_patched"] for c in full["classes"]] == pytest.approx([c["p_clean"] for c in full["classes"]], abs=1e-6)
    partly = patching(model, tok, TEXT, "the dog sat on", last, positions=[1, 2])  # [CLS] unpatched: nothing reaches it
    assert partly["logit_diff"]["patched"] == partly["logit_diff"]["corrupted"]

    embed, tok = _load(dirs["embed"])
    r = patching(embed, tok, TEXT, "the dog sat on", last)
    assert r["cosine"]["patched_clean"] == pytest.approx(1.0, abs=1e-6) and r["cosine"]["clean_corrupted"] < 1.0

    gpt, tok = _load(dirs["gpt"])
    r = patching(gpt, tok, TEXT, "the dog sat on", "decoder.1.resid_post", positions=[-1], answer="a", vs="b")
    d = r["logit_diff"]
    assert (d["a"], d["b"]) == ("a", "b") and d["restored"] == pytest.approx(1.0, abs=1e-4)


def test_attribute_vs_sums_to_the_logit_difference_on_a_language_model(dirs, capsys):
    gpt, tok = _load(dirs["gpt"])
    a, name = attribution_report(gpt, tok, TEXT, token="a", vs="o")
    with torch.no_grad():
        logits = gpt(torch.tensor([tok.encode(TEXT)])).logits[0, -1]
    want = float(logits[tok.encode("a", add_special_tokens=False)[0]] - logits[tok.encode("o", add_special_tokens=False)[0]])
    assert a.logit == pytest.approx(want, abs=1e-5) and a.check_error <= 1e-4 and name == "'a' − 'o'"
    code, out, _ = run_main(capsys, "attribute", dirs["gpt"], TEXT, "--token", "a", "--vs", "o", "--json")
    data = json.loads(out)
    assert code == 0 and abs(data["sum"] - data["logit"]) <= 1e-4 and data["vs_id"] == a.vs_id
    code, out, _ = run_main(capsys, "attribute", dirs["gpt"], TEXT, "--token", "a", "--method", "ablation")
    assert code == 0 and "do not add up" in out and "sum of all parts" not in out


@pytest.mark.parametrize("argv,message", [
    (["patch", "{bert}", "--clean", "the cat", "--corrupted", "the cats", "--site", "encoder.0.attn.z"],
     "must tokenise to the same length"),
    (["patch", "{bert}", "--clean", "ab", "--corrupted", "cd", "--site", "encoder.9.attn.z"], "encoder.9.attn.z"),
    (["patch", "{bert}", "--clean", "ab", "--corrupted", "cd", "--site", "encoder.0.attn.z", "--positions", "7"],
     "position 7 is out of range"),
    (["attribute", "{bert}", "ab", "--label", "happy"], "its classes are neg, neutral, pos"),
    (["attribute", "{bert}", "ab", "--label", "pos", "--vs", "pos"], "name another class"),
    (["attribute", "{gpt}", "ab", "--label", "pos"], "has no classification head"),
    (["attribute", "{embed}", "ab"], "no language-model head"),
    (["ablate", "{gpt}", "ab", "--head", "0.0", "--readout", "classes"], "cannot be read as classes"),
    (["ablate", "{bert}", "ab", "--head", "0.0", "--pair", "cd"], "--pair compares two sentence vectors"),
])
def test_bad_input_gets_one_line_and_exit_2(dirs, capsys, argv, message):
    assert_refused(capsys, *[a.format(**{k: str(v) for k, v in dirs.items() if k != "tok"}) for a in argv], match=message)


def _labelled(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def test_on_a_fine_tuned_classifier_ablate_patch_and_attribute_label_hold_their_identities(tmp_path, capsys):
    words = {"pos": ["good", "fine", "nice"], "neg": ["bad", "sad", "poor"]}
    rows = [(f"{a} and {b}", y) for y in words for a in words[y] for b in words[y]] * 4
    data = _labelled(tmp_path / "train.csv", rows)
    run = tmp_path / "run"
    code, out, err = run_main(capsys, "train", "classifier", "--data", data, "--out", run, "--n-layers", "2",
                              "--n-heads", "2", "--d-model", "32", "--context", "24", "--batch-size", "8",
                              "--max-steps", "20", "--lr", "3e-3", "--eval-every", "10", "--progress", "none", "--seed", "0")
    assert code == 0, err
    model, tok = _load(run)
    assert model.readout_kind == "classes" and model.predicts == "none" and sorted(model.class_labels) == ["neg", "pos"]

    code, out, _ = run_main(capsys, "ablate", run, "good and nice", "--head", "1.0", "--head", "0.1", "--json")
    r = json.loads(out)
    assert code == 0 and r["readout"] == "classes" and {c["label"] for c in r["classes"]} == {"neg", "pos"}
    assert sum(c["p_before"] for c in r["classes"]) == pytest.approx(1.0, abs=1e-5)
    assert ablation(model, tok, "good and nice", [])["kl_before_after"] == 0.0  # ablating nothing changes nothing
    code, out, _ = run_main(capsys, "ablate", run, "good and nice", "--head", "1.0")
    assert code == 0 and "class probabilities before and after" in out and "KL(before ‖ after)" in out

    clean, corrupted = "good and nice", "poor and sadd"
    if len(tok.encode(clean)) != len(tok.encode(corrupted)):  # a subword tokenizer: find a same-length pair
        corrupted = next(t for t in ("bad and poor", "sad and poor", "poor and bad", "bad and sad")
                         if len(tok.encode(t)) == len(tok.encode(clean)))
    code, out, _ = run_main(capsys, "patch", run, "--clean", clean, "--corrupted", corrupted, "--site",
                            "encoder.1.resid_post", "--json")
    p = json.loads(out)
    assert code == 0 and p["logit_diff"]["patched"] == pytest.approx(p["logit_diff"]["clean"], abs=1e-5)
    code, out, _ = run_main(capsys, "patch", run, "--clean", clean, "--corrupted", clean, "--site", "encoder.0.attn.z")
    assert code == 0 and "restored n/a" in out

    code, out, _ = run_main(capsys, "attribute", run, clean, "--label", "pos", "--json")
    a = json.loads(out)
    assert code == 0 and a["kind"] == "class" and a["label"] == "pos" and a["method"] == "direct"
    assert abs(a["sum"] - a["logit"]) <= 1e-4 and "LayerNorm" in a["note"]
    with torch.no_grad():
        want = model(torch.tensor([tok.encode(clean)])).logits[0, model.class_labels.index("pos")]
    assert a["logit"] == pytest.approx(float(want), abs=1e-5)
    code, out, _ = run_main(capsys, "attribute", run, clean, "--label", "pos", "--vs", "neg")
    assert code == 0 and "logit difference" in out and "sum of all parts" in out
    code, out, _ = run_main(capsys, "attribute", run, clean, "--method", "ablation", "--json")
    e = json.loads(out)
    assert code == 0 and e["method"] == "ablation" and "sum" not in e and "not a decomposition" in e["note"]


def test_the_readme_documents_patch_label_and_vs():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for needle in ("glassformer patch", "attribute --label", "--vs", "--method ablation"):
        assert needle in readme, needle

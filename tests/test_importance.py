"""ablate --each: every head silenced alone, ranked; batched == one by one; the roles beside it."""

import json

import pytest
import torch

from conftest import random_gpt, random_transformer, run_main, save_tiny_models
from glassformer.explain import insight
from glassformer.explain.heads import ROLES, HeadScores, head_scores
from glassformer.explain.hooks import InterventionError, ablate_heads
from glassformer.explain.importance import UNNAMED_SHARE, format_importance, head_importance
from glassformer.tokenizers import build_tokenizer
from test_why_heads import induction_gpt

LETTERS = "abcdefghijk"  # a char tokenizer over these has 16 ids: the hand-built circuit's vocabulary


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("models"))


def text_loss(logits: torch.Tensor, ids: list[int]) -> float:
    return float(torch.nn.functional.cross_entropy(logits[0, :-1].detach().float(), torch.tensor(ids[1:])))


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_each_change_equals_silencing_that_head_alone_by_hand(mode, batch):
    model = random_gpt(std=0.3, seed=2, vocab_size=16)
    tok = build_tokenizer("char", LETTERS)
    text = "abcdefabcdef"
    ids = tok.encode(text)
    imp = head_importance(model, tok, text, mode=mode, batch=batch)
    x = torch.tensor([ids])
    before = text_loss(model(x).logits, ids)
    assert imp.measure == "loss" and imp.before == pytest.approx(before, abs=1e-5)
    spec = model.main_attention
    assert sorted(h.label for h in imp.heads) == sorted(r.label for r in spec.heads())
    for h in imp.heads:
        after = text_loss(ablate_heads(model, x, [h.label], mode=mode).logits, ids)
        assert h.after == pytest.approx(after, abs=1e-5), h
        assert h.change == pytest.approx(after - before, abs=1e-5), h
        assert imp.targets == ids[1:] and len(h.by_position) == len(ids) - 1
        assert sum(h.by_position) / len(h.by_position) == pytest.approx(h.change, abs=1e-5)
    h = imp.heads[0]  # token by token: the change of each predicted token's loss, by hand
    ce = lambda logits: torch.nn.functional.cross_entropy(logits[0, :-1].detach(), x[0, 1:], reduction="none")  # noqa: E731
    want = ce(ablate_heads(model, x, [h.label], mode=mode).logits) - ce(model(x).logits)
    assert h.by_position == pytest.approx(want.tolist(), abs=1e-5)
    changes = [h.change for h in imp.heads]
    assert changes == sorted(changes, reverse=True)
    assert max(abs(c) for c in changes) > 1e-3  # the random heads do something: the check above is not vacuous


def test_the_hand_built_circuit_needs_exactly_its_two_heads_and_the_roles_name_them():
    model = induction_gpt()  # layer 0 head 0: previous token; layer 1 head 0: induction; heads 1: zero weights
    tok = build_tokenizer("char", LETTERS)
    roles = head_scores(model, n=10, batch=8)
    imp = head_importance(model, tok, "hdkafbhdkafb", roles=roles)
    top2 = {h.label: h for h in imp.heads[:2]}
    assert set(top2) == {"decoder.0.0", "decoder.1.0"}
    assert all(h.change > 0.5 for h in top2.values()), imp.heads  # the repeat is predicted by the circuit
    assert [h.change for h in imp.heads[2:]] == [0.0, 0.0]  # heads with zero weights change nothing at all
    assert top2["decoder.1.0"].role == "induction" and top2["decoder.0.0"].role == "previous_token"
    assert imp.unnamed == []  # every head that matters has a name
    table = format_importance(imp)
    assert table.splitlines()[2].startswith(("decoder.0.0", "decoder.1.0")) and "induction" in table


def test_a_head_that_matters_without_a_role_is_flagged_and_only_then():
    model = random_gpt(std=0.3, seed=2, vocab_size=16)
    tok = build_tokenizer("char", LETTERS)
    layers, heads = model.config.n_layers, model.config.n_heads
    plain = head_importance(model, tok, "abcdefabcdef")
    named = {plain.heads[0].label}  # the most important head gets a role; every other head none
    scores = {r: torch.zeros(layers, heads) for r in ROLES}
    top = plain.heads[0]
    scores["sink"][top.layer, top.head] = 0.9
    for h in plain.heads[1:]:
        scores["induction"][h.layer, h.head] = 0.1  # below the threshold: no role
    roles = HeadScores("decoder", scores, n=4, batch=1)
    imp = head_importance(model, tok, "abcdefabcdef", roles=roles)
    big = {h.label for h in imp.heads if h.change >= UNNAMED_SHARE * imp.heads[0].change}
    assert len(big) >= 2, imp.heads  # otherwise the flag below would be checked on nothing
    assert set(imp.unnamed) == big - named
    assert imp.heads[0].role == "sink" and not imp.heads[0].unnamed
    assert "matters, no named role" in format_importance(imp)


def test_classifier_embedding_and_encoder_decoder_use_their_own_measure(dirs):
    from glassformer.loading import load_model_and_tokenizer

    bert, tok = load_model_and_tokenizer(dirs["bert"])
    bert.eval()
    imp = head_importance(bert, tok, "abc cab", batch=5)
    assert imp.measure == "kl" and imp.attention == "encoder-self"
    assert imp.targets == [] and all(h.by_position is None for h in imp.heads)  # one answer: no token by token
    for h in imp.heads:  # KL of the class probabilities, as `ablate --head` reports it
        one = insight.ablation(bert, tok, "abc cab", [h.label])
        assert h.change == pytest.approx(one["kl_before_after"], abs=1e-7)
    emb = head_importance(bert, tok, "abc cab", readout="embedding")
    assert emb.measure == "cosine"
    for h in emb.heads:
        one = insight.ablation(bert, tok, "abc cab", [h.label], readout="embedding")
        assert h.change == pytest.approx(1 - one["cosine_before_after"], abs=1e-7)
    s2s, tok = load_model_and_tokenizer(dirs["seq2seq"])
    s2s.eval()
    with_target = head_importance(s2s, tok, "abc", target="cab", kind="cross", batch=4)
    assert with_target.measure == "loss" and with_target.attention == "cross"
    assert all(h.label.startswith("cross.") and h.role_score is None for h in with_target.heads)
    one_step = head_importance(s2s, tok, "abc")  # no target: the first target token's distribution
    assert one_step.measure == "kl" and one_step.attention == "decoder-self"


def test_bad_requests_are_refused_before_running():
    model = random_transformer()
    tok = build_tokenizer("char", LETTERS)
    with pytest.raises(InterventionError, match="mode"):
        head_importance(model, tok, "abc", mode="half")
    with pytest.raises(InterventionError, match="batch"):
        head_importance(model, tok, "abc", batch=0)
    roles = HeadScores("encoder", {r: torch.zeros(2, 4) for r in ROLES}, n=4, batch=1, kind="encoder-self")
    with pytest.raises(InterventionError, match="roles are of encoder-self"):
        head_importance(model, tok, "abc", kind="decoder-self", roles=roles)


def test_the_command_ranks_every_head_as_text_and_json(dirs, capsys):
    code, out, _ = run_main(capsys, "ablate", str(dirs["gpt"]), "abcab abcab", "--each")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("each of the ") and "loss on the text" in lines[0] and "most at" in lines[1]
    n_heads = sum(s.n_heads * s.n_layers for s in [random_gpt().main_attention])
    assert sum(line.startswith("decoder.") for line in lines) == n_heads
    code, out, _ = run_main(capsys, "ablate", str(dirs["gpt"]), "abcab abcab", "--each", "--json", "--top", "2")
    data = json.loads(out)
    assert code == 0 and data["measure"] == "loss" and len(data["heads"]) == n_heads  # --top only shortens the table
    assert all(h["role_score"] is not None for h in data["heads"])  # roles scored beside the ranking
    code, out, _ = run_main(capsys, "ablate", str(dirs["seq2seq"]), "abc", "--each", "--kind", "cross",
                            "--target", "ab", "--top", "3")
    assert code == 0 and "(not scored)" in out and "... " in out


@pytest.mark.parametrize("argv, match", [
    (["ablate", "{gpt}", "abc", "--each", "--kind", "cross"], "--kind cross: this GPT has no cross attention"),
    (["ablate", "{gpt}", "abc", "--each", "--pair", "abd"], "--pair"),
    (["ablate", "{gpt}", "abc", "--head", "0.0", "--kind", "cross"], "--kind chooses"),
    (["ablate", "{gpt}", "abc", "--each", "--top", "0"], "--top must be >= 1"),
])
def test_bad_each_flags_get_one_line(dirs, capsys, argv, match):
    code, out, err = run_main(capsys, *[a.format(gpt=dirs["gpt"]) for a in argv])
    assert code == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_each_and_head_together_are_refused_by_the_parser(dirs, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(capsys, "ablate", str(dirs["gpt"]), "abc", "--each", "--head", "0.0")
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err

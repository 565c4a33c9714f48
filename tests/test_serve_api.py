"""The explorer's JSON API (``glassformer serve``): every endpoint against the library's own numbers,
and every bad input answered with a 4xx JSON error naming the problem (never a 500 or a traceback)."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from starlette.testclient import TestClient

from conftest import run_main, save_tiny_models
from glassformer.api import load
from glassformer.serve.app import create_app
from glassformer.serve.server import open_models

TEXT = "the cat sat on"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    dirs = save_tiny_models(tmp_path_factory.mktemp("models"))
    models = open_models([dirs["gpt"], dirs["bert"], dirs["seq2seq"]], warm=False)
    client = TestClient(create_app(models, "127.0.0.1"), base_url="http://127.0.0.1:8000")
    return {"dirs": dirs, "models": models, "client": client}


def post(env, path, **body):
    return env["client"].post("/api/" + path, json={"text": TEXT, **body})


def ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def test_models_are_listed_by_index_and_name_with_their_protocol(env):
    got = env["client"].get("/api/models").json()["models"]
    assert [(m["name"], m["family"], m["main"], m["predicts"]) for m in got] == [
        ("gpt", "gpt", "decoder", "next"), ("bert", "bert", "encoder", "masked"), ("seq2seq", "transformer", "decoder", "next")]
    assert [a["label"] for a in got[2]["attentions"]] == ["encoder", "decoder", "cross"]
    assert ok(post(env, "tokens", model="bert")) == ok(post(env, "tokens", model=1))


def test_tokens_and_attention_are_the_models(env):
    gpt = env["models"][0]
    ids = gpt.tokenizer.encode(TEXT)
    data = ok(post(env, "attention", model=0))
    assert [t["id"] for t in data["streams"]["tokens"]] == ids
    with torch.no_grad():
        out = gpt.model(torch.tensor([ids]), return_attentions=True)
    got = torch.tensor(data["views"][0]["weights"])  # (L, H, T, T)
    want = torch.stack([out.attention("decoder-self", i)[0] for i in range(2)])
    assert (got - want).abs().max() <= 1e-5
    roles = data["roles"]["heads"]
    assert len(roles) == 2 * 4 and {"layer", "head", "role", "score", "induction"} <= set(roles[0])


def test_the_four_steps_are_explains_numbers(env):
    from glassformer.explain.steps import four_steps

    for m, head, query in ((0, "1.2", 5), (1, "0.3", 2), (2, "cross.1.0", 1)):
        served = env["models"][m]
        body = {"model": m, "head": head, "query": query}
        if served.model.needs_target:
            body["target"] = "a cat"
        s = ok(post(env, "steps", **body))
        ids = served.tokenizer.encode(TEXT)
        ref = served.model.parse_head(head)
        tgt = None
        if served.model.needs_target:
            tgt = torch.tensor([[served.model.decoder_start_token_id] + served.tokenizer.encode("a cat", add_special_tokens=False)])
        want = four_steps(served.model, ids, ref.layer, ref.head, query, kind=ref.kind, tgt_ids=tgt)
        assert s["raw_scores"] == want.raw_scores.tolist() and s["weights"] == want.weights.tolist()
        assert s["z"] == want.z.tolist() and s["ok"] and s["head"] == ref.label
        assert s["rotary"] is None  # added positions: no rotation to show


def test_the_four_steps_of_a_rotary_model_show_where_the_rotation_enters(tmp_path):
    """With rotary positions, ``steps`` adds q and the keys before and after their turn; the turned
    scores are step 2's and the model's (test_llama_tools.py runs it on a Llama directory)."""
    from conftest import TINY_TEXT, randomize
    from glassformer.explain.rotary import rotary_view
    from glassformer.models import GPT, GPTConfig
    from glassformer.serve import handlers
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", TINY_TEXT)
    torch.manual_seed(0)
    randomize(GPT(GPTConfig.from_name("llama-tiny", vocab_size=tok.vocab_size))).save_pretrained(tmp_path / "rotary")
    tok.save(tmp_path / "rotary")
    served = open_models([tmp_path / "rotary"], warm=False)[0]
    s = handlers.steps(served, TEXT, "1.3", 6)
    r = s["rotary"]
    want = rotary_view(served.model, tok.encode(TEXT), 1, 3, 6)
    assert r["q"] == want.q.tolist() and r["keys_rot"] == want.keys_rot.tolist() and r["kv_head"] == 1
    assert r["ok"] and r["scores"] == pytest.approx(s["scaled_scores"], rel=1e-5, abs=1e-6)
    assert r["scores_unrotated"] != pytest.approx(r["scores"], abs=1e-3)  # positions change the scores
    assert len(r["keys"]) == len(tok.encode(TEXT)) and json.loads(json.dumps(s)) == s  # JSON as it is


def test_ablation_changes_predictions_and_matches_switching_the_head_off(env):
    gpt = env["models"][0]
    r = ok(post(env, "ablate", model=0, heads=["0.1"], mode="zero"))
    assert r["kl"] > 0 and r["before"] != r["after"] and r["loss_after"] != r["loss_before"]
    from glassformer.explain.hooks import ablate_heads

    ids = torch.tensor([gpt.tokenizer.encode(TEXT)])
    with torch.no_grad():
        want = ablate_heads(gpt.model, ids, [(0, 1)], "zero").logits[0, -1].softmax(-1)
    assert r["after"][0]["id"] == int(want.argmax()) and r["after"][0]["p"] == pytest.approx(float(want.max()), abs=1e-5)
    mean = ok(post(env, "ablate", model=0, heads=["0.1"], mode="mean"))
    assert mean["after"] != r["after"]
    assert ok(post(env, "ablate", model=2, heads=["cross.0.1", "encoder.1.0"], target="a"))["kl"] > 0


def test_every_head_ranked_is_the_librarys_ranking_with_the_pages_roles(env):
    from glassformer.explain.importance import head_importance
    from glassformer.serve import handlers

    gpt = env["models"][0]
    r = ok(post(env, "importance", model=0))
    want = head_importance(gpt.model, gpt.tokenizer, TEXT, roles=gpt.role_scores).to_json()
    assert r == json.loads(json.dumps(want))  # the same numbers, through JSON
    assert r["measure"] == "loss" and len(r["heads"]) == 2 * 4 and r["heads"][0]["change"] >= r["heads"][-1]["change"]
    page_roles = {h["label"]: h["role"] for h in handlers.roles(gpt)["heads"]}
    assert {h["label"]: h["role"] for h in r["heads"]} == page_roles  # the roles the model view shows
    cross = ok(post(env, "importance", model=2, attention="cross", target="a", mode="mean"))
    assert cross["attention"] == "cross" and cross["mode"] == "mean" and all(h["role_score"] is None for h in cross["heads"])
    assert ok(post(env, "importance", model=1))["measure"] == "kl"  # the classifier: KL of its class probabilities
    r = post(env, "importance", model=0, attention="cross")
    assert r.status_code == 400 and "no 'cross' attention" in r.json()["error"]
    r = post(env, "importance", model=0, attention=["decoder"])
    assert r.status_code == 400 and "'attention' must be" in r.json()["error"]


def test_lens_attribution_generation_fill_mask_history(env):
    lens = ok(post(env, "lens", model=0, k=2))
    assert lens["layers"] == ["embed", "0", "1"] and lens["max_error_last_layer"] < 1e-4 and len(lens["top"][0][0]) == 2
    attr = ok(post(env, "attribution", model=0, token="o"))
    assert attr["check_error"] < 1e-4 and attr["token"]["text"] == "o"
    gen = ok(post(env, "generate", model=0, steps=3))
    assert len(gen["steps"]) == 3 and gen["text"] == load(env["dirs"]["gpt"]).generate(TEXT, max_new_tokens=3)
    sampled = ok(post(env, "generate", model=0, steps=2, temperature=0.8, top_k=3, seed=1))
    assert all(sum(c["p_drawn"] > 0 for c in s["candidates"]) <= 3 for s in sampled["steps"])
    assert len(ok(post(env, "generate", model=2, steps=2))["steps"]) >= 1  # translation, step by step
    mask = env["models"][1].tokenizer.id_to_token(env["models"][1].tokenizer.mask_id)
    fill = ok(post(env, "fill-mask", model=1, text=f"the {mask}at", k=3))
    assert len(fill["masks"]) == 1 and len(fill["masks"][0]) == 3
    assert ok(post(env, "history", model=0)) == {"curve": [], "frames": []}


def train_with_history(root, corpus, capsys):
    """A tiny GPT run of 6 steps with an evaluation (and an attention snapshot) every 2 steps."""
    from conftest import tiny_flags

    out = root / "run"
    code, _, err = run_main(capsys, "train", "gpt", *tiny_flags(corpus), "--out", out, "--max-steps", "6",
                            "--eval-every", "2", "--snapshot-attention", "the cat")
    assert code == 0, err
    return out


def test_a_runs_history_is_its_metrics_and_its_snapshots(tmp_path, corpus, capsys):
    from glassformer.explain.snapshot import load_snapshots, snapshot_weights

    run = train_with_history(tmp_path, corpus, capsys)
    served = open_models([run], warm=False)
    client = TestClient(create_app(served, "127.0.0.1"), base_url="http://127.0.0.1:8000")
    assert client.get("/api/models").json()["models"][0]["has_history"] is True
    r = client.post("/api/history", json={"model": 0})
    assert r.status_code == 200, r.text
    got = r.json()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [c["step"] for c in got["curve"]] == [row["step"] for row in rows] == list(range(1, 7))
    assert [c["train_loss"] for c in got["curve"]] == pytest.approx([row["train_loss"] for row in rows])
    assert [c.get("val_loss") for c in got["curve"]] == [row.get("val_loss") for row in rows]
    snaps = load_snapshots(run)
    assert [f["step"] for f in got["frames"]] == [s["step"] for s in snaps] == [2, 4, 6]
    for frame, snap in zip(got["frames"], snaps):
        want = snapshot_weights(snap, "decoder-self")  # (L, H, T, T)
        assert frame["probe"] == "the cat" and len(frame["tokens"]) == want.shape[-1]
        assert abs(torch.tensor(frame["weights"]) - torch.tensor(want)).max() <= 1e-4  # rounded to 4 decimals


BAD = [
    ("tokens", {"model": 7}, 404, "no model 7"),
    ("tokens", {"model": "/etc/passwd"}, 404, "no model"),
    ("tokens", {"text": 3}, 400, "'text' must be a string"),
    ("tokens", {"text": "é"}, 400, "not in the character vocabulary"),
    ("tokens", {"text": "the cat " * 20}, 400, "reads at most 64"),
    ("tokens", {"text": "x" * 30000}, 400, "at most 20000"),
    ("steps", {"head": "9.0", "query": 0}, 400, "layer 9 is out of range"),
    ("steps", {"head": "cross.0.0", "query": 0}, 400, "no cross attention"),
    ("steps", {"head": "1.2", "query": 99}, 400, "'query' must be in 0..64"),
    ("steps", {"head": "1.2", "query": 40}, 400, "query 40 is out of range"),
    ("steps", {"head": "1.2", "query": True}, 400, "must be an integer"),
    ("ablate", {"heads": []}, 400, "non-empty list"),
    ("ablate", {"heads": ["0.1"] * 300 + [f"{i}" for i in range(300)]}, 400, "at most 256"),
    ("ablate", {"heads": ["0.1"], "mode": "half"}, 400, "'mode' must be one of zero, mean"),
    ("ablate", {"heads": ["../x"]}, 400, "head"),
    ("lens", {"k": 0}, 400, "'k' must be in 1..20"),
    ("generate", {"top_k": 0}, 400, "'top_k' must be in 1..1000"),
    ("generate", {"temperature": -1}, 400, "'temperature' must be in"),
    ("generate", {"top_p": 0}, 400, "'top_p' must be in (0.0"),
    ("generate", {"steps": 1000}, 400, "'steps' must be in 1..64"),
    ("generate", {"model": 1}, 400, "does not generate text; use fill-mask"),
    ("fill-mask", {}, 400, "fill-mask needs a BERT"),
    ("fill-mask", {"model": 1}, 400, "mask"),
    ("attribution", {"model": 2, "target": "a"}, 400, "post-norm"),
    ("attribution", {"model": 1, "token": "happy"}, 400, "its classes are neg, neutral, pos"),
    ("attribution", {"model": 1, "token": 7}, 400, "class 7 is out of range"),
    ("attribution", {"token": "ca"}, 400, "is 2 tokens"),
]


def test_classifier_views_ablation_by_class_and_attribution_by_label(env, tmp_path):
    """A classifier (the tiny BERT has num_labels=3): ablation shows the class probabilities before and
    after, equal to switching the head off by hand; attribution by label sums to the class logit."""
    from glassformer.explain.hooks import ablate_heads

    info = env["client"].get("/api/models").json()["models"][1]
    assert info["readout"] == "classes" and info["classes"] == ["neg", "neutral", "pos"]
    bert = env["models"][1]
    none_off = ok(post(env, "ablate", model=1, heads=["0.1"], mode="zero"))
    ids = torch.tensor([bert.tokenizer.encode(TEXT)])
    with torch.no_grad():
        before = bert.model(ids).logits[0].softmax(-1)
        after = ablate_heads(bert.model, ids, ["0.1"]).logits[0].softmax(-1)
    assert [c["p_before"] for c in none_off["classes"]] == pytest.approx(before.tolist(), abs=1e-6)
    assert [c["p_after"] for c in none_off["classes"]] == pytest.approx(after.tolist(), abs=1e-6)
    assert none_off["kl_classes"] > 0 and none_off["before"]  # its masked-LM head is still read too
    attr = ok(post(env, "attribution", model=1, token="pos"))
    with torch.no_grad():
        logit = float(bert.model(ids).logits[0, 2])
    assert attr["class"] == "pos" and attr["logit"] == pytest.approx(logit, abs=1e-5)
    assert attr["check_error"] <= 1e-4 and "LayerNorm" in attr["note"]
    assert sum(p["value"] for p in attr["parts"]) + attr["constant"] == pytest.approx(logit, abs=1e-4)
    assert ok(post(env, "attribution", model=1))["class"] == ["neg", "neutral", "pos"][int(before.argmax())]

    from conftest import randomize
    from glassformer.models import BERT, BERTConfig

    tok = env["dirs"]["tok"]
    randomize(BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size, mlm_head=False)), std=0.1).save_pretrained(
        tmp_path / "embed")
    tok.save(tmp_path / "embed")
    embed = open_models([tmp_path / "embed"], warm=False)
    client = TestClient(create_app(embed, "127.0.0.1"), base_url="http://127.0.0.1:8000")
    assert client.get("/api/models").json()["models"][0]["readout"] == "embedding"
    r = client.post("/api/ablate", json={"text": TEXT, "heads": ["1.0", "1.1"]})
    assert r.status_code == 200 and 0.0 < r.json()["cosine"] < 1.0 - 1e-7


@pytest.mark.parametrize("path,body,status,message", BAD, ids=[f"{p}-{m[:20]}" for p, _, _, m in BAD])
def test_bad_input_gets_a_4xx_json_error_naming_it(env, path, body, status, message):
    r = env["client"].post("/api/" + path, json={"model": 0, "text": TEXT, **body})
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_bad_requests_of_every_other_kind(env):
    c = env["client"]
    r = c.post("/api/tokens", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = c.post("/api/tokens", content=b"[1]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = c.post("/api/tokens", content=b"text=x", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415  # a cross-site form cannot post
    r = c.post("/api/tokens", content=b'{"text": "' + b"a" * 300_000 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/api/nothing", json={})
    assert r.status_code == 404 and "error" in r.json()
    assert c.get("/api/tokens").status_code == 405
    assert c.get("/static/../handlers.py").status_code == 404  # nothing but the package's assets


def test_a_foreign_host_header_is_refused(env):
    c = env["client"]
    assert c.get("/api/models", headers={"host": "evil.example:8000"}).status_code == 400  # DNS rebinding
    for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert c.get("/api/models", headers={"host": host}).status_code == 200, host
    public = TestClient(create_app(env["models"], "192.0.2.7"), base_url="http://192.0.2.7:8000")
    assert public.get("/api/models").status_code == 200
    assert public.get("/api/models", headers={"host": "localhost"}).status_code == 400


def test_one_computation_at_a_time_per_model(env, monkeypatch):
    from glassformer.serve import handlers

    inside, most = [0], [0]
    real = handlers.tokens

    def slow(*a, **k):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        threading.Event().wait(0.05)
        inside[0] -= 1
        return real(*a, **k)

    monkeypatch.setattr(handlers, "tokens", slow)
    threads = [threading.Thread(target=post, args=(env, "tokens"), kwargs={"model": 0}) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_page_and_assets_come_from_the_package(env):
    c = env["client"]
    page = c.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "app.css"):
        assert c.get(f"/static/{name}").status_code == 200
    for text in (page.text, c.get("/static/app.js").text):
        assert "http://" not in text and "https://" not in text  # no CDN
    assert ".innerHTML" not in c.get("/static/app.js").text  # model strings only through textContent


def test_notebook_view_embeds_the_apis_answers_inline(env):
    pipe = load(env["dirs"]["gpt"])
    view = pipe.show(TEXT, head="1.2")
    html = view._repr_html_()
    assert "<script src" not in html and "<link" not in html and "https://" not in html
    answers = view.data["responses"]
    assert answers['attention {"model":0,"text":"the cat sat on"}'] == ok(post(env, "attention", model=0))
    step = answers['steps {"model":0,"text":"the cat sat on","head":"decoder.1.2","query":13}']
    assert step == ok(post(env, "steps", model=0, head="1.2", query=13))
    for mode in ("zero", "mean"):  # the "rank every head" button works inline too
        assert answers[f'importance {{"model":0,"text":"the cat sat on","mode":"{mode}"}}'] == ok(
            post(env, "importance", model=0, mode=mode))
    from glassformer.serve.notebook import _script_json

    tricky = {"token": "</script><script>alert(1)</script><!--"}
    assert "<" not in _script_json(tricky)  # cannot close the script early
    assert json.loads(_script_json(tricky)) == tricky


def test_cli_without_a_model_says_how_to_make_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "serve", "--port", "8765")
    assert code == 2 and err.count("\n") == 1 and "make demo" in err and "Traceback" not in err
    code, _, err = run_main(capsys, "serve", "--port", "70000")
    assert code == 2 and "1..65535" in err
    code, _, err = run_main(capsys, "serve", str(tmp_path / "nowhere"), "--port", "8765")
    assert code == 2 and "nowhere" in err


def test_cli_warns_when_bound_to_every_interface(capsys, env, monkeypatch):
    from glassformer.serve import server

    ran = {}
    monkeypatch.setattr(server, "open_models", lambda dirs: env["models"][:1])
    monkeypatch.setattr("uvicorn.Server.run", lambda self: ran.setdefault("host", self.config.host))
    code, out, err = run_main(capsys, "serve", "x", "--host", "0.0.0.0", "--port", "8766")
    assert code == 0 and ran["host"] == "0.0.0.0" and "warning" in err and "http://" in out

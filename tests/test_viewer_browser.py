"""The HTML viewer in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe``: DevTools messages are NUL-terminated JSON
on file descriptors 3 (to the browser) and 4 (from it), so no websocket library is needed.
Without Chromium these tests are skipped on a developer machine but FAIL when ``CI`` is set
(``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glassformer.explain.viewer import decode_weights, read_viewer_data, save_attention_html, write_viewer
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.tokenizers.char import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,900", "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """A minimal DevTools-protocol client over Chromium's pipe transport."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="gf-chromium-")
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def wire_fds() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=wire_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable", session=True)

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 20.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._recv(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def open(self, path: Path) -> str:
        self.events.clear()
        url = path.resolve().as_uri()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired")
        return url

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self) -> np.ndarray:
        from matplotlib.image import imread

        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        return imread(io.BytesIO(base64.b64decode(data)), format="png")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (CI is set): .ci/run must install Debian's chromium")
        pytest.skip("Chromium is not installed; .ci/run installs it (these tests fail in CI without it)")
    b = Browser(binary)
    yield b
    b.close()


TEXT = "the quick brown fox jumps over the lazy dog. " * 12
VOCAB = TEXT + "</script>&\"'"


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    tok = CharTokenizer.train(VOCAB)
    out = tmp_path_factory.mktemp("pages")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, max_len=600)).eval()
    torch.manual_seed(1)
    s2s = Transformer(TransformerConfig.from_name("transformer-tiny", vocab_size=tok.vocab_size, bos_token_id=1, eos_token_id=2))
    torch.manual_seed(2)
    bert = BERT(BERTConfig.from_name("bert-tiny", vocab_size=tok.vocab_size))
    return {
        "gpt": save_attention_html(gpt, tok, "the quick </script> fox", out / "gpt.html", max_new_tokens=10,
                                   temperature=0.9, top_k=8, top_p=0.9, seed=3),
        "seq2seq": save_attention_html(s2s, tok, "the lazy dog", out / "s2s.html", max_new_tokens=8),
        "bert": save_attention_html(bert, tok, "the lazy dog", out / "bert.html"),
        "long": save_attention_html(gpt, tok, TEXT[:512], out / "long.html", max_new_tokens=0),
    }


CANVAS_SUM = "document.getElementById(%r).toDataURL('image/png')"  # what the canvas shows, as a PNG


def test_viewer_loads_offline_shows_tokens_and_redraws_when_heads_change(browser, pages):
    for name in ("gpt", "seq2seq", "bert"):
        url = browser.open(pages[name])
        assert browser.js("document.body.dataset.ready") == "1", name
        assert browser.errors() == [], (name, browser.errors())
        others = [u for u in browser.requests() if u != url and not u.startswith("data:")]
        assert others == [], f"{name} page made network requests: {others}"
        data = read_viewer_data(pages[name])
        texts = browser.js("[...document.querySelectorAll('#qcol .tok')].map(e => e.title)")
        view = data["views"][0]
        tokens = data["streams"][view["q"]]
        assert [json.loads(t.split(": ", 1)[1]) for t in texts] == tokens, name

        # switching heads changes both drawings: the lines of the pinned token and the matrix
        before = (browser.js(CANVAS_SUM % "lines"), browser.js(CANVAS_SUM % "matrix"))
        browser.js("document.querySelector('#heads input[data-head=\"0\"]').click();"
                   "document.querySelector('#heads input[data-head=\"2\"]').click()")
        after = (browser.js(CANVAS_SUM % "lines"), browser.js(CANVAS_SUM % "matrix"))
        assert browser.js("window.glassformerViewer.state.heads") == [2]
        assert before[0] != after[0] and before[1] != after[1], name
        assert browser.errors() == [], (name, browser.errors())


def test_viewer_script_text_in_tokens_stays_data(browser, pages):
    browser.open(pages["gpt"])
    assert "</script>" in "".join(read_viewer_data(pages["gpt"])["streams"]["tokens"])
    assert browser.js("document.querySelectorAll('script').length") == 2
    assert browser.js("document.getElementById('qcol').textContent").startswith("the")


def test_viewer_switches_attention_kind_for_seq2seq(browser, pages):
    browser.open(pages["seq2seq"])
    kinds = browser.js("[...document.getElementById('kind').options].map(o => o.textContent)")
    assert [k.split(" ")[0] for k in kinds] == ["encoder-self", "decoder-self", "cross"]
    data = read_viewer_data(pages["seq2seq"])
    browser.js("const k = document.getElementById('kind'); k.value = '2'; k.dispatchEvent(new Event('change'))")
    rows = browser.js("document.querySelectorAll('#qcol .tok').length")
    cols = browser.js("document.querySelectorAll('#kcol .tok').length")
    assert (rows, cols) == (len(data["streams"]["target"]), len(data["streams"]["source"]))
    assert browser.errors() == []


def test_generation_inspector_shows_the_numbers_of_each_step(browser, pages):
    browser.open(pages["gpt"])
    data = read_viewer_data(pages["gpt"])
    steps = data["generation"]["steps"]
    assert browser.js("document.getElementById('gen-section').hidden") is False
    assert browser.js("document.querySelectorAll('#gen-tokens .chip').length") == len(steps)
    browser.js("document.querySelector('#gen-tokens .chip[data-step=\"3\"]').click()")
    rows = browser.js("[...document.querySelectorAll('#cands tr')].slice(1).map(r => [...r.cells].map(c => c.textContent))")
    want = steps[3]["candidates"]
    assert [int(r[1]) for r in rows] == [c[1] for c in want]
    assert [float(r[2]) for r in rows] == pytest.approx([c[2] for c in want], abs=6e-5)
    assert [float(r[3]) for r in rows] == pytest.approx([c[3] for c in want], abs=6e-5)
    chosen = browser.js("document.querySelector('#cands tr.chosen').cells[1].textContent")
    assert int(chosen) == steps[3]["id"]
    # top-k 8: at most 8 candidates keep probability after filtering, and they sum to ~1
    sampled = [float(r[3]) for r in rows]
    assert sum(p > 0 for p in sampled) <= 8
    shaded = browser.js("document.querySelectorAll('#gen-context span').length")
    assert shaded == steps[3]["attention"]["decoder-self"]["tk"] == steps[3]["query"] + 1
    assert browser.errors() == []


def test_viewer_stays_responsive_at_512_tokens_and_screenshot_is_not_blank(browser, pages):
    t0 = time.monotonic()
    browser.open(pages["long"])
    load_s = time.monotonic() - t0
    assert browser.js("document.querySelectorAll('#qcol .tok').length") == 512
    hover = """(() => { const col = document.getElementById('qcol').children; const t = [];
      for (let i = 0; i < 512; i += 16) { const s = performance.now();
        col[i].dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); t.push(performance.now() - s); }
      t.sort((a, b) => a - b); return [t[Math.floor(t.length / 2)], t[t.length - 1]]; })()"""
    browser.js("document.getElementById('all-heads').click()")
    median_ms, worst_ms = browser.js(hover)
    assert load_s < 8.0
    print(f"512 tokens: load {load_s:.2f} s, hover redraw median {median_ms:.1f} ms, worst {worst_ms:.1f} ms")
    assert median_ms < 40 and worst_ms < 150, (median_ms, worst_ms)
    assert browser.js("window.glassformerViewer.stats.draws") > 30
    pixels = browser.screenshot()
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.var(pixels[..., :3])) > 1e-3
    assert browser.errors() == []


def test_embedded_weights_are_the_models_within_1e5(pages, tmp_path):
    tok = CharTokenizer.train(VOCAB)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, max_len=600)).eval()
    data = read_viewer_data(pages["long"])
    ids = torch.tensor([tok.encode(TEXT[:512])])
    with torch.no_grad():
        out = gpt(ids, return_attentions=True)
    for view in data["views"]:
        for slot, layer in enumerate(view["layers"]):
            got = decode_weights(view["weights"][slot], (view["heads"], view["tq"], view["tk"]))
            want = out.attention(view["kind"], layer)[0].double().numpy()
            assert np.abs(got - want).max() <= 1e-5
    # refusing a path that is not .html keeps the page from being written under a wrong name
    with pytest.raises(ValueError, match="html"):
        write_viewer(data, tmp_path / "page.png")
    assert not (tmp_path / "page.png").exists()


def test_snapshot_gallery_slides_through_training_steps(browser, tmp_path):
    from glassformer.explain.snapshot import save_attention_snapshot

    tok = CharTokenizer.train(VOCAB)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size))
    for step in (0, 100, 200):
        save_attention_snapshot(model, tok, "the lazy dog", step, tmp_path)
        with torch.no_grad():  # stand-in for training: the attention sharpens between snapshots
            for block in model.decoder.layers:
                block.self_attn.w_qkv.weight.mul_(3.0)
    url = browser.open(tmp_path / "attention" / "index.html")
    assert browser.js("document.body.dataset.ready") == "1"
    assert browser.errors() == [] and [u for u in browser.requests() if u != url and not u.startswith("data:")] == []
    assert browser.js("document.querySelectorAll('#grid canvas').length") == 2 * 4
    first = browser.js("document.querySelector('#grid canvas').toDataURL()")
    chart = browser.js("document.getElementById('chart').toDataURL()")
    browser.js("const s = document.getElementById('step'); s.value = '0'; s.dispatchEvent(new Event('input'))")
    assert browser.js("document.getElementById('step-label').textContent").startswith("step 0 ")
    assert browser.js("document.querySelector('#grid canvas').toDataURL()") != first
    assert browser.js("document.getElementById('chart').toDataURL()") != chart  # the step marker moved
    assert browser.errors() == []

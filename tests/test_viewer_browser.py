"""The HTML viewer in a real browser: Debian's headless Chromium driven by Selenium (through
chromium-driver), the same client as the live explorer's tests (tests/test_serve_browser.py).

Without Chromium these tests are skipped on a developer machine but FAIL when ``CI`` is set
(``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import io
import json
import os
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
    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1200,900",
]
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def find_chromium() -> str | None:
    """Debian's chromium with its chromium-driver (Selenium drives the browser through it)."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK) else None


class Browser:
    """Headless Chromium driven by Selenium: open a page, run script, read the console and the requests."""

    def __init__(self, binary: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self._console: list[dict] = []
        self._network: list[dict] = []

    def _drain(self) -> None:
        self._console += self.driver.get_log("browser")
        self._network += [json.loads(e["message"])["message"] for e in self.driver.get_log("performance")]

    def open(self, path: Path) -> str:
        url = path.resolve().as_uri()
        self.driver.get(url)
        self._console, self._network = [], []
        self._drain()
        return url

    def js(self, expression: str):
        """The value of a script (its last expression, as DevTools' Runtime.evaluate gives it)."""
        return self.driver.execute_script("return eval(arguments[0])", expression)

    def screenshot(self) -> np.ndarray:
        from matplotlib.image import imread

        return imread(io.BytesIO(self.driver.get_screenshot_as_png()), format="png")

    def errors(self) -> list[str]:
        self._drain()
        return [f"{e['level']}: {e['message']}" for e in self._console if e["level"] in ("SEVERE", "WARNING")]

    def requests(self) -> list[str]:
        self._drain()
        return [m["params"]["request"]["url"] for m in self._network if m.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed (CI is set): .ci/run must install chromium and chromium-driver")
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

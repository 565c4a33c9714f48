"""The explorer in a real browser: ``glassformer serve`` started as users start it, driven by Selenium
in Debian's headless Chromium (``chromium`` + ``chromium-driver``, installed by ``.ci/run``).

Without Chromium these tests are skipped on a developer machine but FAIL when ``CI`` is set.
With ``GLASSFORMER_SCREENSHOT=path.png`` the first test also saves the README's screenshot.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from conftest import TRAIN_TEXT, glassformer_argv, save_tiny_models, subprocess_env, tiny_flags

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dirs: list, tmp_path, port: int) -> tuple[subprocess.Popen, str]:
    """``glassformer serve DIR ... --port P`` in a child process; returns it and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "glassformer", "serve", *map(str, dirs), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=subprocess_env(tmp_path, threads=1))
    deadline = time.monotonic() + 120
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+)", line)
        if m:
            break
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {line}{proc.stdout.read()}")
    else:
        proc.kill()
        raise AssertionError("the server printed no URL")
    url = m.group(1)
    for _ in range(200):  # the URL is printed just before uvicorn binds
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, url


def stop_server(proc: subprocess.Popen) -> str:
    """Ctrl-C, as a user stops it: it must exit cleanly (no traceback)."""
    import signal

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    return out


def make_driver():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
        if os.environ.get("CI"):
            pytest.fail("Chromium or chromium-driver is not installed (CI is set): .ci/run installs both")
        pytest.skip("Chromium / chromium-driver not installed; .ci/run installs them (these tests fail in CI without)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def train_run(root):
    """A run directory with a history: 6 steps of a tiny GPT, an evaluation and a snapshot every 2."""
    corpus = root / "corpus.txt"
    corpus.write_text(TRAIN_TEXT)
    out = root / "run"
    done = subprocess.run(glassformer_argv("train", "gpt", *tiny_flags(corpus), "--out", out, "--max-steps", "6",
                                           "--eval-every", "2", "--snapshot-attention", "the cat"),
                          env=subprocess_env(root, threads=1), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    dirs = save_tiny_models(root)
    dirs["run"] = train_run(root)
    port = free_port()
    proc, url = start_server([dirs["gpt"], dirs["bert"], dirs["seq2seq"], dirs["run"]], root, port)
    driver = None
    try:
        driver = make_driver()
        yield {"url": url, "driver": driver, "dirs": dirs}
    finally:
        if driver is not None:
            driver.quit()
        out = stop_server(proc)
        assert "stopped" in out


def wait(driver, script: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = driver.execute_script(script)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}; status: "
                         + str(driver.execute_script("return document.querySelector('[data-gf=status]').textContent")))


def errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def type_text(driver, text: str) -> None:
    before = driver.execute_script("return window.gf.stats.updates")
    box = driver.find_element("css selector", "[data-gf=text]")
    box.clear()
    box.send_keys(text)
    wait(driver, f"return window.gf.stats.updates > {before} && document.getElementById('gf-root').dataset.ready !== undefined"
                 " && window.gf.state.data && window.gf.state.data.streams.tokens.map(t => t.text).join('') === "
                 f"{text!r}")
    wait(driver, "return document.getElementById('gf-root').dataset.ready === String(window.gf.stats.updates)")


def open_page(s, text: str) -> None:
    from urllib.parse import quote

    d = s["driver"]
    d.get(s["url"] + "?text=" + quote(text))
    wait(d, "return window.gf && document.getElementById('gf-root').dataset.ready === String(window.gf.stats.updates)"
            " && window.gf.stats.updates > 0")


def test_type_click_a_head_and_see_the_four_steps_python_gives(served):
    from glassformer.api import load
    from glassformer.explain.steps import four_steps

    d = served["driver"]
    open_page(served, "the cat")
    type_text(d, "the cat sat on")
    tokens = d.execute_script("return [...document.querySelectorAll('[data-gf=tokens] .tok')].map(e => [e.textContent, e.title])")
    gpt = load(served["dirs"]["gpt"])
    ids = gpt.tokenizer.encode("the cat sat on")
    assert [t[0] for t in tokens] == list("the cat sat on")
    assert [int(t[1].split(" id ")[1].split(":")[0]) for t in tokens] == ids  # ids on hover
    d.find_element("css selector", "[data-head='decoder.1.2']").click()
    wait(d, "return document.querySelector('[data-gf=steps-table]') && window.gf.state.head === 'decoder.1.2'")
    rows = d.execute_script("return [...document.querySelectorAll('[data-gf=steps-table] tr')].slice(1).map(r => [...r.cells].map(c => c.textContent))")
    want = four_steps(gpt.model, ids, 1, 2, len(ids) - 1, kind="decoder-self")
    assert [float(r[2]) for r in rows] == pytest.approx(want.raw_scores.tolist(), abs=6e-5)
    assert [float(r[3]) for r in rows] == pytest.approx(want.scaled_scores.tolist(), abs=6e-5)
    assert [float(r[5]) for r in rows] == pytest.approx(want.weights.tolist(), abs=6e-5)
    # another query token: click it in the token row; the table follows
    d.find_elements("css selector", "[data-gf=tokens] .tok")[3].click()
    wait(d, "return document.querySelectorAll('[data-gf=steps-table] tr.masked').length === 14 - 4")
    path = os.environ.get("GLASSFORMER_SCREENSHOT")
    if path:
        d.set_window_size(1400, 1500)
        d.save_screenshot(path)
    assert errors(d) == []


def test_toggling_an_ablation_changes_the_prediction(served):
    d = served["driver"]
    open_page(served, "the cat sat on")
    d.find_element("css selector", "[data-ablate='decoder.0.1']").click()
    wait(d, "return document.querySelector('[data-gf=after]')")
    before = d.execute_script("return [...document.querySelectorAll('[data-gf=before] tr')].slice(1).map(r => r.textContent)")
    after = d.execute_script("return [...document.querySelectorAll('[data-gf=after] tr')].slice(1).map(r => r.textContent)")
    kl = d.execute_script("return document.querySelector('[data-gf=kl]').textContent")
    assert before != after and float(re.search(r"= ([0-9.]+) nats", kl).group(1)) > 0
    assert "cell off" in d.find_element("css selector", "[data-head='decoder.0.1']").get_attribute("class") + " cell off"
    assert errors(d) == []


def test_ranking_every_head_shows_the_librarys_order_and_a_row_click_ablates(served):
    from glassformer.api import load
    from glassformer.explain.heads import head_scores, sequence_for_model
    from glassformer.explain.importance import head_importance

    d = served["driver"]
    open_page(served, "the cat sat on")
    d.find_element("css selector", "[data-gf=rank]").click()
    wait(d, "return document.querySelectorAll('[data-gf=importance] tr[data-head]').length === 8")
    shown = d.execute_script("return [...document.querySelectorAll('[data-gf=importance] tr[data-head]')]"
                             ".map(r => [r.dataset.head, r.cells[2].textContent])")
    gpt = load(served["dirs"]["gpt"])
    roles = head_scores(gpt.model, **sequence_for_model(gpt.model, gpt.tokenizer))
    want = head_importance(gpt.model, gpt.tokenizer, "the cat sat on", roles=roles)
    assert [label for label, _ in shown] == [h.label for h in want.heads]
    assert [float(c) for _, c in shown] == pytest.approx([h.change for h in want.heads], abs=2e-4)
    strips = d.execute_script("return [...document.querySelectorAll('[data-gf=importance] tr[data-head]')]"
                              ".map(r => [...r.querySelectorAll('.pc')].map(c => c.title))")
    assert all(len(s) == len("the cat sat on") - 1 for s in strips)  # one cell per predicted token
    top_head = want.heads[0]
    worst = max(range(len(top_head.by_position)), key=lambda i: top_head.by_position[i])
    title = re.fullmatch(r'"(.*)" at (\d+): \+([0-9.]+) nats', strips[0][worst])
    assert title and title.group(1) == want.target_texts[worst] and int(title.group(2)) == worst + 1, strips[0]
    assert float(title.group(3)) == pytest.approx(top_head.by_position[worst], abs=2e-3)
    top = shown[0][0]
    d.find_element("css selector", f"[data-gf=importance] tr[data-head='{top}']").click()  # switches that head off
    wait(d, "return document.querySelector('[data-gf=after]')")
    assert d.find_element("css selector", f"[data-ablate='{top}']").is_selected()
    assert "off" in d.find_element("css selector", f"[data-gf=importance] tr[data-head='{top}']").get_attribute("class")
    assert errors(d) == []


def test_stepping_a_generation_adds_one_token_with_its_candidates(served):
    d = served["driver"]
    open_page(served, "the cat")
    for n in (1, 2, 3):
        d.find_element("css selector", "[data-gf=gen-step]").click()
        wait(d, f"return document.querySelectorAll('[data-gf=gen-tokens] .tok').length === {n}")
    rows = d.execute_script("return [...document.querySelectorAll('[data-gf=cands] tr')].slice(1).map(r => [...r.cells].map(c => c.textContent))")
    p = [float(r[2]) for r in rows]
    assert p == sorted(p, reverse=True) and 0 < sum(p) <= 1.0001
    assert d.execute_script("return document.querySelector('[data-gf=cands] tr.chosen').cells[3].textContent") == "1.0000"  # greedy
    assert errors(d) == []


def test_model_text_cannot_inject_markup(served):
    """Special tokens read like tags ("<eos>"): they must stay text in every view."""
    d = served["driver"]
    open_page(served, "the cat sat on")
    wait(d, "return document.querySelector('[data-gf=lens] table')")
    text = d.execute_script("return document.querySelector('[data-gf=lens]').textContent")
    assert "<eos>" in text
    assert d.execute_script("return document.querySelectorAll('eos, bos, unk').length") == 0
    assert errors(d) == []


def test_a_classifier_shows_class_probabilities_and_attribution_by_class(served):
    """The tiny BERT is a classifier: ticking a head shows its classes before and after, and the
    attribution section explains the predicted class's logit."""
    d = served["driver"]
    open_page(served, "the cat sat on")
    select = d.find_element("css selector", "[data-gf=model]")
    d.execute_script("arguments[0].value = '1'; arguments[0].dispatchEvent(new Event('change'))", select)
    wait(d, "return window.gf.state.model === 1 && document.getElementById('gf-root').dataset.ready"
            " === String(window.gf.stats.updates) && document.querySelector(\"[data-ablate='encoder.0.1']\")")
    d.find_element("css selector", "[data-ablate='encoder.0.1']").click()
    wait(d, "return document.querySelector('[data-gf=classes]')")
    rows = d.execute_script("return [...document.querySelectorAll('[data-gf=classes] tr')].slice(1).map(r => r.cells[0].textContent)")
    assert rows == ["neg", "neutral", "pos"]
    text = wait(d, "const t = document.querySelector('[data-gf=attribution]').textContent; return t.includes('logit of class') && t")
    assert "LayerNorm" in text and errors(d) == []


def choose_model(d, index: int) -> None:
    select = d.find_element("css selector", "[data-gf=model]")
    d.execute_script(f"arguments[0].value = '{index}'; arguments[0].dispatchEvent(new Event('change'))", select)
    wait(d, f"return window.gf.state.model === {index} && document.getElementById('gf-root').dataset.ready"
            " === String(window.gf.stats.updates)")


def test_a_runs_history_shows_its_loss_curve_and_a_slider_over_its_snapshots(served):
    import json

    d = served["driver"]
    open_page(served, "the cat")
    choose_model(d, 3)  # the trained run
    wait(d, "return document.querySelector('[data-gf=frame]')")
    rows = [json.loads(line) for line in (served["dirs"]["run"] / "metrics.jsonl").read_text().splitlines()]
    text = d.execute_script("return document.querySelector('[data-gf=history]').textContent")
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert f"loss {first:.3f} → {last:.3f} over steps 1..6" in text, text
    slider = d.find_element("css selector", "[data-gf=frame]")
    assert slider.get_attribute("max") == "2"  # three snapshots: steps 2, 4, 6
    label = lambda: d.execute_script("return document.querySelector('[data-gf=frame]').nextElementSibling.textContent")  # noqa: E731
    assert label().startswith("step 6:")
    d.execute_script("arguments[0].value = '0'; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert label().startswith("step 2:") and '"the cat"' in label()
    n_maps = d.execute_script("return document.querySelector('[data-gf=frame]').parentElement.querySelectorAll('.grid canvas').length")
    assert n_maps == 1 * 2  # the run's 1 layer x 2 heads
    assert errors(d) == []


def test_compare_shows_a_second_prompt_on_another_model_side_by_side(served):
    d = served["driver"]
    open_page(served, "the cat sat on")
    choose_model(d, 0)
    pick = d.find_element("css selector", "[data-gf=cmp-model]")
    d.execute_script("arguments[0].value = '3'", pick)
    d.find_element("css selector", "[data-gf=cmp-text]").send_keys("a dog")
    d.find_element("css selector", "[data-gf=cmp-go]").click()
    wait(d, "return document.querySelectorAll('[data-gf=compare] .pair > div').length === 2")
    sides = d.execute_script("return [...document.querySelectorAll('[data-gf=compare] .pair > div')]"
                             ".map(s => [s.querySelector('p').textContent, s.querySelectorAll('canvas').length])")
    assert sides == [["t|h|e| |c|a|t| |s|a|t| |o|n", 2 * 4], ["a| |d|o|g", 1 * 2]]  # gpt-tiny 2x4; the run 1x2
    assert errors(d) == []


def test_the_notebook_view_works_offline_in_a_browser_rank_button_included(served, tmp_path):
    """``glassformer.load(dir).show(text)`` as a notebook renders it: one HTML fragment, no server. Its
    views draw from the embedded answers, and "rank every head" (embedded too) fills its table."""
    from glassformer.api import load

    page = tmp_path / "notebook.html"
    page.write_text("<!doctype html><meta charset=utf-8><body>" + load(served["dirs"]["gpt"]).show("the cat")._repr_html_())
    d = served["driver"]
    d.get(page.as_uri())
    wait(d, "return document.querySelector('[data-gf=steps-table]') && document.querySelector('[data-gf=rank]')")
    d.find_element("css selector", "[data-gf=rank]").click()
    wait(d, "return document.querySelectorAll('[data-gf=importance] tr[data-head]').length === 8")
    assert d.find_element("css selector", "[data-gf=status]").text == ""  # no "not in this notebook view"
    assert errors(d) == []

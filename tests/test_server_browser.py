"""The app in a real browser: `embedviz serve` on a recorded store, Debian's headless
Chromium driven by Selenium. Screenshots of every page go to the test's folder, and to
``$EMBEDVIZ_SCREENSHOTS`` when set (the README's pictures: docs/screenshots)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.recorded import record

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(.ci/run installs them)")

PAGES = ("overview", "model", "system", "health", "embeddings")

# Bokeh draws widgets inside shadow roots: find elements through them
DEEP = """
const find = (root, sel, text) => {
  for (const el of root.querySelectorAll(sel))
    if (text === null || el.textContent.trim() === text) return el;
  for (const el of root.querySelectorAll("*"))
    if (el.shadowRoot) { const got = find(el.shadowRoot, sel, text); if (got) return got; }
  return null;
};
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    path = folder / "runs.db"
    ids = record(path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "embedviz.cli", "serve", str(path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "serving" in line, line + proc.stdout.read()
    yield {"url": f"http://localhost:{port}/", "path": path, "folder": folder, **ids}
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--window-size=1400,1700",
              f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60.0, every: float = 0.1):
    """The first truthy value of ``script`` (JavaScript returning a value) within ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        got = driver.execute_script(script)
        if got or time.monotonic() > end:
            return got
        time.sleep(every)


def open_page(driver, url: str) -> None:
    driver.get(url)
    assert wait_for(driver, "return window.Bokeh && Bokeh.documents.length > 0 && "
                            "Bokeh.documents[0].roots().length > 0"), "the app did not render"


def errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shoot(driver, served, name: str) -> None:
    time.sleep(1.0)  # (WebGL draws after the document is idle)
    driver.save_screenshot(str(served["folder"] / f"{name}.png"))
    out = os.environ.get("EMBEDVIZ_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"{name}.png"))


@pytest.mark.parametrize("name", PAGES)
def test_every_page_loads_without_errors_and_its_plots_hold_data(served, browser, name):
    sessions = {"embeddings": served["w2v"], "health": f"{served['bad']},{served['mlp']}"}
    open_page(browser, f"{served['url']}?page={name}&session={sessions.get(name, served['mlp'])}")
    held = wait_for(browser, """
        const doc = Bokeh.documents[0];
        let points = 0;
        for (const m of doc.all_models) {
          if (m.type === "ColumnDataSource" && m.data) {
            const col = Object.values(m.data)[0];
            if (col && col.length) points += col.length;
          }
        }
        return points;""")
    least = 2 if name == "health" else 20  # (the health page: a row per finding)
    assert held and held >= least, f"the {name} page holds {held} data points"
    if name == "health":
        assert wait_for(browser, DEEP + "return find(document, '.slick-cell', 'NaN in the loss') !== null")
        assert wait_for(browser, DEEP + "return find(document, '.slick-cell', 'dead_units') !== null")
    shoot(browser, served, name)
    assert errors(browser) == []


def test_clicking_a_page_and_picking_sessions_redraw_what_is_shown(served, browser):
    open_page(browser, f"{served['url']}?page=overview&session={served['mlp']}")
    assert wait_for(browser, DEEP + "return find(document, 'button', 'Model') !== null")
    browser.execute_script(DEEP + "find(document, 'button', 'Model').click();")
    # the model page's layer table, drawn
    assert wait_for(browser, DEEP + "return find(document, '.slick-cell', 'Linear') !== null", 30)
    browser.execute_script(DEEP + "find(document, 'button', 'Overview').click();")
    assert wait_for(browser, DEEP + "return find(document, 'button', 'Download CSV') !== null", 30)
    browser.execute_script(f"""
        Bokeh.documents[0].get_model_by_name('sessions').value = [{served['w2v']!r}, {served['mlp']!r}];""")
    # the overview drawn again for both, the first picked first
    assert wait_for(browser, "return 1", 1)
    assert wait_for(browser, DEEP.replace("el.textContent.trim() === text", "el.textContent.includes(text)")
                    + "return find(document, 'b', 'Model and training: lee-word2vec') !== null", 30)
    assert errors(browser) == []


def test_a_record_written_by_another_process_shows_within_two_seconds(served, browser):
    open_page(browser, f"{served['url']}?page=overview&session={served['mlp']}")
    last = wait_for(browser, """
        for (const m of Bokeh.documents[0].all_models)
          if (m.type === "ColumnDataSource" && m.data.ys && m.data.iteration.length)
            return m.data.iteration[m.data.iteration.length - 1];
        return 0;""")
    target = int(last) + 1000
    code = ("import embedviz, sys; from embedviz.records import Update; "
            "s = embedviz.open_store(sys.argv[1]); "
            f"s.write([Update({served['mlp']!r}, '0', {target}, score=0.25)]); s.close()")
    subprocess.run([sys.executable, "-c", code, str(served["path"])], check=True)
    written = time.monotonic()
    seen = wait_for(browser, f"""
        for (const m of Bokeh.documents[0].all_models)
          if (m.type === "ColumnDataSource" && m.data.ys && m.data.iteration.length &&
              m.data.iteration[m.data.iteration.length - 1] == {target}) return true;
        return false;""", timeout=10, every=0.05)
    latency = time.monotonic() - written
    assert seen, "the new point never reached the page"
    assert latency <= 2.0, f"it took {latency:.2f} s"


def test_the_search_finds_a_word(served, browser):
    open_page(browser, f"{served['url']}?page=embeddings&session={served['w2v']}")
    assert wait_for(browser, DEEP + "return find(document, 'input[placeholder=\"Search words\"]', null) !== null")
    browser.execute_script(DEEP + """
        const box = find(document, 'input[placeholder="Search words"]', null);
        box.value = "said"; box.dispatchEvent(new Event("change"));""")
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('hits').data.x.length >= 1", 10)
    assert "match" in browser.execute_script("return Bokeh.documents[0].get_model_by_name('found').text")
    assert errors(browser) == []


def test_a_projection_started_from_the_form_completes_and_is_shown(served, browser):
    open_page(browser, f"{served['url']}?page=embeddings&session={served['w2v']}")
    assert wait_for(browser, DEEP + "return find(document, 'button', 'Run') !== null")
    browser.execute_script("""
        for (const m of Bokeh.documents[0].all_models) {
          if (m.type === "NumericInput" && m.title === "Top N words") m.value = 120;
          if (m.type === "NumericInput" && m.title === "Iterations") m.value = 200;
        }""")
    time.sleep(0.5)
    browser.execute_script(DEEP + "find(document, 'button', 'Run').click();")
    status = wait_for(browser, """
        const s = Bokeh.documents[0].get_model_by_name('status').text;
        return (s.startsWith('done') || s.startsWith('failed')) ? s : '';""", timeout=120, every=0.5)
    assert status.startswith("done"), status
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('points').data.x.length == 120", 10)
    shoot(browser, served, "embeddings-projected")
    assert errors(browser) == []


def test_show_embeds_the_app_in_a_jupyter_notebook(served, browser):
    """A real IPython kernel runs ``embedviz.show(store)``; the iframe it displays loads
    the app in the browser."""
    import re

    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        shown: list[dict] = []
        reply = kc.execute_interactive(
            f"import embedviz\nserver = embedviz.show({str(served['path'])!r})", timeout=120,
            output_hook=lambda msg: shown.append(msg["content"]) if msg["msg_type"] in (
                "display_data", "error", "stream") else None)
        assert reply["content"]["status"] == "ok", shown
        html = "".join(c.get("data", {}).get("text/html", "") for c in shown)
        src = re.search(r'<iframe[^>]*src="(http://localhost:\d+/)"', html)
        assert src, html
        # (the kernel serves the page while it waits for the next cell)
        open_page(browser, f"{src.group(1)}?page=overview&session={served['mlp']}")
        assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('sessions').value.length")
        assert errors(browser) == []
        assert kc.execute_interactive("server.stop()", timeout=60)["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

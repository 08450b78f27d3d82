"""The app in a real browser: `embedviz serve` on recorded stores, Debian's headless
Chromium driven by Selenium. Screenshots of every page go to the test's folder, and to
``$EMBEDVIZ_SCREENSHOTS`` when set (the README's pictures: docs/screenshots)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.recorded import record

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                                reason="Debian's chromium and chromium-driver are not installed "
                                       "(.ci/run installs them)")

PAGES = ("overview", "model", "system", "health", "embeddings")
README_PICTURES = {*PAGES, "embeddings-projected", "overview-ja"}

# Bokeh draws widgets inside shadow roots: find elements through them
DEEP = """
const find = (root, sel, text) => {
  for (const el of root.querySelectorAll(sel))
    if (text === null || el.textContent.trim() === text) return el;
  for (const el of root.querySelectorAll("*"))
    if (el.shadowRoot) { const got = find(el.shadowRoot, sel, text); if (got) return got; }
  return null;
};
const texts = (root, out = []) => {
  const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode())
    if (n.parentElement && !["STYLE", "SCRIPT"].includes(n.parentElement.tagName)) out.push(n.data);
  for (const el of root.querySelectorAll("*")) if (el.shadowRoot) texts(el.shadowRoot, out);
  return out;
};
const view = (name) => Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name(name));
const press = (name, k) => view(name).shadow_el.querySelectorAll("button")[k].click();
"""

HELD = """
let points = 0;
for (const m of Bokeh.documents[0].all_models)
  if (m.type === "ColumnDataSource" && m.data)
    for (const col of Object.values(m.data))
      if (col && col.length) { points += col.length; break; }
return points;"""

PAGE_ERROR = DEEP + "return find(document, '.ev-error', null)?.textContent || '';"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "embedviz.cli", "serve", str(path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    assert "serving" in line, line + proc.stdout.read()
    return proc, f"http://localhost:{port}/"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    path = folder / "runs.db"
    ids = record(path)
    proc, url = serve(path)
    yield {"url": url, "path": path, "folder": folder, **ids}
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


def shoot(driver, folder: Path, name: str) -> None:
    time.sleep(1.0)  # (WebGL draws after the document is idle)
    driver.save_screenshot(str(folder / f"{name}.png"))
    out = os.environ.get("EMBEDVIZ_SCREENSHOTS")
    if out and name in README_PICTURES:
        Path(out).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(out) / f"{name}.png"))


def settle(driver, seconds: float = 0.6) -> None:
    """Wait until the server's answer to a click has been applied (no pending messages)."""
    time.sleep(seconds)
    wait_for(driver, "return Bokeh.documents[0]._pending_messages == null || true", 5)


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_every_page_in_every_x_mode_with_two_sessions_shows_data_and_no_error(served, browser, lang):
    """The page and x-axis buttons clicked through, two sessions picked: every page holds
    data, shows no Python error, and the browser logs none."""
    open_page(browser, f"{served['url']}?session={served['mlp']}&session={served['bad']}&lang={lang}")
    browser.get_log("browser")
    for k, name in enumerate(PAGES):
        browser.execute_script(DEEP + f"press('pages', {k});")
        assert wait_for(browser, f"return new URLSearchParams(location.search).get('page') === {name!r}", 30), name
        for mode in range(3 if name != "embeddings" else 1):
            browser.execute_script(DEEP + f"press('x-axis', {mode});")
            settle(browser)
            held = wait_for(browser, HELD, 30)
            assert held >= (2 if name == "health" else 20), (name, mode, held)
            assert browser.execute_script(PAGE_ERROR) == "", (name, mode)
            if mode:
                want = ["iteration", "relative", "wall"][mode]
                assert wait_for(browser, f"return location.search.includes('x={want}')", 10)
        if lang == "en" or name in ("overview", "health"):
            shoot(browser, served["folder"], f"{name}-{lang}")
    assert errors(browser) == []
    sessions = browser.execute_script("return new URLSearchParams(location.search).getAll('session')")
    assert sessions == [served["mlp"], served["bad"]]


@pytest.mark.parametrize("name", PAGES)
def test_the_readme_pictures(served, browser, name):
    sessions = {"embeddings": served["w2v"], "health": f"{served['bad']}&session={served['mlp']}"}
    open_page(browser, f"{served['url']}?page={name}&session={sessions.get(name, served['mlp'])}")
    assert wait_for(browser, HELD) >= (2 if name == "health" else 20)
    if name == "health":
        assert wait_for(browser, DEEP + "return find(document, '.slick-cell', 'NaN in the loss') !== null")
        assert wait_for(browser, DEEP + "return find(document, '.slick-cell', 'dead_units') !== null")
    shoot(browser, served["folder"], name)
    assert errors(browser) == []


def test_a_link_reopens_the_view_it_was_copied_from(served, browser):
    open_page(browser, f"{served['url']}?page=model&session={served['mlp']}")
    browser.execute_script("Bokeh.documents[0].get_model_by_name('layer').value = '4';")
    assert wait_for(browser, "return location.search.includes('layer=4')", 10)
    link = browser.current_url
    open_page(browser, link)
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('layer').value === '4'", 20)
    assert errors(browser) == []


def test_a_record_written_by_another_process_shows_within_two_seconds(served, browser):
    open_page(browser, f"{served['url']}?page=overview&session={served['mlp']}")
    last = wait_for(browser, """
        for (const m of Bokeh.documents[0].all_models)
          if (m.type === "ColumnDataSource" && m.data.y0 && m.data.i0.length) {
            const i = m.data.i0; return i[i.length - 1];
          }
        return 0;""")
    target = int(last) + 1000
    code = ("import embedviz, sys; from embedviz.records import Update; "
            "s = embedviz.open_store(sys.argv[1]); "
            f"s.write([Update({served['mlp']!r}, '0', {target}, score=0.25)]); s.close()")
    subprocess.run([sys.executable, "-c", code, str(served["path"])], check=True)
    written = time.monotonic()
    seen = wait_for(browser, f"""
        for (const m of Bokeh.documents[0].all_models)
          if (m.type === "ColumnDataSource" && m.data.y0 && m.data.i0.length &&
              m.data.i0[m.data.i0.length - 1] == {target}) return true;
        return false;""", timeout=10, every=0.05)
    latency = time.monotonic() - written
    assert seen, "the new point never reached the page"
    assert latency <= 2.0, f"it took {latency:.2f} s"


def test_the_search_answers_as_the_user_types(served, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, f"{served['url']}?page=embeddings&session={served['w2v']}")
    box = wait_for(browser, DEEP + "return find(document, 'input[placeholder=\"Search words\"]', null)")
    assert box is not None
    del By
    box.click()
    box.send_keys("sai")  # (no Enter)
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('hits').data.x.length >= 1", 10)
    assert "match" in browser.execute_script("return Bokeh.documents[0].get_model_by_name('found').text")
    assert wait_for(browser, "return location.search.includes('q=sai')", 10)
    assert errors(browser) == []


def test_a_projection_started_from_the_form_is_drawn_when_done(served, browser):
    open_page(browser, f"{served['url']}?page=embeddings&session={served['w2v']}")
    assert wait_for(browser, DEEP + "return find(document, 'button', 'Run') !== null")
    snapshots = browser.execute_script("return Bokeh.documents[0].get_model_by_name('snapshot').end")
    browser.execute_script("""
        for (const m of Bokeh.documents[0].all_models) {
          if (m.type === "NumericInput" && m.title === "Top N words") m.value = 120;
          if (m.type === "NumericInput" && m.title === "Iterations") m.value = 200;
        }""")
    time.sleep(0.5)
    browser.execute_script(DEEP + "find(document, 'button', 'Run').click();")
    status = wait_for(browser, """
        const s = Bokeh.documents[0].get_model_by_name('status').text;
        return (s.startsWith('done') || s.startsWith('failed')) ? s : '';""", timeout=180, every=0.5)
    assert status.startswith("done"), status
    # the final map, without a reload: 120 points, the run listed as a projection of its
    # own set (a top-N set), the training's snapshot slider untouched
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('points').data.x.length == 120", 10)
    assert "done" not in browser.execute_script(
        "return Bokeh.documents[0].get_model_by_name('quality').text")
    assert browser.execute_script("return Bokeh.documents[0].get_model_by_name('projection').options.length") >= 1
    assert "(top 120)" in browser.execute_script(
        "const p = Bokeh.documents[0].get_model_by_name('set'); "
        "return p.options.find((o) => o[0] === p.value)[1]")
    browser.execute_script("const p = Bokeh.documents[0].get_model_by_name('set'); "
                           f"p.value = {served['w2v']!r};")
    assert wait_for(browser, f"return Bokeh.documents[0].get_model_by_name('snapshot').end == {snapshots}", 10)
    shoot(browser, served["folder"], "embeddings-projected")
    assert errors(browser) == []


def test_a_zero_on_a_log_chart_keeps_the_chart_to_the_end_of_the_run(served, browser):
    """The planted fault's gradients become exactly 0: markers on the floor, the x range
    to the last report (not to where the line stopped)."""
    open_page(browser, f"{served['url']}?page=overview&session={served['bad']}")
    got = wait_for(browser, """
        for (const m of Bokeh.documents[0].all_models)
          if (m.type === "ColumnDataSource" && m.data.kind && m.data.kind.some((k) => k.startsWith("0 ")))
            return [Math.max(...m.data.i), Bokeh.documents[0].get_model_by_name('score').x_range.end];
        return null;""", 20)
    assert got, "no floor markers for the zero gradients"
    assert got[1] >= got[0]
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


# ---------------------------------------------------------------------------- hostile strings
PAYLOADS = ['<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>",
            '" onmouseover="window.__pwned=3" x="', "javascript:window.__pwned=4",
            "<b>bold</b> &amp; <i>x</i>", "<svg onload=window.__pwned=5>"]


def hostile_store(path: Path) -> dict:
    """Every stored text field holds one of PAYLOADS: session name, tag keys and values,
    worker, metric, layer and parameter names, static info, finding check, layer and
    message, embedding set name, words, metadata column names and values. Two workers of
    an adversarial objective (their names in its note, a finding's worker named on its
    marker), recorded without an optimizer, on the CPU (the explanations beside them)."""
    import embedviz
    from embedviz.records import EmbeddingSet, Finding, Histogram, Projection, Summary, Update

    p = PAYLOADS
    rng = np.random.default_rng(0)
    layer = p[0]
    weight = f"{layer}.weight"
    with embedviz.open_store(path) as store:
        s = store.create_session(name=p[0], tags={p[1]: p[2], "lr": p[4]},
                                 info={"objective": "adversarial"})
        worker = p[5]
        store.write([Update(s.id, p[3], i, score=1.0 + i / 100) for i in range(0, 200, 10)])
        store.put_static(s.id, worker, {
            "listener": {"frequency": 10, "updates": "parameter change", "lr": "step",
                         "activations": True, "histograms": True},
            "hardware": {"devices": ["cpu"]},
            "model": {"type": p[1], "n_params": 10, "layers": [
                {"name": layer, "type": p[2], "n_params": 10, "params": {"weight": [2, 5]}}]},
            "optimizer": {"type": p[3], "defaults": {"lr": 0.1}},
            "hyperparameters": {p[4]: p[0], p[0]: p[5]}})

        def summ(scale: float) -> Summary:
            v = rng.normal(0, scale, 100)
            counts, edges = np.histogram(v, bins=10)
            return Summary(count=100, mean=v.mean(), stdev=v.std(), mean_magnitude=np.abs(v).mean(),
                           min=v.min(), max=v.max(), zero_fraction=0.0, histogram=Histogram(edges, counts))
        store.write([Update(s.id, worker, i, score=2.0 / (1 + i), scalars={f"lr/{p[1]}": 0.1},
                            summaries={f"param/{weight}": summ(1.0), f"gradient/{weight}": summ(0.1),
                                       f"update/{weight}": summ(0.001), f"activation/{layer}": summ(1.0)})
                     for i in range(0, 200, 10)])
        for i in range(3):
            store.log_metric(s.id, p[2], 1.0 / (i + 1), iteration=50 * i, worker=worker)
        store.add_finding(Finding(s.id, p[3], p[0], iteration=20, worker=worker, severity="warning",
                                  layer=weight))
        store.add_finding(Finding(s.id, "nan", p[1], iteration=40, worker=worker, severity="error",
                                  layer=p[4]))
        words = [p[i % len(p)] + f" {i}" for i in range(40)]
        e = EmbeddingSet(p[4], words, rng.normal(size=(40, 8)),
                         metadata={p[0]: [p[i % 3] for i in range(40)], "count": list(range(40))},
                         session=s.id, iteration=100)
        store.put_embedding(e)
        store.put_projection(Projection(e.key, "pca", coords=rng.normal(size=(40, 2)), state="done"))
        return {"session": s.id}


def test_hostile_strings_from_the_store_stay_text_on_every_page(tmp_path, browser):
    ids = hostile_store(tmp_path / "hostile.db")
    proc, url = serve(tmp_path / "hostile.db")
    try:
        browser.get_log("browser")
        for name in (*PAGES, "overview&worker=*"):  # (the second: both workers' spread)
            open_page(browser, f"{url}?page={name}&session={ids['session']}")
            wait_for(browser, HELD, 20)
            time.sleep(1.0)
            if name == "embeddings":  # (hover a point, click one: tooltips, neighbours)
                browser.execute_script("Bokeh.documents[0].get_model_by_name('points').selected.indices = [0];")
                time.sleep(1.0)
            if name == "health":
                browser.execute_script("const t = Bokeh.documents[0].get_model_by_name('findings'); "
                                       "t.selected.indices = [0];")
                time.sleep(0.5)
            assert browser.execute_script("return window.__pwned === undefined"), name
            shown = browser.execute_script(DEEP + "return texts(document).join('\\n');")
            assert PAYLOADS[0] in shown, name  # (as written: the session picker at least)
            assert browser.execute_script(PAGE_ERROR) == "", name
            shoot(browser, tmp_path, f"hostile-{name}".replace("&worker=*", "-all"))
        # the strings in the widgets that show them, as written
        open_page(browser, f"{url}?page=health&session={ids['session']}")
        shown = wait_for(browser, DEEP + "const t = texts(document).join('\\n'); "
                                         f"return t.includes({json.dumps(PAYLOADS[3])}) ? t : '';", 20)
        for text in (PAYLOADS[0], PAYLOADS[1], PAYLOADS[3]):
            assert text in shown
        open_page(browser, f"{url}?page=overview&session={ids['session']}")
        shown = wait_for(browser, DEEP + "const t = texts(document).join('\\n'); "
                                         f"return t.includes({json.dumps(PAYLOADS[5])}) ? t : '';", 20)
        for text in (PAYLOADS[0], PAYLOADS[2], PAYLOADS[4], PAYLOADS[5]):
            assert text in shown
        # the explanations: the objective naming both workers, how updates were measured
        assert f"workers' losses ({PAYLOADS[5]}, {PAYLOADS[3]})" in shown
        assert "updates are measured from parameter changes" in shown
        # a finding's hover (a template: each field in it is escaped)
        from selenium.webdriver.common.action_chains import ActionChains

        x, y = browser.execute_script("""
            const doc = Bokeh.documents[0], fig = doc.get_model_by_name('score');
            const v = Bokeh.index.find_one(fig);
            const src = [...doc.all_models].find((m) => m.type === 'ColumnDataSource' &&
                                                        m.data.severity && m.data.severity.includes('error'));
            const k = src.data.severity.indexOf('error');
            const r = v.canvas_view.el.getBoundingClientRect();
            return [r.left + v.frame.x_scale.compute(src.data.i[k]),
                    r.top + v.frame.bbox.top + (1 - src.data.y[k]) * v.frame.bbox.height];""")
        ActionChains(browser).move_by_offset(int(x), int(y)).perform()
        label = f"error: nan ({PAYLOADS[4]})"
        assert wait_for(browser, DEEP + f"return texts(document).join('\\n').includes({json.dumps(label)})", 10)
        assert browser.execute_script("return window.__pwned === undefined")
        assert errors(browser) == []
    finally:
        proc.terminate()
        proc.wait(30)


MAP_ZOOM = """
const fig = Bokeh.documents[0].get_model_by_name("map"), xr = fig.x_range, yr = fig.y_range;
const cx = (xr.start + xr.end) / 2, cy = (yr.start + yr.end) / 2;
const sx = (xr.end - xr.start) / 200, sy = (yr.end - yr.start) / 200;
window.__view = [cx - sx, cx + sx, cy - sy, cy + sy];
xr.setv({start: cx - sx, end: cx + sx});
yr.setv({start: cy - sy, end: cy + sy});
Bokeh.index.find_one(fig).trigger_ranges_update_event();"""

# every point drawn lies in the zoomed view, and the density image is gone
MAP_ZOOMED = """
const doc = Bokeh.documents[0], d = doc.get_model_by_name("points").data;
const [a, b, c, e] = window.__view;
if (!d.x.length) return false;
for (let i = 0; i < d.x.length; i++) if (d.x[i] < a || d.x[i] > b || d.y[i] < c || d.y[i] > e) return false;
const image = [...doc.all_models].find((m) => m.type === "GlyphRenderer" && m.glyph.type === "ImageRGBA");
return !image.visible || !doc.get_model_by_name("density").data.image.length;"""


def million_map(n: int = 1_000_000) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    words = [f"w{i}" for i in range(n)]
    words[n - 1] = "<img src=x onerror=alert(1)>needle"
    return coords, words


def forget_earlier_pages(browser) -> None:
    """Leave the page an earlier test left open (its server gone: its socket's errors are
    that test's, not this one's) and drop the log so far."""
    browser.get("about:blank")
    errors(browser)


def check_million_map(browser, folder: Path, name: str) -> None:
    from embedviz.lod import VIEW_POINTS

    held = browser.execute_script("return Bokeh.documents[0].get_model_by_name('points').get_length()")
    assert 0 < held <= VIEW_POINTS + 10  # (not the million)
    assert browser.execute_script("return Bokeh.documents[0].get_model_by_name('density').data.image.length") == 1
    shoot(browser, folder, f"{name}-whole")
    browser.execute_script(MAP_ZOOM)
    assert wait_for(browser, MAP_ZOOMED, 20), "the zoomed view was not redrawn with its own points"
    shoot(browser, folder, f"{name}-zoomed")
    browser.execute_script("const s = Bokeh.documents[0].get_model_by_name('search');"
                           "s.value_input = 'needle';")
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('points').data.word"
                             ".some((w) => w.endsWith('needle'))", 20), "the match was not drawn"
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('found').text.startsWith('1 ')", 10)
    shoot(browser, folder, f"{name}-search")
    assert browser.execute_script("return document.images.length") == 0  # (the word is text)
    assert errors(browser) == []


@pytest.mark.slow
def test_a_million_point_map_zooms_and_searches_in_the_app_and_in_a_standalone_page(tmp_path, browser):
    """The embeddings page and plot_vocab's HTML with 1,000,000 points: an image of the view
    and a few thousand points reach the browser; zoomed in, the view's own points; the search
    finds a word among the million (and shows it as text)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    import embedviz
    from embedviz.plot import vocab_figure
    from embedviz.projection import ProjectionResult
    from embedviz.records import EmbeddingSet, Projection
    from embedviz.vocab import Vocabulary

    forget_earlier_pages(browser)
    coords, words = million_map()
    path = tmp_path / "million.db"
    with embedviz.open_store(path) as store:
        e = EmbeddingSet("million", words, coords)
        store.put_embedding(e)
        store.put_projection(Projection(e.key, "tsne", coords=coords, state="done"))
    proc, url = serve(path)
    try:
        open_page(browser, url + "?page=embeddings")
        assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('points')?.get_length() > 0", 60)
        check_million_map(browser, tmp_path, "million-app")
        browser.get("about:blank")  # (before the server goes: its socket closing is no error)
        errors(browser)
    finally:
        proc.terminate()
        proc.wait(30)
    result = ProjectionResult(Vocabulary(words, coords, {}, "million"), coords,
                              Projection("k", "tsne", {}), None)
    html = tmp_path / "million.html"
    html.write_text(file_html(vocab_figure(result)[1], INLINE, title="million"), encoding="utf-8")
    open_page(browser, html.as_uri())
    assert wait_for(browser, "return Bokeh.documents[0].get_model_by_name('points')?.get_length() > 0", 60)
    check_million_map(browser, tmp_path, "million-html")


def test_a_small_standalone_map_searches_as_the_user_types_and_centres_the_match(tmp_path, browser):
    from selenium.webdriver.common.by import By

    from embedviz.plot import plot_vocab
    from embedviz.projection import BarnesHutTsne
    from embedviz.vocab import Vocabulary

    forget_earlier_pages(browser)
    rng = np.random.default_rng(0)
    words = ["paris", "<b>bold</b>"] + [f"w{i}" for i in range(298)]
    out = tmp_path / "small.html"
    plot_vocab(Vocabulary(words, rng.normal(size=(300, 8)).astype(np.float32), {}),
               BarnesHutTsne(random_state=0, progress=False), output=out)
    open_page(browser, out.as_uri())
    box = wait_for(browser, DEEP + "return find(document, 'input[placeholder^=\"search words\"]', null)")
    assert box is not None
    del By
    before = browser.execute_script("return Bokeh.documents[0].roots()[0].children[1].x_range.start")
    box.click()
    box.send_keys("pari")  # (no Enter)
    assert wait_for(browser, DEEP + "return find(document, 'div', '1 match') !== null", 10)
    after = browser.execute_script("return Bokeh.documents[0].roots()[0].children[1].x_range.start")
    assert after != before  # (the view moved to the match)
    assert browser.execute_script("return document.images.length") == 0
    assert errors(browser) == []

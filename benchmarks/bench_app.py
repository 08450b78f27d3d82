"""The app on a large store: page builds, the first paint and a zoom in Chromium, and many
users at once while a training writes.

  pages        building each page's document on a fresh server (every line read): the
               overview of a session of 100,000 iterations x 50 layers (parameter, gradient,
               update and activation of each: 200 tensors with their statistics), its model
               page, and the embeddings page of 20,000 projected words
  first paint  the overview opened in Chromium: from navigation until every chart has its
               data drawn (measured in the browser)
  zoom         a zoom into 1% of the score's 100,000 iterations, until the browser holds
               every point inside the window
  many users   --clients Bokeh client sessions (the Python client, a websocket each) on the
               overview while another process writes --rate reports a second, each with all
               200 tensors: the server's tick times (p95), how long each session takes to
               show a new report, the store calls per tick and per chart, the server's CPU
               and memory

  maps         (--maps N ...) the embeddings page and plot_vocab's standalone HTML with N
               projected words: first paint, a zoom into 1/40 of the map across, a search for
               one word among them (each until drawn, measured in the browser), the server's
               memory (the set's 300-dimensional vectors included), the HTML's size; and the server's work for one view (embedviz.lod)
               beside Datashader's aggregation and shading of the same points, when installed

TensorBoard has no like figures (it loads event files up front and samples 1,000 points
per scalar, in one page for one user); the figures stand against the issue's targets.

    python benchmarks/bench_app.py [--iterations 100000] [--layers 50] [--words 20000]
        [--clients 20] [--rate 10] [--seconds 30] [--keep DIR] [--no-browser]
        [--maps 200000 1000000 [--only-maps]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
from tqdm import tqdm

import embedviz
from embedviz.records import EmbeddingSet, Projection, Summary, Update

HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------------------- stores
def _summary(m: float, zero: float = 0.0) -> Summary:
    return Summary.trusted(None, count=4096, mean=0.0, stdev=m, mean_magnitude=m, min=-3 * m,
                           max=3 * m, nan_count=0, inf_count=0, zero_fraction=zero)


def report(session: str, it: int, n: int, layers: int, rng: np.random.Generator) -> Update:
    """One report of the reference run: score, learning rate, every layer's tensors."""
    summaries = {}
    for i in range(layers):
        m = float(abs(rng.normal(0.1, 0.01)))
        summaries[f"param/fc{i}.weight"] = _summary(m)
        summaries[f"gradient/fc{i}.weight"] = _summary(m * 1e-2)
        summaries[f"update/fc{i}.weight"] = _summary(m * 1e-3)
        summaries[f"activation/fc{i}"] = _summary(1.0, 0.3)
    score = float(2.3 * np.exp(-it / max(n, 1) * 5) + rng.normal(0, 0.05))
    return Update.trusted(session, "0", it, score, it // 1000, {"lr/0": 0.1}, summaries)


def fill_training(path: str, n: int, layers: int) -> str:
    """A session of ``n`` iterations of ``layers`` layers; returns its id."""
    rng = np.random.default_rng(0)
    with embedviz.open_store(path) as store:
        s = store.create_session(name="long run")
        store.put_static(s.id, "0", {"model": {"type": "MLP", "n_params": layers * 4160, "layers": [
            {"name": f"fc{i}", "type": "Linear", "params": {"weight": [64, 64]}, "n_params": 4096,
             "output_shapes": [[32, 64]]} for i in range(layers)]}})
        batch = 1000
        for start in tqdm(range(0, n, batch), desc=f"filling {n:,} iterations x {layers} layers",
                          unit="batch"):
            store.write([report(s.id, it, n, layers, rng) for it in range(start, min(n, start + batch))])
        for it in range(0, n, 1000):
            store.log_metric(s.id, "val_loss", float(2.3 * np.exp(-it / n * 4)), iteration=it)
        return s.id


def fill_words(path: str, n: int) -> None:
    rng = np.random.default_rng(1)
    with embedviz.open_store(path) as store:
        vectors = rng.normal(size=(n, 64)).astype(np.float32)
        e = EmbeddingSet("words", [f"w{i}" for i in range(n)], vectors,
                         metadata={"count": list(range(n, 0, -1))})
        store.put_embedding(e)
        store.put_projection(Projection(e.key, "tsne", {}, coords=rng.normal(size=(n, 2)).astype(np.float32),
                                        quality={"knn_preservation": 0.3}, state="done", progress=1.0))


def map_coords(n: int, seed: int = 3) -> np.ndarray:
    """A t-SNE-like map: 60 clusters of different sizes and spreads, and a thin background."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-40, 40, (60, 2))
    which = rng.choice(60, n, p=rng.dirichlet(np.ones(60)))
    spread = rng.uniform(0.5, 4, 60)[which, None]
    coords = centres[which] + rng.normal(size=(n, 2)) * spread
    coords[rng.random(n) < 0.02] = rng.uniform(-50, 50, (int(np.sum(rng.random(n) < 0.02)), 2))[:1]
    return coords.astype(np.float32)


def fill_map(path: str, n: int) -> list[str]:
    """A store holding one set of ``n`` words (300-dimensional vectors, as word2vec's) and
    its map."""
    rng = np.random.default_rng(4)
    words = [f"w{i}" for i in range(n)]
    vectors = np.empty((n, 300), np.float32)
    for at in range(0, n, 100_000):
        vectors[at:at + 100_000] = rng.standard_normal((min(100_000, n - at), 300), np.float32)
    with embedviz.open_store(path) as store:
        e = EmbeddingSet("map", words, vectors,
                         metadata={"count": list(range(n, 0, -1)),
                                   "kind": [f"k{i % 9}" for i in range(n)]})
        store.put_embedding(e)
        store.put_projection(Projection(e.key, "tsne", {}, coords=map_coords(n), state="done",
                                        progress=1.0))
    return words


# ---------------------------------------------------------------------------- page builds
def timed_page(path: str, page: str, session: str | None, repeats: int = 3) -> float:
    from bokeh.document import Document
    from embedviz.server import AppState
    from embedviz.server.app_doc import build_document

    best = float("inf")
    for _ in range(repeats):
        with AppState(embedviz.open_store(path, readonly=True), jobs=False) as app:
            t0 = time.perf_counter()
            build_document(Document(), app, page=page, sessions=[session] if session else None)
            best = min(best, time.perf_counter() - t0)
            app.store.close()
    return best


# ---------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_server(store: str, port: int, stats: str) -> None:
    """(a subprocess) The app on ``port``; every second its tick times, store calls, CPU
    and memory go to the JSON file ``stats``."""
    import collections

    import psutil
    from embedviz.server import make_server
    from tornado.ioloop import PeriodicCallback

    server = make_server(store, port=port)
    server.start()
    context = server._tornado._applications["/"].server_context
    me = psutil.Process()
    history: list[dict] = []
    ticks: collections.deque = collections.deque(maxlen=100_000)

    def dump() -> None:
        app = getattr(context, "embedviz", None)  # (made by the app's on_server_loaded)
        if app is None:
            return
        app.ticks = ticks
        cpu = me.cpu_times()
        history.append({"t": time.time(), "cpu": cpu.user + cpu.system, "rss": me.memory_info().rss,
                        "queries": app.provider.queries, "generation": app.provider.generation,
                        "ticks": list(ticks), "sessions": len(server.get_sessions("/"))})
        ticks.clear()
        with open(stats + ".tmp", "w") as f:
            json.dump(history, f)
        os.replace(stats + ".tmp", stats)
    PeriodicCallback(dump, 1000).start()
    print("serving", flush=True)
    server.io_loop.start()


def run_writer(store: str, session: str, n: int, layers: int, rate: float, seconds: float,
               out: str) -> None:
    """(a subprocess) A training writing ``rate`` reports a second; logs when each landed."""
    rng = np.random.default_rng(2)
    log = []
    with embedviz.open_store(store) as s:
        it, t_end = n, time.time() + seconds
        while time.time() < t_end:
            t0 = time.time()
            it += 10
            s.write([report(session, it, n, layers, rng)])
            log.append((it, time.time()))
            time.sleep(max(0.0, 1.0 / rate - (time.time() - t0)))
    with open(out, "w") as f:
        json.dump(log, f)


def run_clients(url: str, k: int, seconds: float, out: str) -> None:
    """(a subprocess) ``k`` Bokeh client sessions on ``url``; logs when each received each
    iteration of the score. They stand in for browsers: each pulls the whole page (a
    browser's first load), then only reads the score chart's new points out of every
    patch the server sends, as a browser would draw them (a Python client that applied
    every patch to its document would take a core of its own for 20 tabs)."""
    import asyncio
    from urllib.parse import parse_qsl, urlsplit

    from bokeh.client import pull_session
    from bokeh.core.serialization import Deserializer

    parts = urlsplit(url)
    base, arguments = f"{parts.scheme}://{parts.netloc}/", dict(parse_qsl(parts.query))
    seen: dict[int, dict[int, float]] = {}
    lock = threading.Lock()
    connected = []

    def one(j: int) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        session = pull_session(url=base, arguments=arguments)
        score = session.document.get_model_by_name("score").renderers[0].data_source.id
        mine = seen.setdefault(j, {})

        def received(message) -> None:
            now = time.time()
            for ev in message.content.get("events", []):
                if ev.get("kind") == "ColumnsStreamed" and ev["model"]["id"] == score:
                    data = dict(ev["data"]["entries"])  # (a serialized map)
                    its = Deserializer().decode(data["i0"], message.buffers)
                    with lock:
                        for it in np.asarray(its, dtype=float):
                            mine.setdefault(int(it), now)
        session._handle_patch = received  # type: ignore[method-assign]
        with lock:
            connected.append(j)
            with open(out + ".ready", "w") as f:
                f.write(str(len(connected)))
        session._loop_until_closed()

    for j in range(k):
        threading.Thread(target=one, args=(j,), daemon=True).start()
    t_end = time.time() + seconds
    while time.time() < t_end:  # (written every second: the bench stops this process)
        time.sleep(1.0)
        with lock:
            text = json.dumps({"connected": len(connected),
                               "seen": {str(j): dict(v) for j, v in seen.items()}})
        with open(out + ".tmp", "w") as f:
            f.write(text)
        os.replace(out + ".tmp", out)


# ---------------------------------------------------------------------------- the browser
def chromium(size: str) -> Any:
    """Debian's headless Chromium, driven by Selenium, its window ``size`` ("W,H")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", f"--window-size={size}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def browser_figures(url: str, charts: int) -> dict:
    """First paint of ``url`` and a zoom into 1% of its score chart, in Chromium."""
    driver = chromium("1500,1800")
    try:
        paints = []
        for _ in range(3):
            driver.get("about:blank")
            driver.get(url)
            painted = None
            end = time.monotonic() + 60
            while painted is None and time.monotonic() < end:
                painted = driver.execute_script(f"""
                    if (!window.Bokeh || !Bokeh.documents.length) return null;
                    const doc = Bokeh.documents[0];
                    const plots = [...Bokeh.index.query((v) => v.model.type === "Figure")];
                    if (plots.length < {charts} || !doc.is_idle) return null;
                    for (const p of plots) if (!p.has_finished()) return null;
                    const score = doc.get_model_by_name("score");
                    if (!score || !score.renderers[0].data_source.get_length()) return null;
                    return performance.now();""")
                time.sleep(0.02)
            paints.append(painted / 1000 if painted else float("nan"))
        start = driver.execute_script("""
            const fig = Bokeh.documents[0].get_model_by_name("score");
            const xr = fig.x_range, v = Bokeh.index.find_one(fig);
            const span = xr.end - xr.start, a = xr.start + span / 2;
            window.__window = [a, a + span / 100];
            xr.setv({start: a, end: a + span / 100});
            v.trigger_ranges_update_event();
            return performance.now();""")
        zoomed = None
        end = time.monotonic() + 30
        while zoomed is None and time.monotonic() < end:
            zoomed = driver.execute_script("""
                const [a, b] = window.__window;
                const d = Bokeh.documents[0].get_model_by_name("score").renderers[0].data_source.data;
                let n = 0;
                for (const i of d.i0) if (i >= a && i <= b) n++;
                return n >= 0.9 * (b - a) / 10 ? performance.now() : null;""")
            time.sleep(0.01)
        return {"paints": paints, "zoom": (zoomed - start) / 1000 if zoomed else float("nan")}
    finally:
        driver.quit()


MAP_READY = """
if (!window.Bokeh || !Bokeh.documents.length) return null;
const doc = Bokeh.documents[0], fig = doc.get_model_by_name("map");
if (!fig || !doc.is_idle) return null;
const v = Bokeh.index.find_one(fig);
if (!v || !v.has_finished() || !doc.get_model_by_name("points").get_length()) return null;
return performance.now();"""

MAP_ZOOM = """
const fig = Bokeh.documents[0].get_model_by_name("map"), xr = fig.x_range, yr = fig.y_range;
window.__before = Bokeh.documents[0].get_model_by_name("points").data.x;
const cx = (xr.start + xr.end) / 2 + (xr.end - xr.start) / 7, cy = (yr.start + yr.end) / 2;
const sx = (xr.end - xr.start) / 80, sy = (yr.end - yr.start) / 80;
window.__view = [cx - sx, cx + sx, cy - sy, cy + sy];
xr.setv({start: cx - sx, end: cx + sx});
yr.setv({start: cy - sy, end: cy + sy});
Bokeh.index.find_one(fig).trigger_ranges_update_event();
return performance.now();"""

MAP_ZOOMED = """
const d = Bokeh.documents[0].get_model_by_name("points").data;
if (d.x === window.__before) return null;
const [a, b, c, e] = window.__view;
for (let i = 0; i < d.x.length; i++) if (d.x[i] < a || d.x[i] > b || d.y[i] < c || d.y[i] > e) return null;
const v = Bokeh.index.find_one(Bokeh.documents[0].get_model_by_name("map"));
return v.has_finished() ? performance.now() : null;"""


def map_browser(url: str, word: str) -> dict:
    """First paint (from navigation), zoom and search of a map page, in Chromium."""
    driver = chromium("1400,1100")

    def until(script: str, timeout: float = 60) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = driver.execute_script(script)
            if got is not None:
                return float(got)
            time.sleep(0.01)
        return float("nan")

    try:
        paints = []
        for _ in range(2):
            driver.get("about:blank")
            driver.get(url)
            paints.append(until(MAP_READY) / 1000)
        t0 = driver.execute_script(MAP_ZOOM)
        zoom = (until(MAP_ZOOMED, 30) - t0) / 1000
        t1 = driver.execute_script("const s = Bokeh.documents[0].get_model_by_name('search');"
                                   f"s.value_input = {json.dumps(word)}; return performance.now();")
        found = until("const d = Bokeh.documents[0]; return d.get_model_by_name('found').text && "
                      f"d.get_model_by_name('points').data.word.includes({json.dumps(word)}) && "
                      "Bokeh.index.find_one(d.get_model_by_name('map')).has_finished() ? "
                      "performance.now() : null;", 30)
        return {"paints": paints, "zoom": zoom, "search": (found - t1) / 1000}
    finally:
        driver.quit()


def view_work(n: int) -> dict:
    """The server's work for one view of ``n`` points (the whole map; 1/40 of it across):
    embedviz.lod against Datashader's aggregation and categorical shading (when installed)."""
    from embedviz.lod import COARSE, MapLOD
    from embedviz.plot import colours

    coords = map_coords(n).astype(np.float64)
    kinds = [f"k{i % 9}" for i in range(n)]
    hexes, _ = colours(kinds)
    t0 = time.perf_counter()
    lod = MapLOD(coords, hexes, np.arange(n))
    out: dict = {"index": time.perf_counter() - t0}
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    mid, q = (lo + hi) / 2, (hi - lo) / 80
    views = {"whole": (lo[0], hi[0], lo[1], hi[1]),
             "zoomed": (mid[0] - q[0], mid[0] + q[0], mid[1] - q[1], mid[1] + q[1])}
    w, h = 820 // COARSE, 620 // COARSE
    for name, (x0, x1, y0, y1) in views.items():
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            lod.view(x0, x1, y0, y1, w, h)
            best = min(best, time.perf_counter() - t0)
        out[f"ours {name}"] = best
    try:
        import datashader as ds
        import datashader.transfer_functions as tf
        import pandas as pd
    except ImportError:
        return out
    frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1],
                          "kind": pd.Categorical(kinds)})
    key = dict(zip(sorted(set(kinds)), sorted(set(hexes))))
    for name, (x0, x1, y0, y1) in views.items():
        times = []
        for _ in range(5 if name == "whole" else 3):
            t0 = time.perf_counter()
            canvas = ds.Canvas(plot_width=w, plot_height=h, x_range=(x0, x1), y_range=(y0, y1))
            agg = canvas.points(frame, "x", "y", ds.count_cat("kind"))
            tf.shade(agg, color_key=key, how="log").to_numpy()
            times.append(time.perf_counter() - t0)
        out[f"datashader {name}"] = min(times[1:]) if len(times) > 1 else times[0]
        out.setdefault("datashader first call", times[0])
    return out


def run_maps(args: argparse.Namespace, folder: str) -> None:
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from embedviz.plot import vocab_figure
    from embedviz.projection import ProjectionResult
    from embedviz.vocab import Vocabulary

    rows = []
    for n in args.maps:
        path = os.path.join(folder, f"map_{n}.db")
        if os.path.exists(path):
            os.remove(path)
        words = fill_map(path, n)
        word = words[n // 3 + 7]
        work = view_work(n)
        port = free_port()
        stats = os.path.join(folder, f"map_stats_{n}.json")
        server = subprocess.Popen([sys.executable, HERE, "--role", "server", "--args", path,
                                   str(port), stats], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and "serving" in server.stdout.readline()
        try:
            app = map_browser(f"http://localhost:{port}/?page=embeddings", word)
            time.sleep(1.5)
            with open(stats) as f:
                rss = max(h["rss"] for h in json.load(f)) / 2**20
        finally:
            server.terminate()
            server.wait(30)
        with embedviz.open_store(path, readonly=True) as store:
            e = store.embeddings()[0]
            p = store.projections(e.key)[0]
            e = store.embedding(e.key)
        result = ProjectionResult(Vocabulary(e.labels, e.vectors, dict(e.metadata), "map"),
                                  p.coords, p, None)
        t0 = time.perf_counter()
        html = os.path.join(folder, f"map_{n}.html")
        with open(html, "w", encoding="utf-8") as f:
            f.write(file_html(vocab_figure(result, color_by="kind")[1], INLINE, title="map"))
        written = time.perf_counter() - t0
        static = map_browser("file://" + html, word)
        size = os.path.getsize(html) / 2**20
        print(f"{n:,} points: app {app}, server {rss:.0f} MB; html {static}, {size:.0f} MB "
              f"written in {written:.1f} s; one view's work {work}", flush=True)
        rows.append((n, app, rss, static, size, written, work))
    print(f"\n{'map':<46} {'measured':>30}  target")
    for n, app, rss, static, size, written, work in rows:
        for where, r in (("app", app), ("html", static)):
            print(f"{f'{n:,} points, {where}: first paint (2 loads)':<46} "
                  f"{', '.join(f'{x:.2f}' for x in r['paints']) + ' s':>30}  <= 3 s")
            print(f"{f'{n:,} points, {where}: zoom to 1/40 across':<46} {r['zoom']:>28.2f} s  <= 1 s")
            print(f"{f'{n:,} points, {where}: search one word':<46} {r['search']:>28.2f} s  <= 0.5 s")
        print(f"{f'{n:,} points: server memory (peak)':<46} {rss:>27.0f} MB  -")
        made = f"{size:.0f} MB, written in {written:.1f} s"
        print(f"{f'{n:,} points: standalone HTML':<46} {made:>30}  -")
        ours = f"{1000 * work['ours whole']:.0f} | {1000 * work['ours zoomed']:.0f} ms"
        print(f"{f'{n:,} points: one view, whole | zoomed (ours)':<46} {ours:>30}  -")
        if "datashader whole" in work:
            theirs = (f"{1000 * work['datashader whole']:.0f} | "
                      f"{1000 * work['datashader zoomed']:.0f} ms "
                      f"(first call {work['datashader first call']:.1f} s)")
            print(f"{f'{n:,} points: same, Datashader':<46} {theirs:>30}  -")


# ---------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--layers", type=int, default=50)
    p.add_argument("--words", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rate", type=float, default=10.0, help="reports a second written meanwhile")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--keep", default=None, help="keep the stores in this folder (and reuse them)")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--maps", type=int, nargs="*", default=[],
                   help="also measure maps of these many points (e.g. 200000 1000000)")
    p.add_argument("--only-maps", action="store_true", help="measure the maps only")
    p.add_argument("--role", default=None, help=argparse.SUPPRESS)
    p.add_argument("--args", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "server":
        return run_server(args.args[0], int(args.args[1]), args.args[2])
    if args.role == "writer":
        a = args.args
        return run_writer(a[0], a[1], int(a[2]), int(a[3]), float(a[4]), float(a[5]), a[6])
    if args.role == "clients":
        a = args.args
        return run_clients(a[0], int(a[1]), float(a[2]), a[3])

    folder = args.keep or tempfile.mkdtemp()
    os.makedirs(folder, exist_ok=True)
    if args.maps:
        run_maps(args, folder)
        if args.only_maps:
            return
    train = os.path.join(folder, f"train_{args.iterations}x{args.layers}.db")
    words = os.path.join(folder, f"words_{args.words}.db")
    if not os.path.exists(train):
        fill_training(train, args.iterations, args.layers)
    if not os.path.exists(words):
        fill_words(words, args.words)
    with embedviz.open_store(train, readonly=True) as store:
        session = store.sessions()[0].id
        last = int(store.read_series(session, "score", limit=None).iterations[-1])
    overview = timed_page(train, "overview", session)
    model = timed_page(train, "model", session)
    emb = timed_page(words, "embeddings", None)
    print(f"\npages (built on a fresh server, best of 3): overview {overview:.2f} s, "
          f"model {model:.2f} s, embeddings of {args.words:,} words {emb:.2f} s", flush=True)

    port = free_port()
    stats = os.path.join(folder, "server_stats.json")
    server = subprocess.Popen([sys.executable, HERE, "--role", "server", "--args", train, str(port), stats],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and "serving" in server.stdout.readline()
    url = f"http://localhost:{port}/?page=overview&session={session}"
    try:
        browser = None
        if not args.no_browser and shutil.which("chromium"):
            browser = browser_figures(url, charts=7)
            print(f"first paint in Chromium: {', '.join(f'{x:.2f}' for x in browser['paints'])} s; "
                  f"zoom into 1%: {browser['zoom']:.2f} s", flush=True)
        many = many_users(args, train, session, last, url, stats)
    finally:
        server.terminate()
        server.wait(30)
    print_table(args, overview, model, emb, browser, many)


def many_users(args: argparse.Namespace, train: str, session: str, last: int, url: str,
               stats: str) -> dict:
    folder = os.path.dirname(stats)
    seen_file, wrote_file = os.path.join(folder, "clients.json"), os.path.join(folder, "writer.json")
    for stale in (seen_file, seen_file + ".ready"):
        if os.path.exists(stale):
            os.remove(stale)
    clients = subprocess.Popen([sys.executable, HERE, "--role", "clients", "--args", url,
                                str(args.clients), str(120 + args.seconds), seen_file])
    t0 = time.time()
    while time.time() - t0 < 120:  # (all connected, each with its whole page, first)
        ready = open(seen_file + ".ready").read() if os.path.exists(seen_file + ".ready") else "0"
        if ready.strip() == str(args.clients):
            break
        time.sleep(0.2)
    connect = time.time() - t0
    time.sleep(2)
    with open(stats) as f:
        before = json.load(f)[-1]
    writer = subprocess.Popen([sys.executable, HERE, "--role", "writer", "--args", train, session,
                               str(last), str(args.layers), str(args.rate), str(args.seconds), wrote_file])
    writer.wait()
    time.sleep(4)
    with open(stats) as f:
        history = json.load(f)
    clients.terminate()
    clients.wait()
    during = [h for h in history if h["t"] > before["t"]]
    ticks = [x for h in during for x in h["ticks"]]
    after = during[-1]
    with open(wrote_file) as f:
        wrote = json.load(f)
    with open(seen_file) as f:
        seen = json.load(f)
    lat = []
    for per in seen["seen"].values():
        firsts = sorted((int(k), v) for k, v in per.items())
        for it, t in wrote:
            got = next((v for k, v in firsts if k >= it), None)
            lat.append(got - t if got is not None else float("inf"))
    gens = max(after["generation"] - before["generation"], 1)
    return {"connected": seen["connected"], "connect": connect, "ticks": ticks, "latency": lat,
            "reports": len(wrote), "calls_per_generation": (after["queries"] - before["queries"]) / gens,
            "cpu": (after["cpu"] - before["cpu"]) / (after["t"] - before["t"]),
            "rss": max(h["rss"] for h in history) / 2**20}


def print_table(args: argparse.Namespace, overview: float, model: float, emb: float,
                browser: dict | None, many: dict) -> None:
    ticks = np.array(many["ticks"]) if many["ticks"] else np.array([np.nan])
    lat = np.array(many["latency"])
    finite = lat[np.isfinite(lat)]
    charts = 7
    print(f"\n{'what':<58} {'measured':>22}  target")
    rows = [
        (f"overview build, {args.iterations:,} iterations x {args.layers} layers", f"{overview:.2f} s", "-"),
        ("model page build, same session", f"{model:.2f} s", "-"),
        (f"embeddings page build, {args.words:,} words", f"{emb:.2f} s", "<= 3 s"),
    ]
    if browser:
        rows += [("overview first paint in Chromium (3 loads)",
                  ", ".join(f"{x:.2f}" for x in browser["paints"]) + " s", "<= 2 s"),
                 ("zoom into 1% of the score, until drawn", f"{browser['zoom']:.2f} s", "<= 0.5 s")]
    rows += [
        (f"{args.clients} sessions connected (Bokeh clients), each with its page",
         f"{many['connected']} in {many['connect']:.1f} s", "-"),
        (f"tick (one tab's periodic callback), {args.rate:g} reports/s written",
         f"p50 {1000 * np.nanmedian(ticks):.0f} ms, p95 {1000 * np.nanpercentile(ticks, 95):.0f} ms", "p95 < 1 s"),
        ("a new report shown in every session (p50, p95, max)",
         (f"{np.median(finite):.2f}, {np.percentile(finite, 95):.2f}, {finite.max():.2f} s"
          if finite.size else "-") + (f" ({np.sum(~np.isfinite(lat))} never)" if np.any(~np.isfinite(lat)) else ""),
         "<= 2 s"),
        ("store calls per store change, all tabs together", f"{many['calls_per_generation']:.1f}",
         f"<= {charts} charts + 3"),
        ("server CPU (of one core) and peak memory",
         f"{100 * many['cpu']:.0f}%, {many['rss']:.0f} MB", "-"),
    ]
    for what, got, target in rows:
        print(f"{what:<58} {got:>22}  {target}")


if __name__ == "__main__":
    main()

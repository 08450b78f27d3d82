"""The app's pages built as documents against real stores (no browser: the browser tests
open them in Chromium). Each of issue 26's items has a test here or there."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from bokeh.events import ButtonClick
from bokeh.models import ColumnDataSource, Div, GlyphRenderer, NumeralTickFormatter, Plot
from embedviz.server import AppState, make_server
from embedviz.server.app_doc import build_document, session_label
from embedviz.server.charts import Chart, line_columns
from embedviz.server.data import histogram_grid, log10, log10_ratio
from embedviz.server.messages import Messages, pick_language
from embedviz.server.pages import PAGES
from embedviz.server.pages.embeddings import align, neighbours

import embedviz
from embedviz.errors import EmbedvizError
from embedviz.records import EmbeddingSet, Finding, Projection, Summary, Update
from tests.recorded import record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("app") / "runs.db"
    ids = record(path)
    app = AppState(path, jobs=False)
    yield app, ids
    app.close()


def build(app, name, **kw):
    doc = Document()
    tab = build_document(doc, app, page=name, **kw)
    return doc, tab


def charts(tab) -> list[Chart]:
    page = tab.pages[tab.current]
    return list(page.charts)


def chart(tab, title: str) -> Chart:
    return next(c for c in charts(tab) if c.fig.title.text.startswith(title))


def line_data(c: Chart, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, y) of a chart's line, the front padding dropped."""
    for g in c.groups:
        for line in g.lines:
            if line.label == label:
                i = np.asarray(g.source.data[f"i{line.col}"], dtype=float)
                y = np.asarray(g.source.data[f"y{line.col}"], dtype=float)
                keep = ~np.isnan(i)
                return i[keep].astype(int), y[keep]
    raise KeyError(label)


def texts(doc) -> str:
    return "\n".join(m.text for m in doc.models if isinstance(m, Div))


def errors(doc) -> list[str]:
    return [m.text for m in doc.models if getattr(m, "name", None) == "page-error"]


def field_of(spec) -> str:
    """The column a glyph's x reads (a plain name, or a field with a transform)."""
    if isinstance(spec, str):
        return spec
    return spec["field"] if isinstance(spec, dict) else spec.field


def summary(m: float) -> Summary:
    return Summary.trusted(None, count=4, mean=0.0, stdev=m, mean_magnitude=m, min=-m, max=m,
                           nan_count=0, inf_count=0, zero_fraction=0.0)


def test_the_overview_shows_the_stored_score_and_ratios(recorded):
    app, ids = recorded
    doc, tab = build(app, "overview", sessions=[ids["mlp"]])
    assert errors(doc) == []
    stored = app.store.read_series(ids["mlp"], "score")
    its, y = line_data(chart(tab, "Score"), "digits-mlp")
    assert list(its) == list(stored.iterations) and np.allclose(y, stored.values)
    u = app.store.read_series(ids["mlp"], "update/0.weight/mean_magnitude").values
    p = app.store.read_series(ids["mlp"], "param/0.weight/mean_magnitude").values
    _, ratio = line_data(chart(tab, "log10 update:param"), "0.weight")
    assert np.allclose(ratio, np.log10(u / p))
    metric_lines = {line.label for line in chart(tab, "Metrics").lines}
    assert {"training score", "val_loss", "val_accuracy"} <= metric_lines
    assert "SGD" in texts(doc) and "6,570" in texts(doc)  # the model and training info
    downloads = [m for m in doc.models if type(m).__name__ == "Button" and m.label == "Download CSV"]
    assert len(downloads) == len([c for c in charts(tab) if c.lines])


def test_one_tick_streams_a_chart_in_one_message_per_session(recorded):
    """Lines of one session's reports share a source: a tick streams once per chart."""
    app, ids = recorded
    doc, tab = build(app, "overview", sessions=[ids["mlp"]])
    ratio = chart(tab, "log10 update:param")
    assert len(ratio.lines) >= 3 and len({id(g.source) for g in ratio.groups}) == 1


def test_several_sessions_overlay_every_chart_each_in_one_colour(recorded):
    """Per-layer charts compare the sessions too, and a session has one colour everywhere."""
    app, ids = recorded
    picked = [ids["mlp"], ids["bad"]]
    colours: dict[str, set] = {ids["mlp"]: set(), ids["bad"]: set()}
    for name in ("overview", "model", "system"):
        doc, tab = build(app, name, sessions=picked)
        assert errors(doc) == []
        for c in charts(tab):
            if not c.lines or c.fig.title.text.startswith("Metrics"):
                continue
            sessions = {g.session.id for g in c.groups}
            assert sessions == set(picked), c.fig.title.text
            for g in c.groups:
                colours[g.session.id] |= {line.color for line in g.lines}
    assert all(len(c) == 1 for c in colours.values()) and colours[ids["mlp"]] != colours[ids["bad"]]


def test_a_point_written_later_is_streamed_by_the_next_tick(recorded):
    app, ids = recorded
    doc, tab = build(app, "overview", sessions=[ids["mlp"]])
    its, _ = line_data(chart(tab, "Score"), "digits-mlp")
    last = int(its[-1])
    app.store.write([Update(ids["mlp"], "0", last + 10, score=float("nan")),
                     Update(ids["mlp"], "0", last + 20, score=0.5)])
    app.provider.refresh(force=True)
    tab.tick()
    score = chart(tab, "Score")
    its, y = line_data(score, "digits-mlp")
    assert list(its[-2:]) == [last + 10, last + 20]
    assert np.isnan(y[-2]) and y[-1] == 0.5  # NaN is a gap, never a 0 ...
    marks = score.groups[0].marks.data  # ... with a cross where the line broke off
    assert last + 10 in list(marks["i"]) and "NaN" in marks["kind"][-1]


def test_tabs_share_reads_and_a_quiet_tick_asks_the_store_once(recorded):
    """Twenty tabs on one chart cost the store one read per tick, and a tick with nothing
    new costs one cheap question."""
    app, ids = recorded
    tabs = [build(app, "overview", sessions=[ids["mlp"]])[1] for _ in range(20)]
    app.provider.refresh(force=True)
    for tab in tabs:
        tab.tick()
    before = app.provider.queries
    app.provider.refresh(force=True)
    for tab in tabs:
        tab.tick()
    assert app.provider.queries - before == 1  # (the change check: nothing was written)
    app.store.write([Update(ids["mlp"], "0", 10**6, score=0.4)])
    before = app.provider.queries
    app.provider.refresh(force=True)
    for tab in tabs:
        tab.tick()
    per_chart = app.provider.queries - before - 1
    n_groups = sum(len(c.groups) for c in charts(tabs[0]))
    assert per_chart <= n_groups + 3  # (one read per chart and session; sessions, findings)


def test_tabs_opened_at_different_times_are_answered_from_one_read(recorded):
    """Tabs whose cursors differ (opened before and after a write) still cost one store
    read per chart and tick, and each gets exactly the points it has not seen."""
    app, ids = recorded
    early = [build(app, "overview", sessions=[ids["mlp"]])[1] for _ in range(3)]
    app.store.write([Update(ids["mlp"], "0", 2 * 10**6, score=0.3)])
    app.provider.refresh(force=True)
    late = [build(app, "overview", sessions=[ids["mlp"]])[1] for _ in range(3)]
    app.store.write([Update(ids["mlp"], "0", 2 * 10**6 + 10, score=0.2)])
    before = app.provider.queries
    app.provider.refresh(force=True)
    for tab in early + late:
        tab.tick()
    n_groups = sum(len(c.groups) for c in charts(early[0]))
    assert app.provider.queries - before <= n_groups + 3
    for tab in early + late:
        its, y = line_data(chart(tab, "Score"), "digits-mlp")
        assert list(its[-2:]) == [2 * 10**6, 2 * 10**6 + 10] and list(y[-2:]) == [0.3, 0.2]


def test_zooming_in_rereads_the_window_and_reset_brings_the_overview_back(tmp_path):
    with AppState(tmp_path / "long.db", jobs=False) as app:
        s = app.store.create_session(name="long")
        n = 12_000
        rng = np.random.default_rng(0)
        values = rng.normal(size=n)
        app.store.write([Update(s.id, "0", i, score=float(values[i])) for i in range(n)])
        doc, tab = build(app, "overview")
        score = chart(tab, "Score")
        its, _ = line_data(score, "long")
        assert len(its) < 2000
        tab.on_range(type("E", (), {"x0": 1000.0, "x1": 1100.0})())
        its, y = line_data(score, "long")
        inside = (its >= 1000) & (its <= 1100)
        assert list(its[inside]) == list(range(1000, 1101))  # every point of the window
        assert np.allclose(y[inside], values[1000:1101])
        assert its[0] < 100 and its[-1] == n - 1  # the overview outside it
        assert "from=1000" in tab.url.text
        tab.on_range(type("E", (), {"x0": -100.0, "x1": n + 100.0})())  # reset
        its, _ = line_data(score, "long")
        assert len(its) < 2000 and its[-1] == n - 1
        assert "from=" not in tab.url.text  # (a link then follows the whole run)


def test_a_downsampled_ratio_keeps_an_update_spike_at_its_iteration(tmp_path):
    n, spike, broken = 6000, 4321, 5000
    upd = np.full(n, 1e-3)
    upd[spike], upd[broken] = 1.0, np.nan
    param = np.linspace(1.0, 2.0, n)
    with embedviz.open_store(tmp_path / "ratio.db") as store:
        s = store.create_session(name="r")
        store.write([Update(s.id, "0", i, summaries={"update/fc.weight": summary(float(upd[i])),
                                                     "param/fc.weight": summary(float(param[i]))})
                     for i in range(n)])
        keys = ("update/fc.weight/mean_magnitude", "param/fc.weight/mean_magnitude")
        got = store.read_many(s.id, keys, max_points=200)
    from embedviz.server.charts import Line

    cols = line_columns(Line("r", keys, log10_ratio, log=True), got)
    its = list(cols["i"])
    assert len(its) <= 200
    assert cols["raw"][its.index(spike)] == pytest.approx(np.log10(1.0 / param[spike]))
    assert broken in its and cols["bad"][its.index(broken)]
    healthy = np.isfinite(cols["y"]) & (cols["i"] != spike)
    assert np.allclose(cols["y"][healthy], np.log10(1e-3 / param[cols["i"][healthy]]), atol=1e-3)


def test_a_zero_on_a_log_chart_is_a_floor_marker_not_missing_data(tmp_path):
    """Gradients that become exactly 0 (a dead network) read as 0 on a log10 chart."""
    with AppState(tmp_path / "z.db", jobs=False) as app:
        s = app.store.create_session(name="dead")
        grads = [1e-2, 1e-3, 0.0, 0.0, float("nan"), 0.0]
        app.store.write([Update(s.id, "0", 10 * i, score=1.0, summaries={
            "param/fc.weight": summary(1.0), "gradient/fc.weight": summary(g),
            "update/fc.weight": summary(g)}) for i, g in enumerate(grads)])
        doc, tab = build(app, "overview")
        grad = chart(tab, "log10 stdev of gradients")
        floor = grad.groups[0].floor.data
        assert list(floor["i"]) == [20, 30, 50] and all("0" in k for k in floor["kind"])
        assert list(grad.groups[0].marks.data["i"]) == [40]  # the stored NaN: a cross
        its, y = line_data(grad, "fc.weight")
        assert list(its) == [0, 10, 20, 30, 40, 50] and np.allclose(y[:2], [-2, -3])
        floor_renderers = [r for r in grad.fig.renderers if r.y_range_name == "floor"]
        assert floor_renderers and not set(grad.y_range.renderers) & set(floor_renderers)


def test_the_model_page_charts_the_chosen_layer_with_histograms_over_time(recorded):
    app, ids = recorded
    doc, tab = build(app, "model", sessions=[ids["mlp"]])
    table = doc.get_model_by_name("layers")
    assert list(table.source.data["type"]) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    images = [m for m in doc.models if isinstance(m, GlyphRenderer)
              and type(m.glyph).__name__ == "Image"]
    assert len(images) == 4  # parameters, gradients, updates, activations of layer "0"
    n = len(app.store.read_histograms(ids["mlp"], "param/0.weight"))
    shapes = {np.asarray(src.data["image"][0]).shape for src in doc.models
              if isinstance(src, ColumnDataSource) and "image" in src.data}
    assert (64, n) in shapes
    titles = [m.title.text for m in doc.models if isinstance(m, Plot) and m.title is not None]
    top = [x for x in titles if "Update:param" in x or "Mean magnitude" in x]
    assert len(top) == 2 and top[0] != top[1]  # the two top charts say what each is


@pytest.mark.parametrize("mode", ["relative", "wall"])
def test_the_x_axis_switch_moves_every_chart_of_the_model_page(recorded, mode):
    app, ids = recorded
    doc, tab = build(app, "model", sessions=[ids["mlp"]])
    tab.xmode.active = ["iteration", "relative", "wall"].index(mode)
    assert "x=" + mode in tab.url.text
    sub = tab.pages["model"]
    lines = [r for r in doc.models if isinstance(r, GlyphRenderer) and type(r.glyph).__name__ == "Line"]
    assert lines
    for r in lines:
        assert field_of(r.glyph.x).startswith("t"), r.glyph.x
    images = [r for r in doc.models if isinstance(r, GlyphRenderer) and type(r.glyph).__name__ == "Image"]
    for r in images:
        x0 = r.glyph.x
        assert (x0 > 1e12) if mode == "wall" else (-5 < x0 < 600 and x0 != 0), x0
    assert sub is not None and errors(doc) == []


def test_a_finding_opens_the_model_page_of_its_own_session(recorded):
    """Two sessions picked, a finding of the second: Show opens that session's layer."""
    app, ids = recorded
    doc, tab = build(app, "health", sessions=[ids["bad"], ids["mlp"]])
    table = doc.get_model_by_name("findings-table")
    rows = table.source.data
    assert rows["severity"][0] == "error"  # worst first
    assert "fc ratio <b>high</b>: lower the lr" in rows["message"]  # (a cell: text)
    k = next(i for i, (s, layer) in enumerate(zip(rows["session_id"], rows["layer"]))
             if s == ids["mlp"] and layer == "2.weight")
    table.source.selected.indices = [k]
    show = doc.get_model_by_name("show-finding")
    assert not show.disabled
    show._trigger_event(ButtonClick(show))
    assert tab.current == "model" and tab.choice.value[0] == ids["mlp"]
    assert doc.get_model_by_name("layer").value == "2"
    assert "layer=2" in tab.url.text and "it=20" in tab.url.text
    title = next(m.text for m in doc.models if isinstance(m, Div) and "Layer graph" in m.text)
    assert "digits-mlp<" in title or title.endswith("digits-mlp")


def test_severities_are_coloured_and_a_session_without_findings_says_so(recorded):
    app, ids = recorded
    doc, tab = build(app, "health", sessions=[ids["mlp"]])
    table = doc.get_model_by_name("findings-table")
    assert table.columns[0].formatter.text_color == "color"
    assert set(table.source.data["color"]) == {"#d62728", "#e6550d"}
    doc, _ = build(app, "health", sessions=[ids["w2v"]])
    assert doc.get_model_by_name("no-findings").visible


def test_the_health_page_follows_the_store(recorded):
    app, ids = recorded
    doc, tab = build(app, "health", sessions=[ids["w2v"]])
    assert not doc.get_model_by_name("findings-table").visible
    app.store.add_finding(Finding(ids["w2v"], "loss_flat", "flat", iteration=3, severity="warning"))
    app.provider.refresh(force=True)
    tab.tick()
    table = doc.get_model_by_name("findings-table")
    assert table.visible and table.source.data["check"] == ["loss_flat"]


def test_findings_on_the_score_chart_are_labelled_and_placed_in_every_x_mode(recorded):
    app, ids = recorded
    for mode in ("iteration", "relative", "wall"):
        doc, tab = build(app, "overview", sessions=[ids["mlp"]], x=mode)
        score = chart(tab, "Score")
        src = next(m for m in doc.models if isinstance(m, ColumnDataSource) and "check" in m.data)
        assert set(src.data["check"]) == {"update_ratio_high", "nan"}
        assert all(src.data["message"]) and all(src.data["label"])
        hovers = [t for t in score.fig.tools if type(t).__name__ == "HoverTool"
                  and "@message" in str(t.tooltips)]
        assert hovers
        marker = next(r for r in score.fig.renderers if r.data_source is src
                      and type(r.glyph).__name__ == "Scatter")
        assert field_of(marker.glyph.x) == ("i" if mode == "iteration" else "t")
        its, _ = line_data(score, "digits-mlp")
        g = score.groups[0]
        walls = np.interp(src.data["i"], its, np.asarray(g.overview[0]["t"]))
        assert np.allclose(src.data["t"], walls)  # where the score was at that iteration


def test_the_url_says_what_is_shown_and_reopens_it(recorded):
    app, ids = recorded
    doc, tab = build(app, "model", sessions=[ids["mlp"], ids["bad"]])
    doc.get_model_by_name("layer").value = "4"
    tab.xmode.active = 1
    from urllib.parse import parse_qs

    q = parse_qs(tab.url.text)
    assert q["page"] == ["model"] and q["session"] == [ids["mlp"], ids["bad"]]
    assert q["layer"] == ["4"] and q["x"] == ["relative"]
    doc2 = Document()
    tab2 = build_document(doc2, app)  # (no URL: the defaults)
    assert tab2.current == "overview"
    from embedviz.server.app_doc import Tab

    tab3 = Tab(Document(), app, args={k: v for k, v in q.items()})
    tab3.build()
    assert tab3.current == "model" and tab3.choice.value == [ids["mlp"], ids["bad"]]
    assert tab3.doc.get_model_by_name("layer").value == "4" and tab3.mode == "relative"


def test_a_store_with_only_plot_vocab_output_opens_on_its_maps(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "vocab.db"
    with embedviz.open_store(path) as store:
        e = EmbeddingSet("vectors", [f"w{i}" for i in range(30)], rng.normal(size=(30, 5)))
        store.put_embedding(e)
        store.put_projection(Projection(e.key, "pca", coords=rng.normal(size=(30, 2)), state="done"))
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, None)
        assert tab.current == "embeddings" and errors(doc) == []
        assert len(doc.get_model_by_name("points").data["x"]) == 30
        for name in ("overview", "model", "system", "health"):
            doc, tab = build(app, name)
            assert errors(doc) == [] and "No training sessions" in texts(doc)


def test_a_large_map_sends_a_density_image_and_the_points_in_view(tmp_path):
    """Above LOD_POINTS the browser gets an image of the view and at most VIEW_POINTS points
    (the most important first); zoomed in, every point of the view; the search looks at
    every word on the server; a click names the word under the mouse, not a row."""
    from bokeh.events import RangesUpdate

    from embedviz.lod import LOD_POINTS, VIEW_POINTS

    rng = np.random.default_rng(0)
    n = LOD_POINTS + 10_000
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    words = [f"w{i}" for i in range(n)]
    words[n - 7] = "needle"
    path = tmp_path / "big.db"
    with embedviz.open_store(path) as store:
        e = EmbeddingSet("big", words, rng.normal(size=(n, 4)).astype(np.float32),
                         metadata={"count": list(range(n, 0, -1))})
        store.put_embedding(e)
        store.put_projection(Projection(e.key, "tsne", coords=coords, state="done"))
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, "embeddings")
        points, density = doc.get_model_by_name("points"), doc.get_model_by_name("density")
        assert len(points.data["x"]) == VIEW_POINTS and len(density.data["image"]) == 1
        image = density.data["image"][0]
        assert image.dtype == np.uint32 and (image >> 24).max() == 255  # (the densest: opaque)
        assert points.data["word"][0] == "w0"  # (the most frequent first)
        fig = doc.get_model_by_name("map")
        fig.x_range.update(start=0.0, end=0.05)
        fig.y_range.update(start=0.0, end=0.05)
        fig._trigger_event(RangesUpdate(fig, x0=0.0, x1=0.05, y0=0.0, y1=0.05))
        inside = np.flatnonzero((coords[:, 0] >= 0) & (coords[:, 0] <= 0.05)
                                & (coords[:, 1] >= 0) & (coords[:, 1] <= 0.05))
        assert 0 < len(inside) <= VIEW_POINTS
        assert sorted(points.data["word"]) == sorted(words[i] for i in inside)
        assert density.data["image"] == []
        row = 3
        points.selected.indices = [row]
        title = doc.get_model_by_name("neighbours-title").text
        assert points.data["word"][row] in title
        search = doc.get_model_by_name("search")
        search.value_input = "needle"
        assert doc.get_model_by_name("found").text.startswith("1 ")
        hits = doc.get_model_by_name("hits").data
        assert hits["x"] == [pytest.approx(float(coords[n - 7, 0]))]
        assert "needle" in points.data["word"]  # (the view moved to it)
        assert errors(doc) == []


def test_the_embeddings_page_searches_shows_neighbours_and_a_legend(recorded):
    app, ids = recorded
    doc, tab = build(app, "embeddings", sessions=[ids["w2v"]])
    points = doc.get_model_by_name("points")
    words = list(points.data["word"])
    assert len(words) == len(ids["words"]) and len(points.data["x"]) == len(words)
    search = doc.get_model_by_name("search")
    assert search.js_property_callbacks.get("change:value_input")  # (as the user types)
    points.selected.indices = [words.index("said")]
    near = doc.get_model_by_name("neighbours").data
    assert len(near["word"]) == 10 and "said" not in near["word"]
    assert list(near["cosine"]) == sorted(near["cosine"])
    assert "word=said" in tab.url.text
    points.selected.indices = [0, 1, 2]
    assert doc.get_model_by_name("selection").data["word"] == words[:3]
    assert "kNN kept" in doc.get_model_by_name("quality").text
    assert "ev-swatch" in doc.get_model_by_name("legend").text  # the colours' legend


def test_snapshots_walk_iterations_and_one_without_a_map_clears_what_was_shown(recorded):
    app, ids = recorded
    doc, tab = build(app, "embeddings", sessions=[ids["w2v"]])
    snap = doc.get_model_by_name("snapshot")
    sets = app.store.embeddings(ids["w2v"])
    assert snap.end == len(sets) - 1 and snap.value == len(sets) - 1
    assert f"{sets[-1].iteration}" in snap.title and f"{len(sets)} / {len(sets)}" in snap.title
    points = doc.get_model_by_name("points")
    points.selected.indices = [0]
    assert doc.get_model_by_name("neighbours").data["word"]
    snap.value = 0  # (snapshot 0 has no projection in this store)
    assert f"{sets[0].iteration}" in snap.title and f"1 / {len(sets)}" in snap.title
    assert len(points.data["x"]) == 0
    assert doc.get_model_by_name("neighbours").data["word"] == []
    assert doc.get_model_by_name("project-this").visible


def test_every_page_in_japanese_has_every_string_and_finding_in_japanese(recorded):
    app, ids = recorded
    for name in PAGES:
        doc, tab = build(app, name, lang="ja", sessions=[ids["mlp"], ids["bad"]])
        assert errors(doc) == [], name
        assert not tab.t.missing, (name, sorted(tab.t.missing))
    doc, tab = build(app, "health", lang="ja", sessions=[ids["bad"]])
    rows = doc.get_model_by_name("findings-table").source.data
    assert set(rows["severity"]) <= {"エラー", "警告", "情報"}
    generated = [m for m, c in zip(rows["message"], rows["check"]) if c == "dead_units"]
    assert generated and all("ReLU" in m and "出力" in m for m in generated)
    doc, tab = build(app, "overview", lang="ja", sessions=[ids["mlp"]])
    info = doc.get_model_by_name("info").text
    assert "オプティマイザ" in info and "開始" in info
    assert Messages("ja")("Overview") == "概要"
    assert pick_language(None, "ja-JP,ja;q=0.9,en;q=0.8") == "ja"
    assert pick_language("en", "ja") == "en" and pick_language(None, None) == "en"


def test_a_constant_learning_rate_gets_a_range_around_it(recorded):
    app, ids = recorded
    doc, tab = build(app, "overview", sessions=[ids["mlp"]])
    lr = chart(tab, "Learning rate")
    assert lr.y_range.default_span == pytest.approx(0.05)  # 0.1 +/- 0.025, not -0.9..1.1
    axis = chart(tab, "Score").fig.xaxis[0]
    assert isinstance(axis.formatter, NumeralTickFormatter)  # 20k, not 2.000e+4


def test_names_from_the_store_are_escaped_in_the_picker_and_the_pages(tmp_path):
    hostile = '<img src=x onerror="alert(1)">'
    with AppState(tmp_path / "x.db", jobs=False) as app:
        s = app.store.create_session(name=hostile, tags={hostile: hostile})
        app.store.write([Update(s.id, "0", 0, score=1.0), Update(s.id, "0", 10, score=0.5)])
        app.store.put_static(s.id, "0", {"hyperparameters": {hostile: hostile}})
        doc, tab = build(app, "overview")
        assert "<img" not in texts(doc) and "&lt;img src=x" in texts(doc)
        labels = [label for _, label in tab.choice.options]
        assert labels == [session_label(app.store.sessions()[0])] and "<img" not in labels[0]


def test_two_servers_in_one_process_own_their_stores(tmp_path):
    a, b = AppState(tmp_path / "a.db", jobs=False), AppState(tmp_path / "a.db", jobs=False)
    a.close()
    a.close()  # (idempotent)
    assert b.store.sessions() == []  # b's store is still open
    b.close()


def test_snapshots_are_aligned_so_words_do_not_jump():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 2))
    theta = 2.0
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = ref @ rot * 3 + 5
    labels = [f"w{i}" for i in range(50)]
    assert np.allclose(align(moved, labels, ref, labels), ref, atol=1e-9)


def test_neighbours_are_by_cosine():
    v = np.array([[1, 0], [2, 0.1], [0, 1], [-1, 0]], dtype=float)
    idx, dist = neighbours(v, 0, k=3)
    assert list(idx) == [1, 2, 3] and dist[0] < 0.01 and abs(dist[2] - 2) < 1e-9


def test_a_log_of_zero_and_a_stored_nan_are_told_apart(tmp_path):
    from embedviz.server.charts import Line

    with embedviz.open_store(tmp_path / "z.db") as store:
        s = store.create_session()
        store.write([Update(s.id, "0", i, score=v) for i, v in enumerate([1.0, 0.0, float("nan"), 10.0])])
        cols = line_columns(Line("s", ("score",), log10, log=True), store.read_many(s.id, ["score"]))
    assert list(cols["zero"]) == [False, True, False, False]
    assert list(cols["bad"]) == [False, False, True, False] and cols["height"][2] == 0.0
    assert np.isnan(cols["y"][1]) and cols["y"][3] == 1.0


def test_histograms_over_time_keep_their_mass_where_it_was():
    from embedviz.records import Histogram
    from embedviz.store.base import HistogramRecord

    recs = [HistogramRecord(i, 0.0, Histogram(np.linspace(-1, 1, 21), np.eye(20, dtype=int)[i] * 5))
            for i in range(20)]
    image, lo, hi, its = histogram_grid(recs, rows=20)
    assert image.shape == (20, 20) and np.allclose(image, np.eye(20))


def test_the_server_binds_localhost_and_wants_exact_origins(tmp_path):
    with pytest.raises(EmbedvizError, match="exact"):
        make_server(str(tmp_path / "r.db"), port=0, allow_websocket_origin=["*"])
    with pytest.raises(EmbedvizError, match="allow-websocket-origin"):
        make_server(str(tmp_path / "r.db"), port=0, host="0.0.0.0")


def deep_store(path, layers: int = 16, n: int = 60) -> str:
    """A session of ``layers`` layers: more lines than a legend lists."""
    rng = np.random.default_rng(0)
    with embedviz.open_store(path) as store:
        s = store.create_session(name="deep")
        store.write([Update(s.id, "0", i, score=1.0 / (1 + i), summaries={
            f"{kind}/l{k}.weight": summary(float(abs(rng.normal(1.0, 0.1)) * scale))
            for k in range(layers) for kind, scale in (("param", 1.0), ("update", 1e-3),
                                                      ("gradient", 1e-2))})
            for i in range(0, 10 * n, 10)])
        return s.id


def test_a_deep_model_draws_its_layers_as_one_multiline_that_follows_the_store(tmp_path):
    """Fifty layers are one MultiLine a chart (a renderer a line costs the browser ~4 ms
    each); new points are patched into its rows; zoom and x axis work on it."""
    with AppState(tmp_path / "deep.db", jobs=False) as app:
        sid = deep_store(tmp_path / "deep.db")
        doc, tab = build(app, "overview", sessions=[sid])
        ratio = chart(tab, "log10 update:param")
        g = ratio.groups[0]
        assert g.multi and len(g.lines) == 16
        assert len([r for r in ratio.fig.renderers if type(r.glyph).__name__ == "MultiLine"]) == 1
        assert not ratio.legend.visible
        data = g.source.data
        assert list(data["name"][:2]) == ["l0.weight", "l1.weight"] and g.fill[0] == 60
        row = np.asarray(data["ys"][3])
        assert np.allclose(row[:60], np.log10(1e-3), atol=0.2) and np.isnan(row[60:]).all()
        app.store.write([Update(sid, "0", 600, score=0.1, summaries={
            f"{kind}/l{k}.weight": summary(scale) for k in range(16)
            for kind, scale in (("param", 1.0), ("update", 1e-3), ("gradient", 1e-2))})])
        app.provider.refresh(force=True)
        tab.tick()
        assert g.fill[3] == 61 and np.asarray(g.source.data["xs"][3])[60] == 600
        assert np.asarray(g.source.data["ys"][3])[60] == pytest.approx(-3.0)
        tab.on_range(type("E", (), {"x0": 100.0, "x1": 200.0})())
        xs = np.asarray(g.source.data["xs"][0])
        assert {100.0, 110.0, 200.0} <= set(xs[np.isfinite(xs)].tolist())
        tab.xmode.active = 2  # wall time
        ratio = chart(tab, "log10 update:param")
        multi = next(r for r in ratio.fig.renderers if type(r.glyph).__name__ == "MultiLine")
        assert field_of(multi.glyph.xs) == "ts" and errors(doc) == []


def page_job_projection(tab) -> str:
    page = tab.pages["embeddings"].view
    return page.job.projection if page.job is not None else ""


def test_form_runs_are_projections_drawn_when_done_and_a_tsne_can_be_cancelled(tmp_path):
    """Form runs go to the server's pool: a top-N run is a set of its own (not a training
    snapshot), drawn once done without a reload; a running t-SNE is cancelled by its
    button and its partial map is kept as interrupted."""
    import time as _time

    path = tmp_path / "emb.db"
    ids = record(path)
    with AppState(path) as app:
        doc, tab = build(app, "embeddings", sessions=[ids["w2v"]])
        page = tab.pages["embeddings"]
        snapshots = doc.get_model_by_name("snapshot").end
        form = {m.title: m for m in doc.models if type(m).__name__ == "NumericInput"}
        doc.get_model_by_name("method").value = "pca"
        form["Top N words"].value = 50

        def run_until(states: tuple[str, ...], timeout: float = 120.0) -> str:
            end = _time.monotonic() + timeout
            while _time.monotonic() < end:
                app.provider.refresh(force=True)
                tab.tick()
                text = doc.get_model_by_name("status").text
                if any(text.startswith(s) for s in states) and not text.endswith(" 0%"):
                    return text
                _time.sleep(0.2)
            return doc.get_model_by_name("status").text

        doc.get_model_by_name("run")._trigger_event(ButtonClick(doc.get_model_by_name("run")))
        assert run_until(("done", "failed")).startswith("done")
        assert len(doc.get_model_by_name("points").data["x"]) == 50
        picked = doc.get_model_by_name("set")
        assert "(top 50" in dict(picked.options)[picked.value]
        assert [label for _, label in doc.get_model_by_name("projection").options] == ["pca"]
        picked.value = ids["w2v"]
        assert doc.get_model_by_name("snapshot").end == snapshots  # (not a snapshot)
        doc.get_model_by_name("method").value = "tsne"
        form["Top N words"].value = None
        form["Iterations"].value = 5000
        doc.get_model_by_name("converge").active = []  # (all 5000: long enough to cancel)
        doc.get_model_by_name("run")._trigger_event(ButtonClick(doc.get_model_by_name("run")))
        assert run_until(("running",), 60).startswith("running")  # (and past 0%)
        assert "running" in doc.get_model_by_name("quality").text  # (drawn as it converges)
        assert doc.get_model_by_name("projection").value == page_job_projection(tab)
        cancel = doc.get_model_by_name("cancel")
        assert not cancel.disabled
        cancel._trigger_event(ButtonClick(cancel))
        assert run_until(("cancelled", "done", "failed")).startswith("cancelled")
        assert page is tab.pages["embeddings"]
        last = app.store.embeddings(ids["w2v"])[-1].key  # (the set itself: no top N)
        states = [p.state for p in app.store.projections(last)]
        assert "interrupted" in states and "running" not in states


def test_a_line_of_one_point_is_a_dot_until_its_second_point_comes(tmp_path):
    with AppState(tmp_path / "one.db", jobs=False) as app:
        s = app.store.create_session(name="one")
        app.store.write([Update(s.id, "0", 7, score=1.5)])
        doc, tab = build(app, "overview")
        score = chart(tab, "Score")
        marks = score.groups[0].marks.data
        assert list(marks["i"]) == [7] and marks["marker"] == ["circle"] and marks["y"] == [1.5]
        app.store.write([Update(s.id, "0", 8, score=1.0)])
        app.provider.refresh(force=True)
        tab.tick()
        assert list(score.groups[0].marks.data["i"]) == []  # (a line now)


def test_the_floor_and_findings_stay_on_a_linear_scale_on_a_log_axis(recorded):
    """On a log-scale score chart the floor markers and finding markers still show: the
    floor range keeps a linear scale of its own."""
    app, ids = recorded
    doc, tab = build(app, "overview", sessions=[ids["mlp"]], log="1")
    score = chart(tab, "Score")
    assert score.log_axis and type(score.fig.y_scale).__name__ == "LogScale"
    assert type(score.fig.extra_y_scales["floor"]).__name__ == "LinearScale"


def test_a_link_reopens_a_search_and_a_clicked_word(recorded):
    app, ids = recorded
    doc, tab = build(app, "embeddings", sessions=[ids["w2v"]], q="sai", word="said")
    assert len(doc.get_model_by_name("hits").data["x"]) >= 1
    assert "match" in doc.get_model_by_name("found").text
    near = doc.get_model_by_name("neighbours").data
    assert len(near["word"]) == 10 and "said" in doc.get_model_by_name("neighbours-title").text


def test_the_form_shows_a_stored_map_made_with_the_same_parameters(recorded):
    """Running what is already stored (the snapshot's t-SNE of 400 iterations) shows it
    instead of computing it again."""
    app, ids = recorded
    from embedviz.server.jobs import Jobs

    with Jobs(app.store) as jobs:
        doc = Document()
        tab = build_document(doc, app, page="embeddings", sessions=[ids["w2v"]])
        page = tab.pages["embeddings"].view
        page.ctx.jobs = jobs
        before = len(app.store.projections())
        form = {m.title: m for m in doc.models if type(m).__name__ == "NumericInput"}
        form["Iterations"].value = 400
        page.start()
        assert page.job is None and "Already projected" in doc.get_model_by_name("status").text
        assert len(app.store.projections()) == before


def test_a_numeric_column_with_nan_colours_those_points_grey():
    from embedviz.server.pages.embeddings import MISSING, colours

    cols, legend = colours([1.0, float("nan"), 3.0])
    assert cols[1] == MISSING and cols[0] != MISSING and ("NaN", MISSING) in legend


def test_a_session_keeps_its_colour_whichever_is_picked_first(recorded):
    app, ids = recorded

    def colours(order):
        doc, tab = build(app, "overview", sessions=order)
        return {g.session.id: g.lines[0].color for g in chart(tab, "Score").groups}
    assert colours([ids["bad"], ids["mlp"]]) == colours([ids["mlp"], ids["bad"]])


def test_the_layer_table_runs_in_forward_order_and_opens_on_a_layer_with_parameters(tmp_path):
    with AppState(tmp_path / "order.db", jobs=False) as app:
        s = app.store.create_session(name="lm")
        app.store.put_static(s.id, "0", {"model": {"layers": [
            {"name": "drop", "type": "Dropout", "params": {}},
            {"name": "encoder", "type": "Embedding", "params": {"weight": [100, 8]}},
            {"name": "decoder", "type": "Linear", "params": {"weight": [100, 8], "bias": [100]}}],
            "graph": {"execution_order": ["encoder", "drop", "decoder"]}}})
        app.store.write([Update(s.id, "0", i, score=1.0, summaries={
            "param/encoder.weight": summary(1.0), "param/decoder.weight": summary(1.0),
            "activation/drop": summary(1.0)}) for i in range(3)])
        doc, tab = build(app, "model")
        assert list(doc.get_model_by_name("layers").source.data["name"]) == ["encoder", "drop", "decoder"]
        assert doc.get_model_by_name("layer").value == "encoder"


@pytest.mark.parametrize("kind", ["readonly", "new"])
def test_serve_takes_a_path_with_options_and_a_store_not_made_yet(tmp_path, kind):
    import socket
    import subprocess
    import sys

    path = tmp_path / "runs.db"
    if kind == "readonly":
        with embedviz.open_store(path) as store:
            store.create_session(name="x")
        target = f"{path}?readonly=1"
    else:
        target = str(path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "embedviz.cli", "serve", target, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2 if kind == "new" else 1)]
        assert "serving" in lines[-1], lines
        if kind == "new":
            assert "new, empty store" in lines[0]
    finally:
        proc.terminate()
        proc.wait(30)


# ---------------------------------------------------------------------------- issue 27: the app
def loop_store(path, *, updates: bool = True) -> str:
    """A session recorded as a hand-written loop is: no optimizer (updates from parameter
    changes, or none at all from an older listener), no lr, activations=False,
    histograms=False, on the CPU, no batch_size=; the cost budget spaced the reports to
    every 50 iterations (asked: 10); a GradScaler skipped steps."""
    with embedviz.open_store(path) as store:
        s = store.create_session(name="word-lm")
        store.put_static(s.id, "0", {
            "model": {"type": "RNNModel", "n_params": 20, "layers": [
                {"name": "fc", "type": "Linear", "n_params": 20, "params": {"weight": [4, 5]}}]},
            "listener": {"frequency": 10, "updates": "parameter change" if updates else None,
                         "lr": None, "activations": False, "histograms": False},
            "hardware": {"devices": ["cpu"]}})
        store.write([Update(s.id, "0", i, score=1.0 / (1 + i), scalars={
            "memory/rss_bytes": 1e8, "timing/iteration_ms": 2.0, "monitor/report_every": 50.0,
            "amp/skipped_steps": float(i // 100), "amp/scale": 2.0 ** (16 - i // 100)},
            summaries={"param/fc.weight": summary(1.0), "gradient/fc.weight": summary(0.1),
                       **({"update/fc.weight": summary(1e-3)} if updates else {})})
            for i in range(0, 500, 50)])
        return s.id


def note_text(doc, name: str) -> str:
    got = doc.get_model_by_name(name)
    return got.text if got is not None else ""


def test_a_chart_empty_for_want_of_a_recording_says_why_and_how_to_record_it(tmp_path):
    path = tmp_path / "loop.db"
    sid = loop_store(path)
    old = loop_store(path, updates=False)
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, "overview", sessions=[sid])
        assert errors(doc) == []
        assert "No optimizer attached: updates are measured from parameter changes; pass lr= " \
               "to step() for the learning rate." in note_text(doc, "updates-note")
        assert chart(tab, "log10 update:param").lines  # (drawn: the note says how measured)
        shown = texts(doc)
        assert "No learning rate recorded: attach the optimizer (listener.attach(model, " \
               "optimizer)) or pass lr= to listener.step()." in shown
        assert "activations=False" in shown
        doc, tab = build(app, "model", sessions=[sid])
        assert errors(doc) == []
        assert "histograms=False" in note_text(doc, "histograms-note")
        assert "activations=False" in note_text(doc, "activations-note")
        assert "No optimizer attached" in note_text(doc, "updates-note")
        assert "No learning rate recorded" in texts(doc)
        doc, tab = build(app, "system", sessions=[sid])
        assert errors(doc) == []
        assert note_text(doc, "spaced-note") == esc_(
            "Reports were spaced to every 50 iterations (asked: every 10) to keep the monitor "
            "within its cost budget.")
        assert "the model ran on the CPU" in note_text(doc, "device-note")
        assert "pass batch_size= to listener.step()" in note_text(doc, "examples-note")
        skipped = chart(tab, "Mixed precision: steps skipped")
        its, y = line_data(skipped, "skipped_steps")
        assert list(y) == [i // 100 for i in its]
        assert chart(tab, "Mixed precision: loss scale").log_axis
        # an older listener without an optimizer: no update series at all
        doc, tab = build(app, "overview", sessions=[old])
        assert "No updates recorded: attach the optimizer (listener.attach(model, optimizer))" \
               in texts(doc) and doc.get_model_by_name("updates-note") is None
        # both picked: each reason once, named by the session it is about
        doc, tab = build(app, "overview", sessions=[sid, old])
        assert texts(doc).count("No learning rate recorded") == 1
        for name in ("overview", "model", "system"):  # (every new sentence in Japanese)
            doc, tab = build(app, name, lang="ja", sessions=[sid, old])
            assert errors(doc) == [] and not tab.t.missing, (name, tab.t.missing)
        doc, tab = build(app, "system", lang="ja", sessions=[sid])
        assert "50 イテレーションごと" in note_text(doc, "spaced-note")


def esc_(text: str) -> str:
    """A note's HTML for ``text`` (notes escape what they say)."""
    from embedviz.server.page import esc

    return f'<p class="ev-hint">{esc(text)}</p>'


def ranks_store(path, layers: int = 1, n: int = 12) -> str:
    """A torch.distributed job of two ranks, "0" and "1": rank 1's updates twice rank 0's."""
    with embedviz.open_store(path) as store:
        s = store.create_session(name="ddp")
        for w in ("0", "1"):
            store.put_static(s.id, w, {"distributed": {"rank": int(w), "world_size": 2,
                                                       "backend": "gloo"}})
        store.write([Update(s.id, w, i, score=(1.0 + int(w)) / (1 + i), summaries={
            f"{kind}/l{k}.weight": summary(scale * (1 + int(w)))
            for k in range(layers) for kind, scale in (("param", 1.0), ("update", 1e-3))})
            for i in range(0, 10 * n, 10) for w in ("0", "1")])
        return s.id


def test_all_ranks_are_drawn_as_their_median_and_spread_and_followed_live(tmp_path):
    path = tmp_path / "ddp.db"
    sid = ranks_store(path)
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, "overview", sessions=[sid])
        assert ("*", "all workers") in list(tab.worker.options) and tab.worker.visible
        assert [g.worker for g in chart(tab, "log10 update:param").groups] == ["0"]  # (one rank)
        doc, tab = build(app, "overview", sessions=[sid], worker="*")
        assert errors(doc) == [] and "worker=%2A" in tab.url.text
        assert build(app, "overview", sessions=[sid], worker="all")[1].worker.value == "*"
        assert "median across the workers" in note_text(doc, "spread-note")
        ratio = chart(tab, "log10 update:param")
        (g,) = ratio.groups
        assert g.workers == ("0", "1")
        data = g.source.data
        # ratio of rank 0: 1e-3 / 1, of rank 1: 2e-3 / 2: the same; the score differs
        assert np.allclose(data["y0"], -3.0) and np.allclose(data["lo0"], -3.0)
        bands = [r for r in ratio.fig.renderers if type(r.glyph).__name__ == "VArea"]
        assert len(bands) == 1 and bands[0].glyph.y1 == "lo0" and bands[0].glyph.y2 == "hi0"
        score = chart(tab, "Score")
        sg = score.groups[0]
        r0 = app.store.read_series(sid, "score", worker="0").values
        r1 = app.store.read_series(sid, "score", worker="1").values
        assert np.allclose(sg.source.data["y0"], (r0 + r1) / 2)
        assert np.allclose(sg.source.data["lo0"], r0) and np.allclose(sg.source.data["hi0"], r1)
        # live: a row once every rank has reported it
        before = len(sg.source.data["i0"])
        app.store.write([Update(sid, "0", 120, score=0.5)])
        app.provider.refresh(force=True)
        tab.tick()
        assert len(sg.source.data["i0"]) == before  # (rank 1 has not reached 120)
        app.store.write([Update(sid, "1", 120, score=1.5)])
        app.provider.refresh(force=True)
        tab.polled = -float("inf")  # (its turn: two ticks within a pace are one)
        tab.tick()
        assert len(sg.source.data["i0"]) == before + 1
        assert sg.source.data["i0"][-1] == 120 and sg.source.data["y0"][-1] == pytest.approx(1.0)
        assert (sg.source.data["lo0"][-1], sg.source.data["hi0"][-1]) == (0.5, 1.5)
        tab.xmode.active = 1  # (the band follows the x axis)
        ratio = chart(tab, "log10 update:param")
        band = next(r for r in ratio.fig.renderers if type(r.glyph).__name__ == "VArea")
        assert field_of(band.glyph.x) == "t0"
        for name in ("model", "system"):
            doc, tab = build(app, name, sessions=[sid], worker="*")
            assert errors(doc) == [], name


def test_a_deep_spread_draws_its_bands_as_one_patches(tmp_path):
    path = tmp_path / "deep-ddp.db"
    sid = ranks_store(path, layers=14)
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, "overview", sessions=[sid], worker="*")
        ratio = chart(tab, "log10 update:param")
        g = ratio.groups[0]
        assert g.multi and g.workers == ("0", "1")
        assert len(g.band.data["xs"]) == 14 and len(g.band.data["xs"][0]) == 24  # (there and back)
        assert type(g.band_renderer.glyph).__name__ == "Patches"
        app.store.write([Update(sid, w, 120, summaries={
            f"{kind}/l{k}.weight": summary(1.0) for k in range(14) for kind in ("param", "update")})
            for w in ("0", "1")])
        app.provider.refresh(force=True)
        tab.tick()
        assert len(g.band.data["xs"][0]) == 26 and errors(doc) == []


def gan_store(path) -> str:
    """A GAN: workers "G" and "D" of one session whose losses move against each other."""
    with embedviz.open_store(path) as store:
        s = store.create_session(name="dcgan", info={"objective": "adversarial"})
        store.write([Update(s.id, w, i, score=(1.0 + 0.5 * np.sin(i / 20)) * (1 if w == "G" else -1) + 2,
                            summaries={"param/main.0.weight": summary(1.0),
                                       "update/main.0.weight": summary(1e-3)})
                     for i in range(0, 200, 10) for w in ("G", "D")])
        store.add_finding(Finding(s.id, "loss_flat", "the loss is flat", iteration=100, worker="D",
                                  severity="warning"))
        return s.id


def test_a_gan_shows_both_workers_scores_its_objective_and_names_the_worker_of_a_finding(tmp_path):
    path = tmp_path / "gan.db"
    sid = gan_store(path)
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, "overview", sessions=[sid])
        assert errors(doc) == []
        score = chart(tab, "Score")
        assert [line.label for line in score.lines] == ["dcgan: worker D", "dcgan: worker G"]
        its, y = line_data(score, "dcgan: worker G")
        assert np.allclose(y, app.store.read_series(sid, "score", worker="G").values)
        assert "Adversarial objective" in note_text(doc, "adversarial-note")
        assert "D, G" in note_text(doc, "adversarial-note")
        marks = next(src for src in doc.models if isinstance(src, ColumnDataSource)
                     and "loss_flat [D]" in list(src.data.get("check", [])))
        assert marks.data["label"] == ["warning: loss_flat [worker D]"]
        doc, tab = build(app, "health", sessions=[sid])
        doc.get_model_by_name("findings").selected.indices = [0]
        assert "[worker D]" in note_text(doc, "finding")
        doc, tab = build(app, "overview", lang="ja", sessions=[sid])
        assert "敵対的" in note_text(doc, "adversarial-note") and not tab.t.missing
    with embedviz.open_store(tmp_path / "untold.db") as store:  # (not told: recognised)
        s = store.create_session(name="gan")
        store.write([Update(s.id, w, i, score=2 + (1 if w == "G" else -1) * np.sin(i / 7.0))
                     for i in range(40) for w in ("G", "D")])
        calm = store.create_session(name="two-models")  # (falling together: not a game)
        store.write([Update(calm.id, w, i, score=3.0 / (1 + i) + (0.1 if w == "a" else 0.0))
                     for i in range(40) for w in ("a", "b")])
    with AppState(tmp_path / "untold.db", jobs=False) as app:
        doc, tab = build(app, "overview", sessions=[s.id])
        assert "Adversarial objective" in note_text(doc, "adversarial-note")
        doc, tab = build(app, "overview", sessions=[calm.id])
        assert doc.get_model_by_name("adversarial-note") is None
        assert len(chart(tab, "Score").lines) == 2  # (each model's score all the same)


def test_a_session_with_two_families_of_snapshots_gets_a_slider_each_in_iteration_order(tmp_path):
    from embedviz.server.pages.embeddings import families

    rng = np.random.default_rng(0)
    path = tmp_path / "fam.db"
    words = [f"w{i}" for i in range(12)]
    with embedviz.open_store(path) as store:
        s = store.create_session(name="run 3")
        for it in (300, 100, 200):  # (written out of order)
            for name in ("run 3: encoder", "run 3: fc2 outputs"):
                e = EmbeddingSet(name, words, rng.normal(size=(12, 4)), session=s.id, iteration=it)
                store.put_embedding(e)
                store.put_projection(Projection(e.key, "pca", coords=rng.normal(size=(12, 2)),
                                                state="done"))
        old = store.create_session(name="lee")  # (word2vec's older names: one family)
        for it in (1, 2):
            store.put_embedding(EmbeddingSet(f"lee, epoch {it}", words, rng.normal(size=(12, 4)),
                                             session=old.id, iteration=it))
        fams = families(store.embeddings())
    assert set(fams) == {f"{old.id}/lee", f"{s.id}/run 3: encoder", f"{s.id}/run 3: fc2 outputs"}
    assert [e.iteration for e in fams[f"{s.id}/run 3: encoder"]] == [100, 200, 300]
    with AppState(path, jobs=False) as app:
        doc, tab = build(app, "embeddings", sessions=[s.id])
        assert errors(doc) == []
        pick, snap = doc.get_model_by_name("set"), doc.get_model_by_name("snapshot")
        labels = dict(pick.options)
        assert labels[f"{s.id}/run 3: encoder"] == "run 3: encoder (12 words, 3 snapshots)"
        assert labels[f"{s.id}/run 3: fc2 outputs"] == "run 3: fc2 outputs (12 words, 3 snapshots)"
        assert pick.value == f"{s.id}/run 3: encoder" and snap.end == 2
        for fam in (f"{s.id}/run 3: encoder", f"{s.id}/run 3: fc2 outputs"):
            pick.value = fam
            seen = []
            for k in range(3):
                snap.value = k
                seen.append(snap.title)
                assert len(doc.get_model_by_name("points").data["x"]) == 12
            assert [t.split("(")[0] for t in seen] == [
                f"Snapshot: iteration {it} " for it in (100, 200, 300)]
            assert fam.split("/", 1)[1] in doc.get_model_by_name("quality").text
        doc, tab = build(app, "embeddings", sessions=[s.id], set=s.id)  # (an older link)
        assert doc.get_model_by_name("set").value == f"{s.id}/run 3: encoder"
        doc, tab = build(app, "embeddings", sessions=[old.id])
        assert doc.get_model_by_name("snapshot").end == 1
        assert dict(doc.get_model_by_name("set").options)[f"{old.id}/lee"].startswith("lee (")

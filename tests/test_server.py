"""The app's pages built as documents against a real store with recorded sessions (no
browser: tests/test_server_browser.py opens them in Chromium)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document
from bokeh.events import ButtonClick
from bokeh.models import ColumnDataSource, DataTable, Div
from embedviz.server import make_server
from embedviz.server.app_doc import build_document
from embedviz.server.data import ema, histogram_grid
from embedviz.server.embeddings import align, neighbours
from embedviz.server.messages import JA, Messages, pick_language

import embedviz
from embedviz.errors import EmbedvizError
from embedviz.records import Update
from tests.recorded import record


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("app") / "runs.db"
    ids = record(path)
    store = embedviz.open_store(path)
    yield store, ids
    store.close()


def page(store, name, **kw):
    doc = Document()
    parts = build_document(doc, store, page=name, **kw)
    return doc, parts


def sources(doc) -> list[ColumnDataSource]:
    return [m for m in doc.models if isinstance(m, ColumnDataSource)]


def texts(doc) -> str:
    return "\n".join(m.text for m in doc.models if isinstance(m, Div))


def test_the_overview_shows_the_stored_score_and_ratios(recorded):
    store, ids = recorded
    doc, parts = page(store, "overview", sessions=[ids["mlp"]])
    stored = store.read_series(ids["mlp"], "score")
    lines = parts["pages"]["overview"].lines
    score = [src for tail, src in lines.items if tail.keys == ("score",)][0]
    assert list(score.data["iteration"]) == list(stored.iterations)
    assert np.allclose(score.data["y"], stored.values)
    ratio = [(tail, src) for tail, src in lines.items if tail.keys[0] == "update/0.weight/mean_magnitude"
             and len(tail.keys) == 2][0][1]
    u = store.read_series(ids["mlp"], "update/0.weight/mean_magnitude").values
    p = store.read_series(ids["mlp"], "param/0.weight/mean_magnitude").values
    assert np.allclose(ratio.data["y"], np.log10(u / p))
    keys = {tail.keys[0] for tail, _ in lines.items}
    assert {"metric/val_loss", "metric/val_accuracy", "lr/0"} <= keys
    assert "SGD" in texts(doc) and "6,570" in texts(doc)  # the model and training info
    downloads = [m for m in doc.models if type(m).__name__ == "Button" and m.label == "Download CSV"]
    assert len(downloads) == len(lines.figures)  # every chart's lines as CSV


def test_sessions_picked_together_are_overlaid(recorded):
    store, ids = recorded
    doc, parts = page(store, "overview", sessions=[ids["mlp"]])
    parts["sessions"].value = [ids["mlp"], ids["w2v"]]  # as the picker does
    lines = parts["pages"]["overview"].lines
    assert {t.session for t, _ in lines.items if t.keys == ("score",)} == {ids["mlp"], ids["w2v"]}


def test_a_point_written_later_is_streamed_by_the_next_tick(recorded, tmp_path):
    store, ids = recorded
    doc, parts = page(store, "overview", sessions=[ids["mlp"]])
    lines = parts["pages"]["overview"].lines
    score = [src for tail, src in lines.items if tail.keys == ("score",)][0]
    before = len(score.data["iteration"])
    last = int(score.data["iteration"][-1])
    store.write([Update(ids["mlp"], "0", last + 10, score=float("nan")),
                 Update(ids["mlp"], "0", last + 20, score=0.5)])
    parts["tick"]()
    assert len(score.data["iteration"]) == before + 2
    # NaN is a gap with a marker, never a 0
    assert np.isnan(score.data["y"][-2]) and np.isfinite(score.data["mark"][-2])
    assert score.data["y"][-1] == 0.5 and np.isnan(score.data["mark"][-1])
    assert np.isfinite(score.data["ys"][-1])  # the smoothed line goes on past the gap


def test_zooming_in_rereads_the_visible_range_at_full_resolution(tmp_path):
    from embedviz.server.data import MAX_POINTS

    with embedviz.open_store(tmp_path / "long.db") as store:
        s = store.create_session(name="long")
        n = 3 * MAX_POINTS
        rng = np.random.default_rng(0)
        store.write([Update(s.id, "0", i, score=float(rng.normal())) for i in range(n)])
        doc, parts = page(store, "overview")
        lines = parts["pages"]["overview"].lines
        tail, score = [(t_, src) for t_, src in lines.items if t_.keys == ("score",)][0]
        assert tail.downsampled and len(score.data["iteration"]) < n
        fig = lines.figures[0]
        lines.zoom(fig, "iteration", 1000, 1500)
        its = list(score.data["iteration"])
        assert its == list(range(999, 1502))  # every point, one beyond each edge
        assert np.allclose(score.data["y"], store.read_series(s.id, "score").values[999:1502])
        lines.zoom(fig, "iteration", -10, n + 10)  # reset: the whole line, downsampled again
        assert len(score.data["iteration"]) <= MAX_POINTS and score.data["iteration"][-1] == n - 1


def test_a_downsampled_ratio_keeps_an_update_spike_at_its_iteration(tmp_path):
    from embedviz.server.data import Tail, log10_ratio

    from embedviz.records import Summary

    def summary(m):
        return Summary.trusted(None, count=4, mean=0.0, stdev=m, mean_magnitude=m, min=-m, max=m,
                               nan_count=0, inf_count=0, zero_fraction=0.0)

    n, spike, broken = 6000, 4321, 5000
    upd = np.full(n, 1e-3)
    upd[spike], upd[broken] = 1.0, np.nan
    param = np.linspace(1.0, 2.0, n)  # (slowly growing weights)
    with embedviz.open_store(tmp_path / "ratio.db") as store:
        s = store.create_session(name="r")
        store.write([Update(s.id, "0", i, summaries={"update/fc.weight": summary(float(upd[i])),
                                                     "param/fc.weight": summary(float(param[i]))})
                     for i in range(n)])
        tail = Tail(s.id, None, ("update/fc.weight/mean_magnitude", "param/fc.weight/mean_magnitude"),
                    log10_ratio)
        cols = tail.read(store, max_points=200)
    assert len(cols["iteration"]) <= 200 and tail.downsampled
    at = list(cols["iteration"]).index(spike)
    assert cols["raw"][at] == pytest.approx(np.log10(1.0 / param[spike]))
    assert broken in cols["iteration"] and np.isnan(cols["y"][list(cols["iteration"]).index(broken)])
    healthy = np.isfinite(cols["raw"]) & (cols["iteration"] != spike)
    assert np.allclose(cols["raw"][healthy], np.log10(1e-3 / param[cols["iteration"][healthy]]), atol=1e-3)


def test_the_model_page_charts_the_chosen_layer_with_histograms_over_time(recorded):
    store, ids = recorded
    doc, parts = page(store, "model", sessions=[ids["mlp"]])
    table = [m for m in doc.models if isinstance(m, DataTable) and m.name == "layers"][0]
    assert list(table.source.data["type"]) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    images = [m for m in doc.models if type(m).__name__ == "GlyphRenderer"
              and type(m.glyph).__name__ == "Image"]
    assert len(images) == 4  # parameters, gradients, updates, activations of layer "0"
    n = len(store.read_histograms(ids["mlp"], "param/0.weight"))
    shapes = {np.asarray(src.data["image"][0]).shape for src in sources(doc) if "image" in src.data}
    assert (64, n) in shapes


def test_a_finding_opens_the_model_page_at_its_layer(recorded):
    store, ids = recorded
    doc, parts = page(store, "health", sessions=[ids["mlp"]])
    table = [m for m in doc.models if isinstance(m, DataTable)][0]
    assert list(table.source.data["severity"]) == ["error", "warning"]  # worst first
    assert table.source.data["message"][1] == "fc ratio <b>high</b>: lower the lr"  # (a cell: text)
    table.source.selected.indices = [1]
    show = doc.get_model_by_name("show-finding")
    assert not show.disabled
    show._trigger_event(ButtonClick(show))
    assert parts["tabs"].active == 1  # the model page
    pick = [m for m in doc.models if getattr(m, "name", None) == "layer"][0]
    assert pick.value == "2"


def test_a_session_without_findings_says_so(recorded):
    store, ids = recorded
    doc, _ = page(store, "health", sessions=[ids["w2v"]])
    assert "No findings in the store" in texts(doc)


def test_session_names_and_words_are_escaped(tmp_path):
    with embedviz.open_store(tmp_path / "x.db") as store:
        s = store.create_session(name="<img src=x onerror=alert(1)>")
        store.write([Update(s.id, "0", 0, score=1.0), Update(s.id, "0", 10, score=0.5)])
        doc, _ = page(store, "overview")
        html = texts(doc)
        assert "<img" not in html and "&lt;img src=x" in html


def test_search_and_a_clicked_word_give_its_neighbours(recorded):
    store, ids = recorded
    doc, _ = page(store, "embeddings", sessions=[ids["w2v"]])
    points = doc.get_model_by_name("points")
    words = list(points.data["word"])
    assert len(words) == len(ids["words"]) and len(points.data["x"]) == len(words)
    doc.get_model_by_name("search").value = "said"
    assert len(doc.get_model_by_name("hits").data["x"]) >= 1
    assert "matches" in doc.get_model_by_name("found").text
    points.selected.indices = [words.index("said")]
    near = doc.get_model_by_name("neighbours").data
    assert len(near["word"]) == 10 and "said" not in near["word"]
    assert list(near["cosine"]) == sorted(near["cosine"])
    points.selected.indices = [0, 1, 2]
    assert doc.get_model_by_name("selection").data["word"] == words[:3]
    assert "kNN kept" in doc.get_model_by_name("quality").text


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


def test_a_log_of_zero_is_a_gap_and_a_stored_nan_a_marker(tmp_path):
    from embedviz.server.data import Tail, log10

    with embedviz.open_store(tmp_path / "z.db") as store:
        s = store.create_session()
        store.write([Update(s.id, "0", i, score=v) for i, v in enumerate([1.0, 0.0, float("nan"), 10.0])])
        cols = Tail(s.id, None, ("score",), log10).read(store)
        assert np.isnan(cols["y"][1]) and np.isnan(cols["mark"][1])  # log10(0): a gap
        assert np.isnan(cols["y"][2]) and cols["mark"][2] == 0.0  # NaN stored: marked
        assert cols["y"][3] == 1.0


def test_smoothing_is_tensorboards_debiased_average():
    y = np.array([1.0, 1.0, np.nan, 1.0])
    s = ema(y, 0.9)
    assert s[0] == pytest.approx(1.0) and np.isnan(s[2]) and s[3] == pytest.approx(1.0)


def test_histograms_over_time_keep_their_mass_where_it_was():
    from embedviz.records import Histogram
    from embedviz.store.base import HistogramRecord

    recs = [HistogramRecord(i, 0.0, Histogram(np.linspace(-1, 1, 21), np.eye(20, dtype=int)[i] * 5))
            for i in range(20)]
    image, lo, hi, its = histogram_grid(recs, rows=20)
    assert image.shape == (20, 20) and np.allclose(image, np.eye(20))


def test_every_page_string_has_its_japanese_form():
    used = set()
    for path in (Path(__file__).parents[1] / "server").glob("*.py"):
        used |= set(re.findall(r'\bt\("((?:[^"\\]|\\.)+)"\)', path.read_text(encoding="utf-8")))
    missing = sorted(u for u in used if u not in JA)
    assert not missing, missing
    assert Messages("ja")("Overview") == "概要"
    assert pick_language(None, "ja-JP,ja;q=0.9,en;q=0.8") == "ja"
    assert pick_language("en", "ja") == "en" and pick_language(None, None) == "en"


def test_the_japanese_page_builds(recorded):
    store, ids = recorded
    doc, parts = page(store, "overview", lang="ja", sessions=[ids["mlp"]])
    assert parts["tabs"].labels[:2] == ["概要", "モデル"]


def test_the_server_binds_localhost_and_wants_exact_origins(tmp_path):
    with pytest.raises(EmbedvizError, match="exact"):
        make_server(str(tmp_path / "r.db"), port=0, allow_websocket_origin=["*"])
    with pytest.raises(EmbedvizError, match="allow-websocket-origin"):
        make_server(str(tmp_path / "r.db"), port=0, host="0.0.0.0")

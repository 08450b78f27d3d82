"""The store contract: every backend passes the same suite."""

from __future__ import annotations

import math

import numpy as np
import pytest

import embedviz
from embedviz.records import (
    EmbeddingSet,
    Finding,
    Histogram,
    Metric,
    Projection,
    Session,
    Static,
    Summary,
    Update,
)
from embedviz.store import codec
from tests.conftest import make_update


def test_sessions_list_workers_iteration_range_and_last_update(store):
    rng = np.random.default_rng(0)
    store.create_session("a", name="baseline", tags={"lr": 0.1})
    store.create_session("b")
    store.write([make_update("a", i, rng, worker=w) for w in ("0", "1") for i in (10, 20, 30)])
    store.put_static("a", "0", {"layers": [{"name": "fc0", "params": 12}]})
    sessions = {s.id: s for s in store.sessions()}
    assert set(sessions) == {"a", "b"}
    a = sessions["a"]
    assert a.name == "baseline" and a.tags == {"lr": 0.1}
    assert [w.worker for w in a.workers] == ["0", "1"]
    assert [(w.first_iteration, w.last_iteration, w.n_updates) for w in a.workers] == [(10, 30, 3)] * 2
    assert a.workers[0].has_static and not a.workers[1].has_static
    assert a.last_update is not None and sessions["b"].workers == []
    assert store.static("a", "0") == {"layers": [{"name": "fc0", "params": 12}]}


def test_create_session_twice_returns_the_existing_one(store):
    first = store.create_session("x", name="one")
    again = store.create_session("x", name="ignored")
    assert again.name == "one" and again.created == first.created
    assert len(store.sessions()) == 1


def test_series_since_cursor_returns_only_new_points_in_order(store):
    rng = np.random.default_rng(1)
    store.create_session("s")
    store.write([make_update("s", i, rng) for i in range(5)])
    first = store.read_series("s", "score")
    assert first.iterations.tolist() == [0, 1, 2, 3, 4]
    assert first.values == pytest.approx([1 / (1 + i) for i in range(5)])
    assert len(store.read_series("s", "score", since=first.cursor)) == 0
    store.write([make_update("s", i, rng) for i in range(5, 8)])
    nxt = store.read_series("s", "score", since=first.cursor)
    assert nxt.iterations.tolist() == [5, 6, 7] and nxt.cursor > first.cursor
    limited = store.read_series("s", "score", limit=2)
    rest = store.read_series("s", "score", since=limited.cursor)
    assert limited.iterations.tolist() + rest.iterations.tolist() == list(range(8))


def test_summary_statistics_read_back_as_series(store):
    rng = np.random.default_rng(2)
    store.create_session("s")
    updates = [make_update("s", i, rng) for i in range(4)]
    store.write(updates)
    keys = store.series_keys("s")
    assert "update/fc1.weight/mean_magnitude" in keys and "activation/fc0/zero_fraction" in keys
    assert "lr/0" in keys and "timing/iteration_ms" in keys
    got = store.read_series("s", "update/fc1.weight/mean_magnitude")
    want = [u.summaries["update/fc1.weight"].mean_magnitude for u in updates]
    assert got.values.tolist() == want
    assert store.read_series("s", "param/fc2.weight/count").values.tolist() == [200] * 4


def test_nan_and_inf_are_stored_as_nan_and_inf(store):
    store.create_session("s")
    nan_summary = Summary(count=5, mean=math.nan, stdev=math.inf, mean_magnitude=-math.inf,
                          min=math.nan, max=math.inf, nan_count=3, inf_count=2,
                          zero_fraction=math.nan, histogram=Histogram([0, 1, 2], [1, 0]))
    store.write([Update("s", "0", 0, score=math.nan, scalars={"lr/0": math.inf},
                        summaries={"update/fc.weight": nan_summary}),
                 Update("s", "0", 1, score=-math.inf)])
    store.log_metric("s", "val_loss", math.nan, 1)
    score = store.read_series("s", "score").values
    assert math.isnan(score[0]) and score[1] == -math.inf
    assert store.read_series("s", "lr/0").values[0] == math.inf
    assert math.isnan(store.read_series("s", "metric/val_loss").values[0])
    assert math.isnan(store.read_series("s", "update/fc.weight/mean").values[0])
    assert store.read_series("s", "update/fc.weight/stdev").values[0] == math.inf
    assert store.read_series("s", "update/fc.weight/mean_magnitude").values[0] == -math.inf
    assert store.read_series("s", "update/fc.weight/nan_count").values[0] == 3
    back = [r for r in store.records("s") if isinstance(r, Update)][0]
    assert back.summaries["update/fc.weight"] == nan_summary
    assert math.isnan(back.score)


def test_downsampling_keeps_spikes_nan_and_the_last_point(store):
    store.create_session("s")
    n = 5000
    values = np.sin(np.arange(n) / 200.0)
    values[1234] = 50.0   # a spike
    values[3210] = -40.0  # a dip
    values[4000] = math.nan
    store.write([Update("s", "0", i, score=float(v)) for i, v in enumerate(values)])
    ds = store.read_series("s", "score", max_points=300)
    assert len(ds) <= 300
    assert 50.0 in ds.values and -40.0 in ds.values
    assert np.isnan(ds.values).sum() == 1 and 4000 in ds.iterations
    assert ds.iterations[-1] == n - 1 and np.all(np.diff(ds.iterations) > 0)
    assert ds.cursor == store.read_series("s", "score").cursor


def test_histograms_for_an_iteration_range(store):
    rng = np.random.default_rng(3)
    store.create_session("s")
    updates = [make_update("s", i * 10, rng) for i in range(10)]
    store.write(updates)
    hs = store.read_histograms("s", "param/fc0.weight", start=20, stop=50)
    assert [h.iteration for h in hs] == [20, 30, 40, 50]
    assert hs[0].histogram == updates[2].summaries["param/fc0.weight"].histogram
    assert hs[0].histogram.counts.sum() == 200


def test_metrics_findings_and_several_workers(store):
    store.create_session("s")
    store.write([Metric("s", "accuracy", 0.5, 10, worker="0"),
                 Metric("s", "accuracy", 0.7, 20, worker="1")])
    with pytest.raises(embedviz.InvalidRecordError, match="several workers"):
        store.read_series("s", "metric/accuracy")
    assert store.read_series("s", "metric/accuracy", worker="1").values.tolist() == [0.7]
    f = Finding("s", "update_ratio_high", "fc2: update:param ratio 10^-1.4; lower the learning rate",
                iteration=20, layer="fc2", detail={"log10_ratio": -1.4})
    store.add_finding(f)
    (cursor, got), = store.findings("s")
    assert got == f
    assert store.findings("s", since=cursor) == []


def test_embeddings_and_projections(store):
    rng = np.random.default_rng(4)
    store.create_session("s")
    emb = EmbeddingSet("vocab", ["the", "cat", "<b>dog</b>"], rng.normal(size=(3, 5)),
                       metadata={"count": [10, 5, 1]}, session="s", iteration=3)
    key = store.put_embedding(emb)
    assert store.put_embedding(EmbeddingSet("again", emb.labels, emb.vectors)) == key
    assert [e.key for e in store.embeddings()] == [key]
    back = store.embedding(key)
    assert back.labels == emb.labels and np.array_equal(back.vectors, emb.vectors)
    assert back.metadata == {"count": [10, 5, 1]} and back.iteration == 3
    params = {"perplexity": 2.0, "theta": 0.5}
    p = Projection(key, "tsne", params, state="running", progress=0.5)
    store.put_projection(p)
    assert store.find_projection(key, "tsne", params) is None  # not done yet
    p.coords, p.state, p.progress = rng.normal(size=(3, 2)), "done", 1.0
    p.quality = {"knn_preservation": 0.9}
    store.put_projection(p)
    assert len(store.projections(key)) == 1
    done = store.find_projection(key, "tsne", dict(params))
    assert done is not None and done.quality == {"knn_preservation": 0.9}
    assert np.array_equal(done.coords, p.coords.astype(np.float32))
    assert store.find_projection(key, "tsne", {"perplexity": 3.0, "theta": 0.5}) is None


def test_vectors_beyond_a_value_limit_are_stored_in_parts_and_read_back_whole(store, monkeypatch):
    """SQLite's and PostgreSQL's values end at 1 GB (a million 300-d vectors are 1.2 GB):
    a large set is stored in parts; here the part size is made small instead."""
    from embedviz.store import sql

    monkeypatch.setattr(sql, "PART_BYTES", 1000)
    rng = np.random.default_rng(6)
    emb = EmbeddingSet("big", [f"w{i}" for i in range(101)], rng.normal(size=(101, 7)))
    key = store.put_embedding(emb)
    store.put_embedding(EmbeddingSet("again", emb.labels, emb.vectors))  # (stored once)
    back = store.embedding(key)
    assert back.vectors.shape == (101, 7)
    assert np.array_equal(back.vectors, emb.vectors.astype(np.float32))
    assert [e.key for e in store.embeddings()] == [key]
    words = store.embedding(key, vectors=False)  # (a map's page: no gigabyte of vectors)
    assert words.labels == emb.labels and words.key == key and words.n == 101


def test_export_import_round_trip_is_lossless(store, tmp_path):
    rng = np.random.default_rng(5)
    store.create_session("s", name="run", tags={"note": "x"}, info={"nan": math.nan})
    store.put_static("s", "0", {"layers": ["fc0"], "lr": math.inf})
    ups = [make_update("s", i, rng) for i in range(3)]
    ups[1].score = math.nan
    store.write(ups)
    store.log_metric("s", "val_loss", 0.25, 2)
    store.add_finding(Finding("s", "nan_loss", "score is NaN at 1", iteration=1, severity="error"))
    key = store.put_embedding(EmbeddingSet("v", ["a", "b"], [[1, 2], [math.nan, 4]], session="s"))
    store.put_projection(Projection(key, "pca", {}, coords=[[0, 1], [1, 0]], state="done"))
    path = tmp_path / "out.jsonl"
    n = store.export_jsonl(path)
    assert n == 1 + 1 + 3 + 1 + 1 + 1 + 1
    for target in (":memory:", str(tmp_path / "copy.db")):
        other = embedviz.open_store(target)
        report = other.import_jsonl(path)
        assert report.imported == {"session": 1, "static": 1, "update": 3, "metric": 1,
                                   "finding": 1, "embedding": 1, "projection": 1}
        assert [codec.dumps(r.to_dict()) for r in other.records()] == \
               [codec.dumps(r.to_dict()) for r in store.records()]
        again = other.import_jsonl(path)  # (nothing is new the second time)
        assert again.imported == {} and again.skipped_existing == n
        assert other.session("s").workers[0].n_updates == 3
        other.close()


def test_exports_of_two_machines_merge_into_one_store(store, tmp_path):
    rng = np.random.default_rng(6)
    files = []
    for worker in ("host-a", "host-b"):
        offline = embedviz.open_store(str(tmp_path / f"{worker}.db"))
        offline.create_session("spark-run")
        offline.write([make_update("spark-run", i, rng, worker=worker) for i in range(3)])
        files.append(tmp_path / f"{worker}.jsonl")
        offline.export_jsonl(files[-1])
        offline.close()
    for f in files:
        store.import_jsonl(f)
    (s,) = store.sessions()
    assert [(w.worker, w.n_updates) for w in s.workers] == [("host-a", 3), ("host-b", 3)]


def test_export_of_one_session(store, tmp_path):
    rng = np.random.default_rng(7)
    for sid in ("a", "b"):
        store.create_session(sid)
        store.write([make_update(sid, 0, rng)])
    store.export_jsonl(tmp_path / "a.jsonl", session="a")
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert {codec.loads(line)["session"] for line in lines} == {"a"}


# ------------------------------------------------------------------ bad input
def test_unknown_session_names_the_way_out_and_writes_nothing(store):
    store.create_session("known")
    rng = np.random.default_rng(8)
    with pytest.raises(embedviz.UnknownSessionError, match=r"create_session.*'known'"):
        store.write([make_update("known", 0, rng), make_update("typo", 1, rng)])
    assert store.session("known").workers == []  # nothing of the batch was written
    with pytest.raises(embedviz.UnknownSessionError, match="unknown session 'nope'"):
        store.read_series("nope", "score")
    with pytest.raises(KeyError):
        store.session("nope")


@pytest.mark.parametrize("make, match", [
    (lambda: Update("s", "0", -1), "iteration must be an integer >= 0"),
    (lambda: Update("s", "0", 1.5), "iteration must be an integer"),
    (lambda: Update("s", "0", 1, score="low"), r"score must be a number.*loss.item\(\)"),
    (lambda: Update("s", "", 1), "worker must be a non-empty string"),
    (lambda: Update("s", "0", 1, scalars={"score": 1.0}), "scalar keys may not be 'score'"),
    (lambda: Update("s", "0", 1, scalars={"": 0.0}), "scalar keys must be non-empty names"),  # (fuzz: imported, then unreadable)
    (lambda: Update("s", "0", 1, summaries={"weights/fc": None}), "summary keys must be"),
    (lambda: Histogram([0, 1], [1, 2]), r"len\(edges\) == len\(counts\) \+ 1"),
    (lambda: Histogram([1, 0, 2], [1, 2]), "strictly increasing"),
    (lambda: Finding("s", "c", "m", 0, severity="panic"), "severity must be one of"),
    (lambda: EmbeddingSet("v", ["a"], np.zeros((2, 3))), r"shape \(len\(labels\), dim\)"),
    (lambda: Projection("k", "tsne", progress=2.0), r"progress must be within \[0, 1\]"),
])
def test_bad_records_name_the_problem(make, match):
    with pytest.raises(embedviz.InvalidRecordError, match=match):
        make()


def test_wrong_types_are_refused_before_anything_is_written(store):
    store.create_session("s")
    with pytest.raises(embedviz.InvalidRecordError, match="cannot store a dict"):
        store.write([Metric("s", "a", 1.0, 0), {"type": "metric"}])
    assert store.series_keys  # store still usable
    assert store.session("s").workers == []
    with pytest.raises(embedviz.InvalidRecordError, match="since must be a cursor"):
        store.log_metric("s", "a", 1.0, 0) or store.read_series("s", "metric/a", since=-1)
    with pytest.raises(embedviz.UnknownSessionError, match="put_embedding"):
        store.put_projection(Projection("0" * 32, "tsne"))


def test_zero_dim_tensors_and_numpy_scalars_are_accepted(store):
    store.create_session("s")
    store.write([Update("s", "0", np.int64(3), score=np.float32(0.5)),
                 Static("s", "0", {"n": np.int64(3), "x": np.float32(1.5)}),
                 Session("s", tags={"t": 1})])
    assert store.read_series("s", "score").iterations.tolist() == [3]
    assert store.static("s") == {"n": 3, "x": 1.5}


# ------------------------------------------------------------------ range, batched reads, changes
def _same(a, b):
    """Two reads of one series hold the same points and the same cursor."""
    assert a.key == b.key and a.cursor == b.cursor
    assert a.iterations.tolist() == b.iterations.tolist()
    np.testing.assert_array_equal(a.values, b.values)  # (NaN equals NaN here)
    np.testing.assert_array_equal(a.wall_times, b.wall_times)


def test_a_range_read_keeps_the_iterations_from_start_to_stop(store):
    store.create_session("s")
    store.write([Update("s", "0", i * 10, score=float(i)) for i in range(50)])
    s = store.read_series("s", "score", start=100, stop=200)
    assert s.iterations.tolist() == list(range(100, 201, 10))
    assert s.values.tolist() == [float(i) for i in range(10, 21)]
    everything = store.read_series("s", "score")
    head = store.read_series("s", "score", stop=95)
    assert head.iterations.tolist() == list(range(0, 91, 10)) and head.cursor < everything.cursor
    tail = store.read_series("s", "score", start=455)
    assert tail.iterations.tolist() == [460, 470, 480, 490] and tail.cursor == everything.cursor
    assert store.read_series("s", "score", start=None, stop=None).cursor == everything.cursor
    # the cursor is the last point of the range: what came after it in the range comes next
    store.write([Update("s", "0", 150, score=99.0), Update("s", "0", 999, score=1.0)])
    new = store.read_series("s", "score", start=100, stop=200, since=s.cursor)
    assert new.iterations.tolist() == [150] and new.values.tolist() == [99.0]
    empty = store.read_series("s", "score", start=101, stop=109, since=7)
    assert len(empty) == 0 and empty.cursor == 7
    paged = store.read_series("s", "score", start=100, stop=200, limit=3)
    assert paged.iterations.tolist() == [100, 110, 120]
    rest = store.read_series("s", "score", start=100, stop=200, since=paged.cursor)
    assert rest.iterations.tolist() == list(range(130, 201, 10)) + [150]


def test_a_downsampled_range_keeps_its_spikes_and_its_last_point(store):
    store.create_session("s")
    n = 4000
    values = np.sin(np.arange(n) / 50.0)
    values[2100], values[2900], values[1000], values[2500] = 30.0, -20.0, 99.0, math.nan
    store.write([Update("s", "0", i, score=float(v)) for i, v in enumerate(values)])
    ds = store.read_series("s", "score", start=2000, stop=2999, max_points=100)
    assert len(ds) <= 100 and ds.iterations.min() >= 2000 and ds.iterations[-1] == 2999
    assert 30.0 in ds.values and -20.0 in ds.values and 99.0 not in ds.values
    assert 2500 in ds.iterations[np.isnan(ds.values)]
    assert ds.cursor == store.read_series("s", "score", start=2000, stop=2999).cursor


@pytest.mark.parametrize("kw, match", [
    ({"start": 10, "stop": 5}, r"start 10 is after stop 5: pass start <= stop"),
    ({"start": 1.5}, r"start must be an iteration \(an integer >= 0\) or None \(got 1.5\)"),
    ({"stop": -1}, r"stop must be an iteration.*got -1"),
    ({"start": True}, r"start must be an iteration.*got True"),
    ({"stop": "9"}, r"stop must be an iteration.*got '9'.*int\(stop\)"),
    ({"since": 2**64}, r"since must be a cursor"),
    ({"max_points": 1}, r"max_points must be an integer >= 2"),
    ({"max_points": 10.0}, r"max_points must be an integer >= 2"),
])
def test_range_and_cursor_arguments_are_checked_by_name(store, kw, match):
    store.create_session("s")
    store.log_metric("s", "a", 1.0, 0)
    with pytest.raises(embedviz.InvalidRecordError, match=match):
        store.read_series("s", "metric/a", **kw)
    with pytest.raises(embedviz.InvalidRecordError, match=match):
        store.read_many("s", ["metric/a"], **kw)
    with pytest.raises(embedviz.InvalidRecordError, match="limit must be an integer >= 0"):
        store.read_series("s", "metric/a", limit=-1)


def _mixed_store(store, n=600):
    """A worker with scores (NaN and Inf among them), scalars, summaries and a metric."""
    rng = np.random.default_rng(11)
    store.create_session("s")
    ups = [make_update("s", i * 3, rng, layers=2, score=float(rng.normal())) for i in range(n)]
    ups[100].score, ups[200].score, ups[300].score = math.nan, math.inf, -math.inf
    ups[400].summaries["update/fc1.weight"].mean = math.nan
    store.write(ups[: n // 2])
    store.write(ups[n // 2:])
    for i in range(0, n * 3, 30):
        store.log_metric("s", "val_loss", math.nan if i == 300 else 1.0 / (1 + i), i)


KEYS = ["score", "lr/0", "timing/iteration_ms", "update/fc1.weight/mean",
        "update/fc1.weight/stdev", "param/fc0.weight/count", "activation/fc1/zero_fraction",
        "metric/val_loss", "metric/never_logged", "update/fc9.weight/mean"]


@pytest.mark.parametrize("kw", [{}, {"max_points": 50}, {"max_points": 2}, {"start": 450, "stop": 1200},
                                {"start": 450, "stop": 1200, "max_points": 40}, {"stop": 17},
                                {"start": 1790, "max_points": 1000}])
def test_read_many_is_read_series_of_each_key(store, kw):
    _mixed_store(store)
    got = store.read_many("s", KEYS, **kw)
    assert list(got) == KEYS
    for key in KEYS:
        _same(got[key], store.read_series("s", key, **kw))
    assert len(got["metric/never_logged"]) == 0 and got["metric/never_logged"].cursor == 0
    assert len(got["score"]) and len(got["update/fc1.weight/mean"])
    # one cursor for all, or one per key: each reads on from its own
    again = store.read_many("s", KEYS, since=got["score"].cursor, **kw)
    for key in KEYS:
        _same(again[key], store.read_series("s", key, since=got["score"].cursor, **kw))
    cursors = {k: s.cursor for k, s in got.items()}
    cursors["update/fc1.weight/mean"] = 5
    del cursors["lr/0"]
    cursors["not/asked"] = 3
    by_key = store.read_many("s", KEYS, since=cursors, **kw)
    for key in KEYS:
        _same(by_key[key], store.read_series("s", key, since=cursors.get(key, 0), **kw))
    assert len(by_key["score"]) == 0 and by_key["score"].cursor == cursors["score"]


def test_read_many_sees_nan_and_inf_and_what_comes_after_its_cursors(store):
    _mixed_store(store)
    got = store.read_many("s", ["score", "update/fc1.weight/mean", "metric/val_loss"])
    score = got["score"].values
    assert np.isnan(score[100]) and score[200] == math.inf and score[300] == -math.inf
    assert np.isnan(got["update/fc1.weight/mean"].values[400])
    assert np.isnan(got["metric/val_loss"].values[10])
    store.write([Update("s", "0", 5000, score=0.5, summaries={
        "update/fc1.weight": Summary(count=1, mean=2.0, stdev=0.0, mean_magnitude=2.0, min=2.0, max=2.0)})])
    new = store.read_many("s", ["score", "update/fc1.weight/mean", "metric/val_loss"],
                          since={k: s.cursor for k, s in got.items()})
    assert new["score"].values.tolist() == [0.5]
    assert new["update/fc1.weight/mean"].values.tolist() == [2.0]
    assert len(new["metric/val_loss"]) == 0
    assert new["metric/val_loss"].cursor == got["metric/val_loss"].cursor


def test_read_many_names_its_mistakes(store):
    store.create_session("s")
    store.write([Update("s", "0", 0, score=1.0, scalars={"lr/0": 0.1})])
    with pytest.raises(embedviz.InvalidRecordError, match=r"keys must be a list.*\['score'\]"):
        store.read_many("s", "score")
    with pytest.raises(embedviz.InvalidRecordError, match="series key must be a non-empty"):
        store.read_many("s", ["score", ""])
    with pytest.raises(embedviz.InvalidRecordError, match=r"since\['score'\] must be a cursor"):
        store.read_many("s", ["score"], since={"score": -1})
    with pytest.raises(embedviz.UnknownSessionError, match="unknown session 'nope'"):
        store.read_many("nope", ["score"])
    assert store.read_many("s", []) == {}
    assert list(store.read_many("s", ["score", "lr/0", "score"])) == ["score", "lr/0"]


def test_changes_tells_a_write_from_no_write(store):
    first = store.changes()
    assert store.changes() == first  # nothing written: no change
    store.create_session("s")
    after_session = store.changes()
    assert after_session != first and store.changes() == after_session
    store.log_metric("s", "m", 1.0, 0)
    assert store.changes() != after_session
    still = store.changes()
    store.read_series("s", "metric/m")
    store.sessions()
    assert store.changes() == still  # reading is not a change
    with pytest.raises(embedviz.UnknownSessionError):
        store.log_metric("typo", "m", 1.0, 0)  # refused whole: nothing written
    assert store.changes() == still


def test_sessions_report_each_workers_last_update_and_count_what_came_since(store):
    store.create_session("s")
    store.write([Update("s", "0", i, score=1.0, wall_time=1000.0 + i) for i in (5, 9, 7)])
    store.put_static("s", "1", {"model": {}})
    (w0, w1), = [s.workers for s in store.sessions()]
    assert (w0.first_iteration, w0.last_iteration, w0.n_updates, w0.last_update) == (5, 9, 3, 1007.0)
    assert (w1.first_iteration, w1.last_iteration, w1.n_updates, w1.last_update) == (None, None, 0, None)
    store.write([Update("s", "1", 2, wall_time=2000.0), Update("s", "0", 1, wall_time=3000.0)])
    (w0, w1), = [s.workers for s in store.sessions()]
    assert (w0.first_iteration, w0.n_updates, w0.last_update) == (1, 4, 3000.0)
    assert (w1.first_iteration, w1.last_iteration, w1.n_updates, w1.last_update) == (2, 2, 1, 2000.0)
    assert w1.has_static and not w0.has_static


def test_a_plain_read_gives_the_cursor_after_each_point(store):
    """A reader that keeps points answers any later cursor from them (the app's read layer
    serves every tab this way): ``ids[k]`` read after is what comes after point k."""
    s = store.create_session()
    store.write([Update(s.id, "0", i, score=float(i)) for i in range(0, 50, 5)])
    store.log_metric(s.id, "acc", 0.5, iteration=3)
    store.log_metric(s.id, "acc", 0.6, iteration=8)
    for key in ("score", "metric/acc"):
        whole = store.read_series(s.id, key)
        assert whole.ids is not None and list(whole.ids) == sorted(whole.ids)
        assert whole.ids[-1] == whole.cursor
        after = store.read_series(s.id, key, since=int(whole.ids[1]))
        assert list(after.iterations) == list(whole.iterations[2:])
        many = store.read_many(s.id, [key], since=int(whole.ids[0]))[key]
        assert list(many.ids) == list(whole.ids[1:])
    assert store.read_series(s.id, "score", max_points=4).ids is None  # (downsampled)


# ------------------------------------------------------------------ found by a new user
def _wild(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random series with NaN, Inf and -Inf among its values."""
    values = rng.normal(size=n) * rng.choice([1.0, 100.0], size=n, p=[0.95, 0.05])
    for share, bad in ((0.1, math.nan), (0.04, math.inf), (0.04, -math.inf)):
        values[rng.random(n) < share] = bad
    return values


def test_downsample_index_keeps_at_most_n_points_and_first_the_last_the_max_the_min():
    from embedviz.store import downsample_index

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 80))
        values = _wild(rng, n)
        iterations = np.sort(rng.integers(0, 200, size=n))
        for n_points in range(2, 11):
            kept = downsample_index(iterations, values, n_points)
            assert len(kept) <= n_points and np.all(np.diff(kept) > 0)
            assert kept[-1] == n - 1
    values = np.array([0.0, 5.0, math.nan, -3.0, 1.0, 2.0])
    assert downsample_index(np.arange(6), values, 2).tolist() == [1, 5]  # the last, the max
    assert downsample_index(np.arange(6), values, 3).tolist() == [1, 3, 5]  # and the min
    assert downsample_index(np.arange(6), values, 4).tolist() == [1, 2, 3, 5]  # and the NaN


@pytest.mark.parametrize("seed", range(3))
def test_max_points_is_a_maximum_even_below_a_buckets_worth(store, seed):
    rng = np.random.default_rng(seed)
    values = _wild(rng, 400)
    values[-1] = 0.5  # (so that the last point is not the maximum)
    store.create_session("s")
    store.write([Update("s", "0", i, score=float(v)) for i, v in enumerate(values)])
    for max_points in range(2, 11):
        for kw in ({}, {"start": 30, "stop": 350}, {"since": 7}):
            got = store.read_series("s", "score", max_points=max_points, **kw)
            assert 2 <= len(got) <= max_points, (max_points, kw, len(got))
            assert got.iterations[-1] == kw.get("stop", 399)
            many = store.read_many("s", ["score"], max_points=max_points, **kw)["score"]
            assert len(many) <= max_points
    two = store.read_series("s", "score", max_points=2)
    assert two.iterations.tolist()[-1] == 399 and two.values.tolist() == [math.inf, 0.5]
    three = store.read_series("s", "score", max_points=3)
    assert sorted(three.values.tolist()) == [-math.inf, 0.5, math.inf]


def test_workers_are_listed_in_natural_order(store):
    store.create_session("s")
    store.write([Update("s", w, 0, score=1.0) for w in ("10", "2", "0", "rank-10", "1", "rank-2", "a")])
    natural = ["0", "1", "2", "10", "a", "rank-2", "rank-10"]
    assert [w.worker for w in store.sessions()[0].workers] == natural
    assert [w.worker for w in store.session("s").workers] == natural
    with pytest.raises(embedviz.UnknownSessionError, match=r"its workers are \['0', '1', '2', '10'"):
        store.read_series("s", "score", worker="3")


def test_importing_a_file_twice_imports_nothing_the_second_time(store, tmp_path):
    rng = np.random.default_rng(9)
    store.create_session("quiet", name="nothing recorded yet")
    store.create_session("s", name="run")
    store.put_static("s", "0", {"layers": ["fc0"], "lr": math.nan})
    store.write([make_update("s", i, rng) for i in range(2)])
    key = store.put_embedding(EmbeddingSet("v", ["a", "b"], [[1, 2], [3, 4]], session="s"))
    store.put_embedding(EmbeddingSet("loose", ["c"], [[5, 6]]))
    pid = store.put_projection(Projection(key, "pca", {}, coords=[[0, 1], [1, 0]], state="done"))
    path = tmp_path / "all.jsonl"
    n = store.export_jsonl(path)
    report = store.import_jsonl(path)  # (into the store it came from: all of it is there)
    assert report.imported == {} and report.skipped_existing == n
    other = embedviz.open_store(str(tmp_path / "other.db")) if store.url != ":memory:" \
        else embedviz.open_store(":memory:")
    assert sum(other.import_jsonl(path).imported.values()) == n
    again = other.import_jsonl(path)
    assert again.imported == {} and again.skipped_existing == n
    # what changed since is imported: a projection stored otherwise, another static info
    other.put_projection(Projection(key, "pca", {}, coords=[[9, 9], [9, 9]], state="done", id=pid))
    other.put_static("s", "0", {"layers": ["fc0", "fc1"]})
    third = other.import_jsonl(path)
    assert third.imported == {"projection": 1, "static": 1} and third.skipped_existing == n - 2
    assert other.projection(pid).coords.tolist() == [[0, 1], [1, 0]]
    other.close()


def test_a_line_of_a_session_in_neither_the_file_nor_the_store_is_a_bad_line(store, tmp_path):
    path = tmp_path / "cut.jsonl"
    rows = [Session("s"), Update("s", "0", 1, score=1.0), Update("ghost", "0", 1, score=1.0),
            Projection("no-such-set", "pca", {}), Metric("s", "val", 0.5, 1)]
    path.write_text("".join(codec.dumps(r.to_dict()) + "\n" for r in rows))
    with pytest.raises(embedviz.ImportFormatError,
                       match=r"line 3 is of an unknown session \(its session 'ghost' is neither in "
                             r"this file nor in the store.*--skip-bad") as caught:
        store.import_jsonl(path)
    assert caught.value.line == 3 and store.sessions() == []
    report = store.import_jsonl(path, skip_bad=True)
    assert [line for line, _ in report.bad_lines] == [3, 4]
    assert "'no-such-set' is neither in this file nor in the store" in report.bad_lines[1][1]
    assert report.imported == {"session": 1, "update": 1, "metric": 1}
    assert [s.id for s in store.sessions()] == ["s"]
    # a line of a session the store holds is imported, though the file lacks its session
    path.write_text(codec.dumps(Update("s", "0", 2, score=0.5).to_dict()) + "\n")
    assert store.import_jsonl(path).imported == {"update": 1}


def test_a_finding_keeps_nan_and_inf_in_its_detail_as_numbers(store):
    store.create_session("s")
    store.add_finding(Finding("s", "nan", "NaN", 3, detail={"value": math.nan, "args": {
        "value": -math.inf, "best": math.inf}}))
    (_, got), = store.findings("s")
    assert math.isnan(got.detail["value"]) and got.detail["args"] == {"value": -math.inf,
                                                                      "best": math.inf}


def test_write_once_stores_a_record_sent_again_once(store):
    """A retry after a lost reply sends the same records with the same seqs: stored once."""
    batch = [Session("r"), Update("r", "0", 1, score=1.0), Metric("r", "acc", 0.5, 1),
             Finding("r", "c", "m", 1)]
    seqs = ["a:0", "a:1", "a:2", "a:3"]
    assert store.write_once(batch, seqs) == 4
    token = store.changes()
    assert store.write_once(batch, seqs) == 0
    more = [Update("r", "0", 2, score=2.0), Update("r", "0", 2, score=2.0), Metric("r", "acc", 0.6, 2)]
    assert store.write_once(more, ["a:1", "a:4", None]) == 2  # (a:1 was the first update's)
    assert store.read_series("r", "score").iterations.tolist() == [1, 2]
    assert store.read_series("r", "metric/acc").values.tolist() == [0.5, 0.6]
    assert len(store.findings("r")) == 1 and store.changes() != token
    # a seq is the same only for the same session and worker
    assert store.write_once([Update("r", "1", 5, score=0.0)], ["a:1"]) == 1
    # twice in one batch: the first is written
    assert store.write_once([Metric("r", "x", 1.0, 1), Metric("r", "x", 2.0, 1)], ["b", "b"]) == 1
    assert store.read_series("r", "metric/x", worker="0").values.tolist() == [1.0]


def test_a_refused_write_once_stores_neither_records_nor_receipts(store):
    store.create_session("r")
    with pytest.raises(embedviz.errors.UnknownSessionError):
        store.write_once([Metric("r", "a", 1.0, 1), Metric("nope", "a", 1.0, 1)], ["1", "2"])
    with pytest.raises(embedviz.errors.InvalidRecordError, match="one seq per record"):
        store.write_once([Metric("r", "a", 1.0, 1)], [])
    with pytest.raises(embedviz.errors.InvalidRecordError, match="seq"):
        store.write_once([Metric("r", "a", 1.0, 1)], [7])
    assert store.session("r").workers == []
    assert store.write_once([Metric("r", "a", 1.0, 1)], ["1"]) == 1  # (its receipt was not kept)


def test_several_writers_at_once_and_a_reader_following_with_cursors(store):
    """Writers of several workers commit at once (each its own connection: ranks, machines);
    a reader following with cursors meanwhile sees every point exactly once, in order."""
    import threading

    store.create_session("multi")
    n, workers = 150, ["0", "1", "2"]
    stores = [store if store.url == ":memory:" else embedviz.open_store(store.url)
              for _ in workers]
    errors: list[BaseException] = []

    def write(s, worker):
        try:
            for i in range(n):
                s.write([Update("multi", worker, i, score=float(i)), Metric("multi", "m", i, i, worker)])
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, w)) for s, w in zip(stores, workers)]
    for t in threads:
        t.start()
    seen: dict[tuple[str, str], list[int]] = {}
    cursors: dict[tuple[str, str], int] = {}

    def follow():
        for w in store.session("multi").workers:
            for key in ("score", "metric/m"):
                got = store.read_series("multi", key, worker=w.worker,
                                        since=cursors.get((w.worker, key), 0))
                seen.setdefault((w.worker, key), []).extend(got.iterations.tolist())
                cursors[(w.worker, key)] = got.cursor

    while any(t.is_alive() for t in threads):
        follow()
    for t in threads:
        t.join()
    follow()
    assert not errors, errors
    for w in workers:
        assert seen[(w, "score")] == list(range(n)) and seen[(w, "metric/m")] == list(range(n))
    for s in stores:
        if s is not store:
            s.close()

"""The PostgreSQL store beyond the contract suite: what its own set-up can get wrong, and the
paths that used to be SQLite's (the listener's worker process, the CLI, the app), against a
real throw-away server (tests/pgcluster.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from embedviz.monitor import StatsListener

import embedviz
from embedviz.cli import main
from embedviz.errors import NotAStoreError, StoreError, StoreOpenError
from embedviz.records import Finding, Update
from embedviz.store import codec
from tests.conftest import make_update, mlp


def test_a_listener_records_through_its_worker_process(postgres_url, digits):
    """The worker process reopens the store from its URL, as it does an SQLite file's."""
    X, y = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    listener = StatsListener(postgres_url, 2, session="pg", background="process", budget=None)
    with listener.attach(model, opt):
        assert type(listener._sink).__name__ == "ProcessSink"
        for i in range(20):
            loss = torch.nn.functional.cross_entropy(model(X[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss, batch_size=32)
    with embedviz.open_store(postgres_url, readonly=True) as store:
        assert store.read_series("pg", "score").iterations.tolist() == list(range(0, 20, 2))
        assert len(store.read_series("pg", "update/0.weight/mean_magnitude")) == 10
        assert store.static("pg")["listener"]["background"] == "ProcessSink"
        assert len(store.read_histograms("pg", "param/0.weight")) == 10


def test_the_cli_lists_checks_exports_and_imports_a_postgres_store(pg_cluster, tmp_path, capsys):
    src, dst = pg_cluster.url(), pg_cluster.url()
    rng = np.random.default_rng(0)
    with embedviz.open_store(src) as store:
        store.create_session("s", name="baseline")
        store.write([make_update("s", i, rng) for i in range(30)])
        store.write([Finding("s", "dead_units", "dead", iteration=5, layer="fc1",
                             detail={"value": 95.0, "band": "< 90% of outputs 0"})])
    assert main(["sessions", src]) == 0
    assert "baseline" in capsys.readouterr().out
    assert main(["doctor", src]) == 0
    assert "dead" in capsys.readouterr().out
    out = tmp_path / "s.jsonl"
    assert main(["export", src, "-o", str(out)]) == 0
    assert main(["import", str(out), dst]) == 0
    assert "imported" in capsys.readouterr().out
    with embedviz.open_store(src) as a, embedviz.open_store(dst) as b:
        assert [codec.dumps(r.to_dict()) for r in a.records()] == \
            [codec.dumps(r.to_dict()) for r in b.records()]
    assert main(["import", str(out), dst]) == 0  # (twice: nothing the second time)
    assert "imported nothing" in capsys.readouterr().out


def test_the_app_draws_a_postgres_store(postgres_url):
    from embedviz.server import AppState

    from tests.test_server import build, chart, errors, line_data

    rng = np.random.default_rng(1)
    with embedviz.open_store(postgres_url) as store:
        store.create_session("app", name="on-pg")
        store.write([make_update("app", i, rng) for i in range(50)])
    with AppState(postgres_url, jobs=False) as state:
        doc, tab = build(state, "overview", sessions=["app"])
        assert errors(doc) == []
        its, y = line_data(chart(tab, "Score"), "on-pg")
        stored = state.store.read_series("app", "score")
        assert list(its) == list(stored.iterations) and np.allclose(y, stored.values)


def test_opening_names_the_problem_and_the_way_out(pg_cluster, postgres_url):
    port = getattr(pg_cluster, "port", None)  # (None: a server of EMBEDVIZ_TEST_POSTGRES_URL)
    bad_port = postgres_url.replace(f":{port}/", ":1/") if port else None
    if bad_port:
        with pytest.raises(StoreOpenError, match="cannot connect.*server runs"):
            embedviz.open_store(bad_port)
    with pytest.raises(StoreOpenError, match="schema name"):
        embedviz.open_store(postgres_url.replace("schema=", "schema=Bad-"))
    with pytest.raises(StoreOpenError, match="holds no embedviz store"):
        embedviz.open_store(postgres_url, readonly=True)
    with embedviz.open_store(postgres_url) as store:  # (made here)
        store.create_session("x")
        raw = store._conn().raw
        raw.execute("CREATE SCHEMA other")
        raw.execute("CREATE TABLE other.accounts (id int)")
    with pytest.raises(NotAStoreError, match="not an embedviz store.*another schema"):
        embedviz.open_store(postgres_url.split("?")[0] + "?schema=other")
    with embedviz.open_store(postgres_url + "&readonly=1") as ro:
        assert [s.id for s in ro.sessions()] == ["x"] and "readonly=1" in ro.url
        with pytest.raises(StoreError, match="read-only"):
            ro.write([Update("x", "0", 1, score=1.0)])
    with embedviz.open_store(postgres_url) as store:
        assert [w.n_updates for w in store.session("x").workers] == []  # (nothing written)


def test_a_password_never_shows_in_repr_labels_pages_or_errors(pg_cluster, postgres_url):
    with pytest.raises(StoreOpenError) as info:
        embedviz.open_store("postgresql://embedviz:s3cret@127.0.0.1:1/postgres?schema=p")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    url = postgres_url.replace("postgresql://embedviz@", "postgresql://embedviz:s3cret@")
    if "s3cret" not in url:
        pytest.skip("a server of EMBEDVIZ_TEST_POSTGRES_URL: its URL is not this form")
    from embedviz.server import AppState

    from tests.test_server import build, texts

    with embedviz.open_store(url) as store:  # (trust: any password is accepted)
        store.create_session("x")
        assert "s3cret" in store.url  # (the worker process reopens it from there)
        assert "s3cret" not in repr(store) + store.label and "***" in store.label
    with AppState(url, jobs=False) as state:
        doc, _ = build(state, "overview", sessions=["x"])
        assert "***" in texts(doc) and "s3cret" not in texts(doc)


def test_two_stores_in_one_database_keep_apart(pg_cluster):
    a, b = pg_cluster.url("store_a"), pg_cluster.url("store_b")
    with embedviz.open_store(a) as sa, embedviz.open_store(b) as sb:
        sa.create_session("only-a")
        assert [s.id for s in sb.sessions()] == []
        token = sb.changes()
        sa.create_session("again-a")
        assert sb.changes() == token  # (a write to one store is no change of the other)


def test_a_value_postgresql_cannot_hold_is_refused_by_name_and_nothing_is_kept(postgres_url):
    with embedviz.open_store(postgres_url) as store:
        store.create_session("ok")
        with pytest.raises(embedviz.errors.InvalidRecordError, match="NUL"):
            store.write([Update("ok", "0", 1, score=1.0),
                         Finding("ok", "c", "a message with \x00 in it", 1)])
        assert store.session("ok").workers == []
        store.write([Update("ok", "0", 1, score=1.0)])  # (the connection is fine after)
        assert store.read_series("ok", "score").values.tolist() == [1.0]


def test_files_of_a_store_at_a_url_go_to_the_current_folder():
    from embedviz.cli import _beside

    assert _beside("postgresql://u@db.example/runs?schema=a", "vocab.html") == "vocab.html"
    assert _beside("runs/x.db", "vocab.html") == "runs/vocab.html"
    assert _beside("sqlite:///runs/x.db", "vocab.html") == "runs/vocab.html"


def test_a_server_restart_costs_no_batch_and_readers_reconnect(pg_cluster, postgres_url):
    """The admin restarts PostgreSQL: a writer's next batch waits for it and lands, a reader
    (the app, each tick) finds a new connection."""
    if pg_cluster.external:
        pytest.skip("a server of EMBEDVIZ_TEST_POSTGRES_URL is not restarted by the tests")
    writer, reader = embedviz.open_store(postgres_url), embedviz.open_store(postgres_url)
    writer.create_session("r")
    writer.write([Update("r", "0", 0, score=0.0)])
    assert reader.read_series("r", "score").iterations.tolist() == [0]
    token = reader.changes()
    pg_cluster.restart()
    writer.write([Update("r", "0", 1, score=1.0)])
    assert reader.changes() != token
    assert reader.read_series("r", "score").iterations.tolist() == [0, 1]
    writer.close()
    reader.close()


@pytest.mark.slow
def test_a_listener_keeps_every_report_across_a_server_restart(pg_cluster, postgres_url, digits):
    """Restarted mid-training: the batch in flight waits for the server and lands."""
    if pg_cluster.external:
        pytest.skip("a server of EMBEDVIZ_TEST_POSTGRES_URL is not restarted by the tests")
    X, y = digits
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    listener = StatsListener(postgres_url, 1, session="restarted", background="thread",
                             budget=None, max_pending=1000)
    with listener.attach(model, opt):
        for i in range(40):
            if i == 15:
                pg_cluster.restart()
            loss = torch.nn.functional.cross_entropy(model(X[:64]), y[:64])
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss)
    assert listener.dropped_reports == 0
    with embedviz.open_store(postgres_url, readonly=True) as store:
        assert store.read_series("restarted", "score").iterations.tolist() == list(range(40))

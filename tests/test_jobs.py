"""Projection jobs: workers at once, in order, cancelled, killed, failed, closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
from embedviz.server.jobs import Jobs

import embedviz
from embedviz.errors import ProjectionError
from embedviz.records import EmbeddingSet

#: a t-SNE that is still running whenever a test looks
LONG = {"max_iter": 50_000, "random_state": 0, "until": "max_iter"}  # (long: to be stopped)


def until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stored_set(store) -> EmbeddingSet:
    """300 random words of 20 dimensions, a training snapshot (tied to a session)."""
    rng = np.random.default_rng(0)
    session = store.create_session(name="w2v")
    e = EmbeddingSet("words", [f"w{i}" for i in range(300)], rng.normal(size=(300, 20)),
                     {"group": [i % 3 for i in range(300)]}, session=session.id, iteration=10)
    store.put_embedding(e)
    return e


@pytest.fixture
def sqlite(tmp_path):
    store = embedviz.open_store(str(tmp_path / "runs.db"))
    yield store
    store.close()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_two_run_at_once_a_third_waits_and_cancels_land(sqlite):
    e = stored_set(sqlite)
    jobs = Jobs(sqlite, max_workers=2)
    assert jobs.mode == "process"
    with Jobs(sqlite) as default:
        assert default.max_workers >= 2
    a, b, c = (jobs.submit(e.key, params=LONG, owner="tab") for _ in range(3))
    assert c.state == "queued"
    until(lambda: a.progress > 0 and b.progress > 0)  # both iterating, each in its process
    assert {sqlite.projection(j.projection).state for j in (a, b)} == {"running"}
    assert c.state == "queued" and a.pid != b.pid and c.pid is None
    assert a.embedding == e.key  # (the set itself: a new projection beside its others)

    assert c.cancel() and c.state == "cancelled"  # queued: it never starts
    pids = [a.pid, b.pid]
    started = time.monotonic()
    a.cancel()
    assert a.wait(10)
    latency = time.monotonic() - started
    assert a.state == "cancelled" and latency < 5
    partial = sqlite.projection(a.projection)
    assert partial.state == "interrupted" and partial.coords.shape == (300, 2)
    assert 0 < partial.progress < 1 and a.progress == partial.progress

    jobs.close()
    jobs.close()  # idempotent
    assert all(gone(pid) for pid in pids)
    assert b.state == "cancelled" and c.projection is None
    assert "running" not in {p.state for p in sqlite.projections()}
    assert len(sqlite.projections(e.key)) == 2  # (c never wrote one)
    with pytest.raises(RuntimeError, match="closed"):
        jobs.submit(e.key)


def test_a_worker_that_does_not_stop_is_terminated_and_a_dead_one_fails(sqlite):
    e = stored_set(sqlite)
    jobs = Jobs(sqlite, max_workers=2, grace=0.5)
    deaf = jobs.submit(e.key, params={**LONG, "callback_every": 10**6})  # (never asked)
    dying = jobs.submit(e.key, params=LONG)
    until(lambda: deaf.projection is not None and dying.progress > 0)
    deaf_pid, dying_pid = deaf.pid, dying.pid

    deaf.cancel()
    assert deaf.wait(10) and deaf.state == "cancelled" and gone(deaf_pid)
    record = sqlite.projection(deaf.projection)
    assert (record.state, record.message) == ("failed", "cancelled")

    os.kill(dying_pid, signal.SIGKILL)
    assert dying.wait(10) and dying.state == "failed"
    assert "signal 9" in dying.message
    record = sqlite.projection(dying.projection)
    assert record.state == "failed" and "signal 9" in record.message
    jobs.close()


def test_failing_jobs_say_why_and_leave_no_running_record(sqlite):
    e = stored_set(sqlite)
    with Jobs(sqlite) as jobs:
        missing = jobs.submit("0" * 32)
        broken = jobs.submit(e.key, params={"metric": "no-such-metric", "max_iter": 300},
                             top_n=50)
        assert missing.wait(60) and broken.wait(60)
    assert missing.state == "failed" and "unknown embedding set" in missing.message
    assert missing.projection is None
    assert broken.state == "failed" and "no-such-metric" in broken.message
    record = sqlite.projection(broken.projection)
    assert record.state == "failed" and "no-such-metric" in record.message
    assert "running" not in {p.state for p in sqlite.projections()}
    derived = sqlite.embedding(broken.embedding)  # (made before the estimator failed)
    assert (derived.name, derived.session, derived.n) == ("words (top 50)", None, 50)


@pytest.mark.parametrize("method, params, top_n, match", [
    ("tsne", {"perplexity": -1}, None, "perplexity must be > 0"),
    ("tsne", {"no_such": 1}, None, "no_such"),
    ("pca", {"perplexity": 30}, None, "perplexity"),
    ("sne", {}, None, "unknown projection method"),
    ("tsne", {"callback": print}, None, "callback"),
    ("tsne", {}, 1, "top_n must be"),
])
def test_bad_parameters_are_refused_at_submit(method, params, top_n, match):
    store = embedviz.open_store(":memory:")
    e = stored_set(store)
    with Jobs(store) as jobs:
        with pytest.raises(ProjectionError, match=match):
            jobs.submit(e.key, method, params, top_n=top_n)
        assert jobs.list() == []


def test_in_memory_store_runs_in_threads_and_top_n_is_a_set_of_its_own():
    store = embedviz.open_store(":memory:")
    e = stored_set(store)
    jobs = Jobs(store)
    assert jobs.mode == "thread"
    top = jobs.submit(e.key, params={"max_iter": 300, "random_state": 0}, top_n=100,
                      owner="tab-1")
    pca = jobs.submit(e.key, "pca", owner="tab-2")
    until(lambda: any(t.name.startswith("embedviz-job-") for t in threading.enumerate()))
    assert top.wait(60) and pca.wait(60)
    assert (top.state, top.pid, pca.state) == ("done", None, "done")

    derived = store.embedding(top.embedding)
    assert derived.name == "words (top 100)" and derived.labels == e.labels[:100]
    assert (derived.session, derived.iteration) == (None, None)  # not a training snapshot
    assert derived.metadata["group"] == e.metadata["group"][:100]
    assert [s.key for s in store.embeddings(e.session)] == [e.key]
    done = store.projection(top.projection)
    assert done.state == "done" and done.coords.shape == (100, 2) and top.progress == 1.0
    assert pca.embedding == e.key and store.projection(pca.projection).method == "pca"
    assert jobs.list(owner="tab-1") == [top] and jobs.list() == [top, pca]

    long = jobs.submit(e.key, params=LONG)
    until(lambda: long.progress > 0)
    long.cancel()
    assert long.wait(10) and long.state == "cancelled"
    assert store.projection(long.projection).state == "interrupted"
    jobs.close()


SERVER = """
import sys, time
import numpy as np, embedviz
from embedviz.records import EmbeddingSet
from embedviz.server.jobs import Jobs

if __name__ == "__main__":
    store = embedviz.open_store(sys.argv[1])
    e = EmbeddingSet("w", [f"w{i}" for i in range(300)],
                     np.random.default_rng(0).normal(size=(300, 20)))
    store.put_embedding(e)
    jobs = Jobs(store)
    job = jobs.submit(e.key, params={"max_iter": 50_000, "until": "max_iter"})
    while job.progress == 0:
        time.sleep(0.05)
    print(job.pid, flush=True)
    if sys.argv[2] == "hang":
        time.sleep(600)
"""


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_no_worker_outlives_its_server(tmp_path, end):
    """At interpreter exit close() runs; a server killed outright takes its workers along."""
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(SERVER))
    server = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runs.db"),
                               "hang" if end == "kill" else "exit"], stdout=subprocess.PIPE,
                              text=True)
    try:
        pid = int(server.stdout.readline())
        if end == "kill":
            server.kill()
        assert server.wait(30) in (0, -signal.SIGKILL)
        until(lambda: gone(pid), timeout=10)
        store = embedviz.open_store(str(tmp_path / "runs.db"))
        assert [p.state for p in store.projections()] == [
            "interrupted" if end == "exit" else "failed"]
        store.close()
    finally:
        server.kill()
        server.wait()

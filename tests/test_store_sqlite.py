"""What only a file store must do: survive kills, serve readers in other processes, refuse
files that are not stores, and never carry a connection across fork()."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import embedviz
from embedviz.records import Update
from embedviz.store.sqlite import APPLICATION_ID, SCHEMA_VERSION
from tests.conftest import make_update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRITER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    import embedviz
    from tests.conftest import make_update
    store = embedviz.open_store(sys.argv[1])
    store.create_session("crash")
    worker, batch = sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    i = 0
    while i < int(sys.argv[4]):
        store.write([make_update("crash", i + k, rng, worker=worker, layers=10) for k in range(batch)])
        i += batch
        print(i, flush=True)  # acknowledged: iterations < i are committed
""")


def _child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT), *args],
                            stdout=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_leaves_an_intact_store(tmp_path):
    path = str(tmp_path / "crash.db")
    rng = random.Random(1234)
    for attempt in range(25):
        worker = f"child{attempt}"
        child = _child([path, worker, "5", "100000"])
        acked = 0
        deadline = time.monotonic() + rng.uniform(0.05, 0.6)
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked = int(line)
        child.send_signal(signal.SIGKILL)
        # acknowledgements already in the pipe are promises too
        rest = child.stdout.read().split()
        acked = int(rest[-1]) if rest else acked
        child.wait()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        store = embedviz.open_store(path)
        if acked:
            got = store.read_series("crash", "score", worker=worker).iterations
            assert got[:acked].tolist() == list(range(acked)), f"attempt {attempt}"
            assert len(got) % 5 == 0  # a batch is there whole or not at all
            assert len(store.read_series("crash", "update/fc9.weight/stdev", worker=worker)) == len(got)
        store.close()


@pytest.mark.slow
def test_a_reader_process_sees_every_record_once_in_order_while_a_writer_writes(tmp_path):
    path = str(tmp_path / "live.db")
    embedviz.open_store(path).create_session("crash")
    n = 600
    writer = _child([path, "w", "3", str(n)])
    reader_code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        import embedviz
        store = embedviz.open_store({path!r}, readonly=True)
        seen, cursor, deadline = [], 0, time.monotonic() + 60
        while len(seen) < {n} and time.monotonic() < deadline:
            try:
                s = store.read_series("crash", "score", worker="w", since=cursor)
            except embedviz.UnknownSessionError:  # the worker has not written yet
                time.sleep(0.005); continue
            seen += s.iterations.tolist(); cursor = s.cursor
            time.sleep(0.002)
        print(",".join(map(str, seen)))
    """)
    reader = subprocess.run([sys.executable, "-c", reader_code], capture_output=True, text=True,
                            timeout=120)
    writer.wait(timeout=60)
    assert reader.returncode == 0, reader.stderr
    seen = [int(x) for x in reader.stdout.strip().split(",")]
    assert seen == list(range(n))


def test_two_writer_processes_at_once_both_land(tmp_path):
    path = str(tmp_path / "two.db")
    embedviz.open_store(path).create_session("crash")
    children = [_child([path, w, "2", "200"]) for w in ("a", "b")]
    for c in children:
        c.communicate(timeout=120)
        assert c.returncode == 0
    store = embedviz.open_store(path)
    assert [(w.worker, w.n_updates) for w in store.session("crash").workers] == [("a", 200), ("b", 200)]


def test_a_forked_child_opens_its_own_connection(tmp_path):
    store = embedviz.open_store(str(tmp_path / "fork.db"))
    store.create_session("s")
    store.log_metric("s", "m", 1.0, 0)  # the parent holds a connection now
    pid = os.fork()
    if pid == 0:  # child: must not touch the parent's connection
        code = 1
        try:
            store.log_metric("s", "m", 2.0, 1)
            code = 0 if len(store.read_series("s", "metric/m")) == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.log_metric("s", "m", 3.0, 2)
    assert store.read_series("s", "metric/m").values.tolist() == [1.0, 2.0, 3.0]
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_file_is_wal_with_schema_version_and_application_id(tmp_path):
    path = tmp_path / "s.db"
    embedviz.open_store(path).create_session("s")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_a_file_that_is_not_a_store_is_refused_and_left_alone(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n")
    with pytest.raises(embedviz.NotAStoreError, match="not an embedviz store.*new path"):
        embedviz.open_store(text)
    assert text.read_text() == "hello, not a database\n"
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(embedviz.NotAStoreError, match="SQLite database but not an embedviz store"):
        embedviz.open_store(other)
    assert other.read_bytes() == before
    with pytest.raises(embedviz.NotAStoreError, match="is a directory"):
        embedviz.open_store(tmp_path)
    with pytest.raises(embedviz.StoreOpenError, match="folder .* does not exist"):
        embedviz.open_store(tmp_path / "missing" / "runs.db")


def test_a_store_from_a_newer_schema_is_refused_without_touching_it(tmp_path):
    path = tmp_path / "new.db"
    store = embedviz.open_store(path)
    store.create_session("keep")
    store.close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(embedviz.StoreVersionError, match="newer embedviz.*upgrade"):
        embedviz.open_store(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    assert [s.id for s in embedviz.open_store(path).sessions()] == ["keep"]


def test_url_forms_pick_the_backend(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(embedviz.open_store(":memory:"), embedviz.store.MemoryStore)
    s = embedviz.open_store("sqlite:///rel.db?synchronous=FULL")
    assert s.path.name == "rel.db" and s.synchronous == "FULL"
    s.create_session("x")
    ro = embedviz.open_store(f"sqlite:///{tmp_path / 'rel.db'}?readonly=1")
    assert [x.id for x in ro.sessions()] == ["x"]
    with pytest.raises(embedviz.StoreError, match="open read-only.*open it writable"):
        ro.create_session("y")
    with pytest.raises(embedviz.StoreOpenError, match="no store backend for ftp://"):
        embedviz.open_store("ftp://host/x")
    with pytest.raises(embedviz.StoreOpenError, match="needs a path or URL"):
        embedviz.open_store(42)
    with pytest.raises(embedviz.StoreOpenError, match="does not exist"):
        embedviz.open_store(tmp_path / "absent.db", readonly=True)


def test_a_rolled_back_batch_leaves_no_trace_and_the_store_goes_on(tmp_path):
    store = embedviz.open_store(tmp_path / "rb.db")
    store.create_session("s")
    rng = np.random.default_rng(0)
    bad = make_update("s", 1, rng, worker="new-worker")
    bad.summaries["param/fc0.weight"].histogram.counts = "garbage"  # fails inside the write
    with pytest.raises(AttributeError):  # "garbage".tobytes()
        store.write([make_update("s", 0, rng, worker="new-worker"), bad])
    assert store.session("s").workers == []
    store.write([make_update("s", 0, rng, worker="new-worker")])
    assert store.session("s").workers[0].n_updates == 1


def test_a_store_opened_twice_in_one_process_keeps_its_wal_while_another_process_writes(tmp_path):
    """Opening a store again in the same process must not drop the locks its open connections
    hold (closing any descriptor of the file drops every POSIX lock of the process on it):
    another process that writes and closes must not take itself for the last connection and
    checkpoint the WAL away under them (seen as "database disk image is malformed")."""
    db = tmp_path / "twice.db"
    first = embedviz.open_store(db)
    first.create_session("a")
    second = embedviz.open_store(db)
    second.create_session("b")
    subprocess.run([sys.executable, "-c", "import embedviz; s = embedviz.open_store("
                    f"{str(db)!r}); s.create_session('c'); s.close()"], check=True, timeout=60)
    assert os.path.exists(f"{db}-wal")  # ours are still open: the WAL stays
    first.create_session("d")
    second.create_session("e")
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    assert sorted(s.id for s in first.sessions()) == ["a", "b", "c", "d", "e"]


def _long_series(store, n, seed=0):
    """A random walk of ``n`` scores with spikes and NaN, and an update stdev beside it."""
    from embedviz.records import Summary, Update
    rng = np.random.default_rng(seed)
    values = np.cumsum(rng.normal(size=n))
    values[rng.choice(n, 5, replace=False)] = rng.normal(0, 500, 5)  # spikes both ways
    values[[n // 3, n // 3 + 1, 2 * n // 3]] = np.nan
    store.create_session("long")
    for start in range(0, n, 5000):
        store.write([Update.trusted("long", "0", i, float(values[i]), None, {}, {
            "update/fc.weight": Summary.trusted(None, count=4, mean=0.0, stdev=float(values[i]),
                                                mean_magnitude=1.0, min=-1.0, max=1.0, nan_count=0,
                                                inf_count=0, zero_fraction=0.0)})
                     for i in range(start, min(n, start + 5000))])
    return values


def _check_downsampled(ds, values, since_iteration, max_points):
    """What a full scan would keep: at most max_points real points, the extremes, the first
    NaN of the range, the last point."""
    part = values[since_iteration:]
    its = np.arange(since_iteration, len(values))
    assert 0 < len(ds) <= max_points
    real = np.isnan(ds.values) | (ds.values == values[ds.iterations])
    assert real.all() and np.isnan(values[ds.iterations[np.isnan(ds.values)]]).all()
    assert np.nanmax(part) in ds.values and np.nanmin(part) in ds.values
    if np.isnan(part).any():
        assert its[np.isnan(part)][0] in ds.iterations[np.isnan(ds.values)]
    assert ds.iterations[-1] == len(values) - 1 and np.all(np.diff(ds.iterations) > 0)


@pytest.fixture(scope="module", params=[70_000, 3000])
def long_store(request, tmp_path_factory):
    store = embedviz.open_store(tmp_path_factory.mktemp("long") / "long.db")
    values = _long_series(store, request.param)
    yield store, values
    store.close()


@pytest.mark.parametrize("max_points", [2000, 200])
def test_a_long_series_is_read_downsampled_from_its_blocks(long_store, max_points):
    store, values = long_store
    n = len(values)
    full = store.read_series("long", "score")
    for key in ("score", "update/fc.weight/stdev"):
        ds = store.read_series("long", key, max_points=max_points)
        _check_downsampled(ds, values, 0, max_points)
        assert ds.cursor == full.cursor
    # from a cursor in the middle of a block: the rows before the first block count too
    since = int(full.cursor - n // 2 - 7)
    ds = store.read_series("long", "score", since=since, max_points=max_points)
    _check_downsampled(ds, values, n - n // 2 - 6, max_points)
    made = dict(store._conn().execute("SELECT level, count(*) FROM point_blocks GROUP BY level"))
    assert made == {k: n // 16 ** k for k in range(1, 5) if n // 16 ** k}


def test_a_schema_1_store_gets_its_blocks_when_opened_for_writing(tmp_path):
    path = tmp_path / "old.db"
    with embedviz.open_store(path) as store:
        values = _long_series(store, 20_000)
    conn = sqlite3.connect(path)  # what the previous version wrote: no blocks
    conn.executescript("DROP TABLE point_blocks; DROP TABLE summary_blocks; PRAGMA user_version = 1;")
    conn.close()
    with embedviz.open_store(path, readonly=True) as old:  # read as stored, not upgraded
        _check_downsampled(old.read_series("long", "score", max_points=1000), values, 0, 1000)
    with embedviz.open_store(path) as store:
        assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        _check_downsampled(store.read_series("long", "score", max_points=1000), values, 0, 1000)
        assert store._conn().execute("SELECT count(*) FROM point_blocks WHERE level = 1").fetchone()[0] == 1250


def _as_plain_user(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` where file permissions bind: root without its override capabilities."""
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0
              else [])
    return subprocess.run(prefix + [sys.executable, "-c", code, *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_a_store_in_a_read_only_folder_or_file_is_read_and_never_half_written(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "runs.db"
    with embedviz.open_store(path) as store:
        store.create_session("s")
        store.write([make_update("s", i, np.random.default_rng(i)) for i in range(5)])
    read = ("import sys, embedviz; s = embedviz.open_store(sys.argv[1], readonly=True); "
            "print(len(s.read_series('s', 'score')), [x.id for x in s.sessions()])")
    write = ("import sys, embedviz\n"
             "try:\n    embedviz.open_store(sys.argv[1])\n"
             "except embedviz.StoreOpenError as e:\n    print('refused:', e)")
    try:
        path.chmod(0o444)
        got = _as_plain_user(write, str(path))  # a read-only file in a writable folder
        assert "refused:" in got.stdout and "readonly=True" in got.stdout, got.stderr
        got = _as_plain_user(read, str(path))
        assert got.stdout.strip() == "5 ['s']", got.stderr
        path.chmod(0o644)
        folder.chmod(0o555)  # a read-only folder (a mounted volume, a shared results folder)
        got = _as_plain_user(read, str(path))
        assert got.stdout.strip() == "5 ['s']", got.stderr
        got = _as_plain_user(write, str(folder / "new.db"))
        assert "not writable" in got.stdout, got.stderr
        cli = _as_plain_user("import sys; from embedviz.cli import main; sys.exit(main(sys.argv[1:]))",
                             "sessions", str(path))
        assert cli.returncode == 0 and "s" in cli.stdout, cli.stderr
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    with embedviz.open_store(path) as store:  # nothing was lost or half-written
        assert len(store.read_series("s", "score")) == 5


# ------------------------------------------------------------------ range and batched reads
def _check_range(ds, values, first, last, max_points):
    """What a full scan of iterations [first, last] keeps: real points of the range only, its
    extremes, its first NaN, its last point."""
    part = values[first:last + 1]
    its = np.arange(first, last + 1)
    assert 0 < len(ds) <= max_points
    assert ds.iterations.min() >= first and ds.iterations[-1] == last
    real = np.isnan(ds.values) | (ds.values == values[ds.iterations])
    assert real.all() and np.isnan(values[ds.iterations[np.isnan(ds.values)]]).all()
    assert np.nanmax(part) in ds.values and np.nanmin(part) in ds.values
    if np.isnan(part).any():
        assert its[np.isnan(part)][0] in ds.iterations[np.isnan(ds.values)]
    assert np.all(np.diff(ds.iterations) > 0)


@pytest.mark.parametrize("max_points", [1000, 200])
def test_a_range_of_a_long_series_is_read_from_its_blocks_and_its_edges(long_store, max_points):
    store, values = long_store
    n = len(values)
    for first, last in [(n // 2, n - 1), (n // 3 - 5, 2 * n // 3 + 7), (17, n // 100 + 17),
                        (0, n - 1), (n - 40, n - 1), (123, 123)]:
        whole = store.read_series("long", "score", start=first, stop=last)
        assert whole.iterations.tolist() == list(range(first, last + 1))
        for key in ("score", "update/fc.weight/stdev"):
            ds = store.read_series("long", key, start=first, stop=last, max_points=max_points)
            if last - first + 1 <= max_points:
                _same_points(ds, whole)
            else:
                _check_range(ds, values, first, last, max_points)
            assert ds.cursor == whole.cursor


def _same_points(a, b):
    assert a.iterations.tolist() == b.iterations.tolist() and a.cursor == b.cursor
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.wall_times, b.wall_times)


def _steps(store, read) -> int:
    """How much work SQLite does for ``read()`` (its virtual machine's steps, in hundreds)."""
    steps = [0]

    def count():
        steps[0] += 1
        return 0

    conn = store._conn()
    conn.set_progress_handler(count, 100)
    try:
        read()
    finally:
        conn.set_progress_handler(None, 100)
    return steps[0]


def test_a_zoom_reads_its_own_part_not_the_whole_series(long_store):
    store, values = long_store
    n = len(values)
    if n < 10_000:
        pytest.skip("a long series")
    full = _steps(store, lambda: store.read_series("long", "score"))
    zoom = _steps(store, lambda: store.read_series("long", "score", start=n // 2,
                                                   stop=n // 2 + n // 100, max_points=1000))
    half = _steps(store, lambda: store.read_series("long", "update/fc.weight/stdev",
                                                   start=n // 2, max_points=1000))
    plain = _steps(store, lambda: store.read_series("long", "score", start=n // 2,
                                                    stop=n // 2 + n // 100))
    assert zoom < full / 10 and plain < full / 10 and half < full / 4, (zoom, plain, half, full)


def test_a_range_of_a_series_whose_iterations_went_back_reads_what_a_scan_reads(tmp_path):
    """A run resumed from a checkpoint writes iterations it wrote before: a range holds rows
    from both passes, and blocks straddle its edges anywhere."""
    its = list(range(0, 12_000)) + list(range(4000, 12_000))
    rng = np.random.default_rng(3)
    values = rng.normal(size=len(its))
    values[[500, 13_000]] = [np.nan, 40.0]
    ups = [Update("s", "0", i, score=float(v)) for i, v in zip(its, values)]
    memory, sqlite = embedviz.open_store(":memory:"), embedviz.open_store(tmp_path / "r.db")
    for store in (memory, sqlite):
        store.create_session("s")
        for k in range(0, len(ups), 4000):
            store.write(ups[k:k + 4000])
    for kw in [{"start": 5000, "stop": 5999}, {"start": 5000, "stop": 5999, "max_points": 1000},
               {"start": 300, "stop": 7000, "max_points": 3000}, {"start": 4000},
               {"stop": 4200, "max_points": 9000}, {"start": 11_990, "max_points": 5}]:
        _same_points(sqlite.read_series("s", "score", **kw), memory.read_series("s", "score", **kw))
        _same_points(sqlite.read_many("s", ["score"], **kw)["score"], memory.read_series("s", "score", **kw))
    ds = sqlite.read_series("s", "score", start=3000, stop=11_000, max_points=500)
    assert len(ds) <= 500 and ds.iterations.min() >= 3000 and ds.iterations.max() <= 11_000
    assert 40.0 in ds.values and ds.cursor == memory.read_series("s", "score", stop=11_000).cursor
    assert np.nanmax(values[np.array(its) >= 3000]) in ds.values


def _statements(store, *args, **kw) -> list[str]:
    """The statements ``store.read_many(*args, **kw)`` runs."""
    seen: list[str] = []
    conn = store._conn()
    conn.set_trace_callback(seen.append)
    try:
        store.read_many(*args, **kw)
    finally:
        conn.set_trace_callback(None)
    return seen


def test_read_many_takes_a_few_statements_whatever_the_number_of_keys(tmp_path):
    store = embedviz.open_store(tmp_path / "many.db")
    store.create_session("s")
    rng = np.random.default_rng(0)
    store.write([make_update("s", i, rng, layers=10) for i in range(200)])
    keys = store.series_keys("s")
    assert len(keys) > 300
    for some in (keys[:5], keys):
        store.read_many("s", some)  # (series ids are looked up once, then kept)
        plain = _statements(store, "s", some, since=10)
        ranged = _statements(store, "s", some, start=100, stop=300)
        downsampled = _statements(store, "s", some, max_points=100)
        # (the first statement of each resolves the worker, as read_series does)
        assert (len(plain), len(ranged), len(downsampled)) == (2, 3, 4), (plain, ranged)


# ------------------------------------------------------------------ changes, sessions, options
def test_changes_sees_commits_of_other_connections_and_processes(tmp_path):
    path = tmp_path / "c.db"
    store = embedviz.open_store(path)
    store.create_session("s")
    token = store.changes()
    assert store.changes() == token
    other = embedviz.open_store(path)  # another connection of this process
    other.log_metric("s", "m", 1.0, 0)
    assert store.changes() != token
    token = store.changes()
    subprocess.run([sys.executable, "-c", "import sys, embedviz; embedviz.open_store(sys.argv[1])"
                    ".log_metric('s', 'm', 2.0, 1)", str(path)], check=True, cwd=ROOT, timeout=60)
    assert store.changes() != token
    token = store.changes()
    assert store.changes() == token
    reader = embedviz.open_store(path, readonly=True)
    seen = reader.changes()
    store.log_metric("s", "m", 3.0, 2)
    assert reader.changes() != seen
    # a thread's own connection misses nothing either
    import threading
    box = []
    thread = threading.Thread(target=lambda: box.append(store.changes()))
    thread.start()
    thread.join()
    assert box[0] != token


def test_sessions_count_updates_from_the_index_and_the_new_ids_only(tmp_path):
    from embedviz.store.sql import _WORKERS_SQL
    path = tmp_path / "w.db"
    store = embedviz.open_store(path)
    store.create_session("s")
    store.write([Update("s", w, i, score=1.0) for i in range(300) for w in ("0", "1")])
    assert [w.n_updates for w in store.session("s").workers] == [300, 300]
    plan = " | ".join(r[3] for r in store._conn().execute(
        "EXPLAIN QUERY PLAN " + _WORKERS_SQL.format(by_id="NOT INDEXED"), (1,)))
    assert "SCAN updates " not in plan + " " and "rowid>?" in plan, plan
    code = ("import sys, embedviz; from embedviz.records import Update; s = embedviz.open_store("
            "sys.argv[1]); s.write([Update('s', '1', 1000 + i) for i in range(7)])")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT, timeout=60)
    store.write([Update("s", "2", 5)])
    workers = store.session("s").workers
    assert [(w.worker, w.n_updates, w.last_iteration) for w in workers] == [
        ("0", 300, 299), ("1", 307, 1006), ("2", 1, 5)]
    fresh = embedviz.open_store(path, readonly=True)
    assert [w.n_updates for w in fresh.session("s").workers] == [300, 307, 1]


def test_a_plain_path_takes_options_after_a_question_mark(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    embedviz.open_store("runs.db").create_session("x")
    ro = embedviz.open_store("runs.db?readonly=1")
    assert ro.readonly and ro.path.name == "runs.db" and [s.id for s in ro.sessions()] == ["x"]
    with pytest.raises(embedviz.StoreError, match="open read-only.*open it writable"):
        ro.create_session("y")
    assert not os.path.exists("runs.db?readonly=1")
    full = embedviz.open_store(f"{tmp_path / 'runs.db'}?synchronous=full&readonly=0")
    assert full.synchronous == "FULL" and not full.readonly
    with pytest.raises(embedviz.StoreOpenError, match=r"unknown option 'readonyl'.*readonly, synchronous"):
        embedviz.open_store("runs.db?readonyl=1")
    with pytest.raises(embedviz.StoreOpenError, match=r"unknown option 'mode'.*readonly, synchronous"):
        embedviz.open_store("sqlite:///runs.db?mode=ro")
    with pytest.raises(embedviz.StoreOpenError, match=r"readonly='maybe'.*readonly=1"):
        embedviz.open_store("runs.db?readonly=maybe")
    # a file whose name holds the "?" itself is opened as it is, and so is any Path
    literal = embedviz.open_store(tmp_path / "odd?readonly=1")
    literal.create_session("z")
    assert os.path.exists("odd?readonly=1")
    again = embedviz.open_store("odd?readonly=1")
    assert not again.readonly and [s.id for s in again.sessions()] == ["z"]


def test_a_read_of_more_series_than_sqlite_takes_parameters_writes_them_in(tmp_path, monkeypatch):
    from embedviz.store import blocks
    store = embedviz.open_store(tmp_path / "p.db")
    _long_series(store, 3000)
    keys = ["score", "update/fc.weight/stdev", "update/fc.weight/mean", "absent"]
    for kw in [{}, {"max_points": 100}, {"start": 500, "stop": 2500, "max_points": 300},
               {"start": 1000, "stop": 1100}]:
        with_parameters = store.read_many("long", keys, **kw)
        monkeypatch.setattr(blocks, "MAX_PARAMETERS", 3)
        written_in = store.read_many("long", keys, **kw)
        monkeypatch.undo()
        for key in keys:
            _same_points(written_in[key], with_parameters[key])


# ------------------------------------------------------------------ found by a new user
def test_a_name_with_question_mark_hash_and_percent_reopens_from_its_url(tmp_path):
    """store.url is what the monitor's worker process and the projection pool reopen; a
    read-only open reads that very file, never one named after a part of it."""
    path = tmp_path / "p?x#%.db"
    with embedviz.open_store(path, readonly=False) as store:
        store.create_session("mine")
        url = store.url
    assert url == "sqlite:///" + str(tmp_path).replace("%", "%25") + "/p%3Fx%23%25.db"
    with embedviz.open_store(url) as again:
        assert again.path == path and not again.readonly
        assert [s.id for s in again.sessions()] == ["mine"]
    with embedviz.store.SQLiteStore(path, synchronous="FULL", readonly=True) as ro:
        assert [s.id for s in ro.sessions()] == ["mine"]
        with embedviz.open_store(ro.url) as ro_again:  # (the same options: read-only, FULL)
            assert ro_again.path == path and ro_again.readonly and ro_again.synchronous == "FULL"
            assert [s.id for s in ro_again.sessions()] == ["mine"]
    # (no file named "p", or anything but the store and its -wal and -shm)
    assert {f for f in os.listdir(tmp_path) if not f.startswith("p?x#%.db")} == set()
    # another process writes through the url, as the monitor's worker does
    code = "import sys, embedviz; embedviz.open_store(sys.argv[1]).create_session('child')"
    subprocess.run([sys.executable, "-c", code, url], check=True, cwd=ROOT)
    with embedviz.open_store(path, readonly=True) as ro:
        assert [s.id for s in ro.sessions()] == ["mine", "child"]
    # a store named like what "run?1.db" was cut to is never shown in its place
    embedviz.open_store(tmp_path / "run").create_session("someone else's")
    embedviz.open_store(tmp_path / "run?1.db").create_session("its own")
    with embedviz.open_store(tmp_path / "run?1.db", readonly=True) as ro:
        assert [s.id for s in ro.sessions()] == ["its own"]


def test_a_store_in_a_folder_this_user_cannot_write_names_the_way_to_read_it(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "runs.db"
    with embedviz.open_store(path) as store:
        store.create_session("s")
    code = ("import sys, embedviz\n"
            "try:\n    embedviz.open_store(sys.argv[1]).create_session('new')\n"
            "except embedviz.StoreError as e:\n    print(type(e).__name__, e)\n"
            "s = embedviz.open_store(sys.argv[1], readonly=True)\n"
            "try:\n    s.create_session('new')\n"
            "except embedviz.StoreError as e:\n    print(type(e).__name__, e)\n")
    try:
        folder.chmod(0o555)
        got = _as_plain_user(code, str(path))
    finally:
        folder.chmod(0o755)
    opened, wrote = got.stdout.splitlines()
    assert opened.startswith("StoreOpenError") and "not an embedviz store" not in opened, got.stdout
    assert "folder this user cannot write" in opened and "readonly=True" in opened
    assert "?readonly=1" in opened
    assert wrote.startswith("StoreError") and "open read-only" in wrote and "open it writable" in wrote
    with embedviz.open_store(path, readonly=True) as store:
        assert [s.id for s in store.sessions()] == ["s"]


def test_odd_targets_get_a_clear_error_or_the_right_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(embedviz.StoreOpenError,
                       match=r"unknown option '.db' in 'what\?.db'.*pathlib.Path.*%3F "
                             r"\(sqlite:///what%3F.db\)"):
        embedviz.open_store("what?.db")
    embedviz.open_store("sqlite:///what%3F.db").create_session("q")  # (as the error says)
    assert [s.id for s in embedviz.open_store("what?.db", readonly=True).sessions()] == ["q"]
    for target in (":memory:?readonly=1", "sqlite:///:memory:?readonly=1"):
        with pytest.raises(embedviz.StoreOpenError, match="in-memory store starts empty"):
            embedviz.open_store(target)
    for target in ("sqlite:///:memory:", ":memory:?synchronous=FULL"):
        assert isinstance(embedviz.open_store(target), embedviz.store.MemoryStore)
    with pytest.raises(embedviz.StoreOpenError, match="'#' in a URL.*%23"):
        embedviz.open_store("sqlite:///a#b.db")
    with pytest.raises(embedviz.StoreOpenError,
                       match=r"absent.db does not exist: check the path \(a store is created when "
                             r"something records into it: a StatsListener.*embedviz demo"):
        embedviz.open_store("absent.db", readonly=True)
    assert sorted(os.listdir(tmp_path)) == ["what?.db", "what?.db-shm", "what?.db-wal"]
    doc = embedviz.open_store.__doc__
    assert "module docstring" not in doc
    assert all(x in doc for x in ("readonly=1", "synchronous=", ":memory:", "sqlite:///", "%3F"))


def _open_and_record(path, results):
    try:
        with embedviz.open_store(path) as s:
            s.create_session("x")
        results.put("ok")
    except Exception as exc:  # (reported by the test)
        results.put(repr(exc))


@pytest.mark.slow
def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path):
    """The ranks of a job open one new file at once: one creates the tables, the others see
    a store (they read its tables and its application id apart, saw a foreign database:
    2 of 180 openings failed so)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    failures = []
    for k in range(100):
        path = str(tmp_path / f"r{k}.db")
        results = ctx.Queue()
        procs = [ctx.Process(target=_open_and_record, args=(path, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        failures += [r for r in (results.get(timeout=10) for _ in procs) if r != "ok"]
    assert failures == []

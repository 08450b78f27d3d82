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
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
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

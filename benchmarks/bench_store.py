"""Store write rate beside TensorBoard's SummaryWriter, and a downsampled read.

Writes the same content both ways: a 10-layer model (weight + bias per layer) with
summaries of 4 kinds (parameters, gradients and updates of 20 tensors, activations of 10
layers = 70 summaries), each 9 statistics and a 20-bin histogram, plus score, learning rate,
timing and memory. TensorBoard gets `add_scalar` per statistic and `add_histogram_raw` per
histogram (the histogram is precomputed for both, so only writing is timed); its time
includes the final flush. Then reads back a worker of 100,000 updates of 250 series: a
whole series, a zoom into 1% and the last half downsampled to 1,000 points; all 250 series
at once (read_many) against a loop of read_series, downsampled and as a live tick; and
sessions() of 3 such workers, before (the old query) and now. With ``--postgres`` the same
writes and reads run on a PostgreSQL store too (``auto``: a throw-away server started here,
as the tests do), with the app's overview page built over each (100,000 iterations x 10
layers).

    python benchmarks/bench_store.py [--updates 300] [--read-updates 100000] [--postgres auto|URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

import embedviz
from embedviz.records import STATS, Histogram, Summary, Update

KINDS = ("param", "gradient", "update")


def realistic_updates(n: int, session: str) -> list[Update]:
    rng = np.random.default_rng(0)
    out = []
    for it in range(n):
        summaries = {}
        for layer in range(10):
            targets = [f"{k}/layer{layer}.{p}" for k in KINDS for p in ("weight", "bias")]
            for target in targets + [f"activation/layer{layer}"]:
                v = rng.normal(0, 0.1, 64)
                counts, edges = np.histogram(v, bins=20)
                summaries[target] = Summary(count=4096, mean=v.mean(), stdev=v.std(),
                                            mean_magnitude=np.abs(v).mean(), min=v.min(),
                                            max=v.max(), zero_fraction=0.0,
                                            histogram=Histogram(edges, counts))
        out.append(Update(session, "0", it, score=float(rng.random()), epoch=0,
                          scalars={"lr/0": 0.01, "timing/iteration_ms": 12.0,
                                   "timing/examples_per_s": 5000.0, "memory/rss_bytes": 1e9},
                          summaries=summaries))
    return out


def bench_ours(updates: list[Update], folder: str, batch: int, target: str | None = None) -> float:
    store = embedviz.open_store(target or os.path.join(folder, f"ours-{batch}.db"))
    store.create_session("bench")
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(updates), batch), desc=f"embedviz (batch {batch})", leave=False):
        store.write(updates[i:i + batch])
    elapsed = time.perf_counter() - t0
    store.close()
    return len(updates) / elapsed


def bench_tensorboard(updates: list[Update], folder: str) -> float:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(folder, "tb"))
    t0 = time.perf_counter()
    for u in tqdm(updates, desc="tensorboard", leave=False):
        step = u.iteration
        writer.add_scalar("score", u.score, step)
        for key, value in u.scalars.items():
            writer.add_scalar(key, value, step)
        for target, s in u.summaries.items():
            for stat in ("count", "mean", "stdev", "mean_magnitude", "min", "max",
                         "nan_count", "inf_count", "zero_fraction"):
                writer.add_scalar(f"{target}/{stat}", getattr(s, stat), step)
            h = s.histogram
            writer.add_histogram_raw(target, min=s.min, max=s.max, num=s.count,
                                     sum=s.mean * s.count, sum_squares=(s.stdev**2 + s.mean**2) * s.count,
                                     bucket_limits=h.edges[1:].tolist(),
                                     bucket_counts=h.counts.tolist(), global_step=step)
    writer.flush()
    writer.close()
    return len(updates) / (time.perf_counter() - t0)


#: what sessions() ran before it used the index: min, max, count over every update
OLD_SESSIONS_SQL = ("SELECT w.session, w.worker, min(u.iteration), max(u.iteration), count(u.id), "
                    "max(u.wall_time), w.static IS NOT NULL FROM workers w LEFT JOIN updates u "
                    "ON u.wid = w.id GROUP BY w.id ORDER BY w.worker")
#: 27 tensors' statistics (9 each) and 7 scalars: 250 series of one worker
TARGETS = [f"{k}/layer{i}.weight" for i in range(9) for k in KINDS]
SCALARS = ["score"] + [f"lr/{g}" for g in range(6)]


def fill_long(path: str, n: int) -> None:
    """Worker "0": ``n`` updates of 250 series (a random walk of scores among them);
    workers "1" and "2": ``n`` scores each."""
    store = embedviz.open_store(path)
    store.yield_gil = False  # type: ignore[attr-defined]
    store.create_session("long")
    rng = np.random.default_rng(1)
    scores = np.cumsum(rng.normal(0, 1, n))
    for i in tqdm(range(0, n, 2000), desc=f"filling {n:,} updates of 250 series", leave=False):
        batch = []
        for j in range(i, min(n, i + 2000)):
            v = rng.normal(size=3)
            one = Summary.trusted(None, count=100, mean=float(v[0]), stdev=float(abs(v[1])),
                                  mean_magnitude=float(abs(v[2])), min=float(v[0]) - 1,
                                  max=float(v[0]) + 1, nan_count=0, inf_count=0, zero_fraction=0.0)
            batch.append(Update.trusted("long", "0", j, float(scores[j]), None,
                                        {k: 0.1 for k in SCALARS[1:]}, dict.fromkeys(TARGETS, one)))
        store.write(batch)
    for worker in ("1", "2"):
        for i in range(0, n, 20_000):
            store.write([Update.trusted("long", worker, j, float(scores[j]), None, {}, {})
                         for j in range(i, min(n, i + 20_000))])
    store.close()


def best_ms(fn: Callable[[], object], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def statements(store: embedviz.Store, fn: Callable[[], object]) -> int:
    """How many SQL statements ``fn()`` runs on this thread's connection."""
    seen: list[str] = []
    conn = store._conn()  # type: ignore[attr-defined]
    if not hasattr(conn, "set_trace_callback"):  # (SQLite's alone)
        return -1
    conn.set_trace_callback(seen.append)
    try:
        fn()
    finally:
        conn.set_trace_callback(None)
    return len(seen)


def first_sessions(path: str) -> float:
    """ms of the first sessions() of a new store object (it counts every update once)."""
    store = embedviz.open_store(path, readonly=True)
    store.changes()  # (opens the connection outside the timing)
    t0 = time.perf_counter()
    store.sessions()
    elapsed = time.perf_counter() - t0
    store.close()
    return elapsed * 1000


def bench_reads(path: str, n: int) -> dict[str, float]:
    """Read figures (ms, best of 5 unless said) on a fresh read-only connection."""
    reader = embedviz.open_store(path, readonly=True)
    stat = "update/layer0.weight/mean_magnitude"
    keys = SCALARS + [f"{t}/{s}" for t in TARGETS for s in STATS]
    mid, zoom = n // 2, max(n // 100, 1)
    out = {}
    for name, key in (("score", "score"), ("stat", stat)):
        out[f"whole {name}"] = best_ms(lambda k=key: reader.read_series("long", k, worker="0", max_points=1000))
        out[f"zoom {name}"] = best_ms(lambda k=key: reader.read_series(
            "long", k, worker="0", start=mid, stop=mid + zoom - 1, max_points=1000))
        out[f"half {name}"] = best_ms(lambda k=key: reader.read_series(
            "long", k, worker="0", start=mid, max_points=1000))
    many = lambda **kw: reader.read_many("long", keys, worker="0", **kw)  # noqa: E731
    loop = lambda **kw: {k: reader.read_series("long", k, worker="0", **kw) for k in keys}  # noqa: E731
    since = reader.read_series("long", "score", worker="0", stop=n - 101).cursor
    for name, kw in (("downsampled", {"max_points": 200}), ("tick", {"since": since})):
        out[f"many {name}"] = best_ms(lambda kw=kw: many(**kw), 3)
        out[f"loop {name}"] = best_ms(lambda kw=kw: loop(**kw), 3)
        out[f"many {name} statements"] = statements(reader, lambda kw=kw: many(**kw))
        out[f"loop {name} statements"] = statements(reader, lambda kw=kw: loop(**kw))
    conn = reader._conn()  # type: ignore[attr-defined]
    out["sessions before"] = best_ms(lambda: conn.execute(OLD_SESSIONS_SQL).fetchall()) \
        if hasattr(conn, "set_trace_callback") else float("nan")
    out["sessions first"] = min(first_sessions(path) for _ in range(5))
    out["sessions"] = best_ms(reader.sessions)
    out["changes"] = best_ms(reader.changes)
    reader.close()
    return out


def report_reads(r: dict[str, float], n: int) -> None:
    print(f"reads of a {n:,}-update worker with 250 series, to 1,000 points (score: a random walk):")
    for what, label in (("whole", "whole series"), ("zoom", f"zoom into 1% (iterations {n // 2:,}+)"),
                        ("half", "last half")):
        print(f"  {label:<48} {r[f'{what} score']:7.1f} ms (score) {r[f'{what} stat']:7.1f} ms "
              "(a layer statistic)")
    print(f"  target: whole <= 100 ms, zoom <= 20 ms: "
          f"{'met' if max(r['whole score'], r['whole stat']) <= 100 and max(r['zoom score'], r['zoom stat']) <= 20 else 'MISSED'}")
    print("250 series of that worker at once, read_many against a loop of read_series:")
    for name, label in (("downsampled", "each downsampled to 200 points"),
                        ("tick", "a live tick: the last 100 updates of each")):
        print(f"  {label:<48} {r[f'many {name}']:7.1f} ms ({r[f'many {name} statements']:.0f} "
              f"statements) against {r[f'loop {name}']:7.1f} ms ({r[f'loop {name} statements']:.0f})")
    print(f"sessions() of 3 workers x {n:,} updates:")
    print(f"  {'before (min, max, count over every update)':<48} {r['sessions before']:7.2f} ms")
    print(f"  {'now, a new store object (counts every update)':<48} {r['sessions first']:7.2f} ms")
    print(f"  {'now, each later call (counts the new ones)':<48} {r['sessions']:7.2f} ms")
    print(f"  {'changes()':<48} {r['changes']:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--read-updates", type=int, default=100_000,
                        help="updates of the worker read back (default 100,000)")
    parser.add_argument("--postgres", default=None, metavar="auto|URL",
                        help="also a PostgreSQL store: auto starts a throw-away server")
    args = parser.parse_args()
    if args.postgres:
        return compare_postgres(args)
    updates = realistic_updates(args.updates, "bench")
    with tempfile.TemporaryDirectory() as folder:
        ours_1 = bench_ours(updates, folder, 1)
        ours_10 = bench_ours(updates, folder, 10)
        tb = bench_tensorboard(updates, folder)
        path = os.path.join(folder, "long.db")
        fill_long(path, args.read_updates)
        reads = bench_reads(path, args.read_updates)
    print(f"\nwrite rate, {args.updates} updates of a 10-layer model "
          "(70 summaries x 9 statistics + 20-bin histogram each):")
    print(f"  {'embedviz SQLite, one transaction per update':<48} {ours_1:10.1f} updates/s")
    print(f"  {'embedviz SQLite, 10 updates per transaction':<48} {ours_10:10.1f} updates/s")
    print(f"  {'TensorBoard SummaryWriter (same content)':<48} {tb:10.1f} updates/s")
    print(f"  ratio embedviz (one per transaction) / TensorBoard: {ours_1 / tb:.1f}x "
          f"(target >= 1.0x: {'met' if ours_1 >= tb else 'MISSED'})")
    report_reads(reads, args.read_updates)


def compare_postgres(args: argparse.Namespace) -> None:
    """The writes, the reads and the overview page on SQLite and PostgreSQL, side by side."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
    sys.path.insert(0, os.path.dirname(__file__))
    from bench_app import fill_training, timed_page
    from pgcluster import Cluster

    cluster = Cluster() if args.postgres == "auto" else None
    url = (lambda: cluster.url()) if cluster else (lambda: args.postgres)  # noqa: E731
    updates = realistic_updates(args.updates, "bench")
    n = args.read_updates
    rows: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for _name, target in (("SQLite", None), ("PostgreSQL", url())):
                rows.setdefault("write, 1 update a transaction (updates/s)", []).append(
                    bench_ours(updates, folder, 1, target))
                rows.setdefault("write, 10 updates a transaction (updates/s)", []).append(
                    bench_ours(updates, folder, 10, target and url()))
                long = url() if target else os.path.join(folder, "long.db")
                fill_long(long, n)
                r = bench_reads(long, n)
                for key, label in (("whole score", "whole score to 1,000 points (ms)"),
                                   ("whole stat", "whole statistic to 1,000 points (ms)"),
                                   ("zoom stat", "zoom into 1% (ms)"),
                                   ("many downsampled", "250 series at once, to 200 points (ms)"),
                                   ("many tick", "250 series, a live tick (ms)"),
                                   ("sessions", "sessions() (ms)"), ("changes", "changes() (ms)")):
                    rows.setdefault(label, []).append(r[key])
                app = url() if target else os.path.join(folder, "app.db")
                session = fill_training(app, n, 10)
                rows.setdefault(f"overview page of {n:,} iterations x 10 layers (s)", []).append(
                    timed_page(app, "overview", session))
    finally:
        if cluster:
            cluster.close()
    print(f"\n{'':<52} {'SQLite':>12} {'PostgreSQL':>12}")
    for label, (a, b) in rows.items():
        print(f"{label:<52} {a:12.2f} {b:12.2f}")


if __name__ == "__main__":
    main()

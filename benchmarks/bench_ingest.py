"""The ingest endpoint under load: concurrent posters on loopback into `embedviz serve`.

``--posters`` threads (default 50) post for ``--seconds`` (default 60) to a server process
(`embedviz serve STORE --token-file F`, a fresh store): each its own session, posts of
``--batch`` listener-like updates (8 layers: parameters, gradients, updates and activations,
9 statistics and a 20-bin histogram each), gzip JSON lines with seqs, as a RemoteStore
sends them. A post answered 429 or not answered is sent again (the seqs keep it once).
Prints the 5xx count (must be 0), the records posted against those counted in the store
(every one exactly once), records/s, p50/p99 latency of a post, and beside them the same
records written straight into the backend (``store.write``, one batch a transaction, one
writer). SQLite always; PostgreSQL too with ``--postgres auto`` (a throw-away server, as the
tests start) or ``--postgres URL``, or when ``EMBEDVIZ_TEST_POSTGRES_URL`` is set.

    python benchmarks/bench_ingest.py [--seconds 60] [--posters 50] [--batch 20] [--postgres auto|URL]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import embedviz
from embedviz.records import Histogram, Session, Summary, Update, record_from_dict
from embedviz.store import codec

KINDS = ("param", "gradient", "update")


def template(layers: int = 8) -> str:
    """One update's JSON line with placeholders for its session, iteration and seq."""
    rng = np.random.default_rng(0)
    summaries = {}
    for layer in range(layers):
        for target in [f"{k}/layer{layer}.weight" for k in KINDS] + [f"activation/layer{layer}"]:
            v = rng.normal(0, 0.1, 256)
            counts, edges = np.histogram(v, bins=20)
            summaries[target] = Summary(count=4096, mean=v.mean(), stdev=v.std(),
                                        mean_magnitude=np.abs(v).mean(), min=v.min(),
                                        max=v.max(), histogram=Histogram(edges, counts))
    u = Update("SESSION", "0", 987654321, score=0.5, epoch=0, wall_time=time.time(),
               scalars={"lr/0": 0.01, "timing/iteration_ms": 12.0}, summaries=summaries)
    d = u.to_dict()
    d["seq"] = "SEQ"
    return codec.dumps(d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Poster:
    """One client: its session, counts and latencies."""

    index: int
    session: str
    posted: int = 0  # records acknowledged (written or duplicates)
    written: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    latencies: list[float] = field(default_factory=list)
    failure: str = ""


def run_poster(p: Poster, port: int, token: str, line: str, batch: int, deadline: float,
               start: threading.Barrier) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip",
               "Content-Type": "application/x-ndjson"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    first = codec.dumps({**Session(id=p.session).to_dict(), "seq": f"{p.session}:s"})
    it = 0
    start.wait()
    while time.monotonic() < deadline:
        lines = [first] if it == 0 else []
        for _ in range(batch):
            lines.append(line.replace("SESSION", p.session).replace("987654321", str(it))
                         .replace('"SEQ"', f'"{p.session}:{it}"'))
            it += 1
        body = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1)
        while True:  # (the same body until it is taken: its seqs keep it once)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/ingest", body=body, headers=headers)
                resp = conn.getresponse()
                reply = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if time.monotonic() > deadline + 120:  # (the server is gone: say so, stop)
                    p.failure = f"no answer from the server ({exc})"
                    return
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                p.retries += 1
                time.sleep(0.05)
                continue
            p.statuses[resp.status] = p.statuses.get(resp.status, 0) + 1
            if resp.status == 200:
                p.latencies.append(time.perf_counter() - t0)
                got = codec.loads(reply)
                p.written += got["written"]
                p.posted += got["written"] + got["duplicates"]
                break
            if resp.status in (429, 503):
                p.retries += 1
                time.sleep(0.05)
                continue
            raise SystemExit(f"poster {p.index}: {resp.status} {reply[:300]!r}")
    conn.close()


def serve(target: str, folder: str, token: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    token_file = os.path.join(folder, "token")
    with open(token_file, "w") as f:
        f.write(token)
    os.chmod(token_file, 0o600)
    log = open(os.path.join(folder, "serve.log"), "ab")
    proc = subprocess.Popen([sys.executable, "-m", "embedviz.cli", "serve", target, "--port",
                             str(port), "--token-file", token_file], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/ingest", body=b"", headers={"Authorization": f"Bearer {token}"})
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"embedviz serve did not start: see {folder}/serve.log")


def counted(target: str, sessions: list[str]) -> int:
    """Records in the store of these sessions: the sessions and their updates."""
    with embedviz.open_store(target) as store:
        return sum(1 + len(store.read_series(s, "score")) for s in sessions)


def direct(target: str, line: str, batch: int, n: int) -> float:
    """Records/s of ``n`` of the same records written straight into ``target``."""
    updates = [record_from_dict({k: v for k, v in codec.loads(
        line.replace("SESSION", "direct").replace("987654321", str(i))).items() if k != "seq"})
        for i in range(batch)]
    with embedviz.open_store(target) as store:
        store.write([Session(id="direct")])
        t0 = time.perf_counter()
        done = 0
        while done < n:
            for i, u in enumerate(updates):
                u.iteration = done + i
            store.write(updates)
            done += batch
        return done / (time.perf_counter() - t0)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bench(name: str, target: str, fresh: str, args: argparse.Namespace) -> dict:
    token = secrets.token_urlsafe(32)
    line = template()
    with tempfile.TemporaryDirectory() as folder:
        proc, port = serve(target, folder, token)
        say(f"{name}: {args.posters} posters for {args.seconds:g} s")
        try:
            posters = [Poster(i, f"bench-{i}") for i in range(args.posters)]
            start = threading.Barrier(args.posters + 1)
            deadline = time.monotonic() + args.seconds + 1  # (+ the start)
            threads = [threading.Thread(target=run_poster, daemon=True, args=(
                p, port, token, line, args.batch, deadline, start)) for p in posters]
            for t in threads:
                t.start()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
        finally:
            if proc.poll() is not None:  # (it died: its log says why)
                with open(os.path.join(folder, "serve.log"), errors="replace") as f:
                    print(f.read()[-3000:], file=sys.stderr)
            proc.terminate()
            proc.wait(30)
        failed = [p.failure for p in posters if p.failure]
        if failed:
            raise SystemExit(f"{name}: {len(failed)} posters failed ({failed[0]}): see the "
                             "server's log above")
        say(f"{name}: counting what the store holds")
        posted = sum(p.posted for p in posters)
        unique = sum(p.written for p in posters)
        stored = counted(target, [p.session for p in posters])
        lat = np.array([x for p in posters for x in p.latencies]) * 1000
        statuses: dict[int, int] = {}
        for p in posters:
            for k, v in p.statuses.items():
                statuses[k] = statuses.get(k, 0) + v
        n_direct = min(max(unique // 2, args.batch * 10), 50_000)
        say(f"{name}: {n_direct} records straight into the backend")
        return {"backend": name, "posts": len(lat), "5xx": sum(v for k, v in statuses.items()
                                                                if k >= 500),
                "statuses": statuses, "retries": sum(p.retries for p in posters),
                "posted": posted, "written": unique, "stored": stored,
                "rate": unique / elapsed, "p50": float(np.percentile(lat, 50)),
                "p99": float(np.percentile(lat, 99)), "direct": direct(fresh, line, args.batch,
                                                                       n_direct)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--posters", type=int, default=50)
    parser.add_argument("--batch", type=int, default=20, help="updates per post")
    parser.add_argument("--postgres", default=None, metavar="auto|URL",
                        help="also PostgreSQL: auto starts a throw-away server")
    args = parser.parse_args()
    if args.postgres is None and os.environ.get("EMBEDVIZ_TEST_POSTGRES_URL"):
        args.postgres = "auto"  # (the cluster helper uses that server)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        results.append(bench("SQLite", os.path.join(folder, "ingest.db"),
                             os.path.join(folder, "direct.db"), args))
    if args.postgres:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
        from pgcluster import Cluster

        cluster = Cluster() if args.postgres == "auto" else None
        try:
            def url(schema: str) -> str:
                if cluster is not None:
                    return cluster.url(schema)
                sep = "&" if "?" in args.postgres else "?"
                return f"{args.postgres}{sep}schema={schema}"

            tag = secrets.token_hex(4)
            results.append(bench("PostgreSQL", url(f"ingest_{tag}"), url(f"direct_{tag}"), args))
        finally:
            if cluster is not None:
                cluster.close()
    print(f"\n{args.posters} posters x {args.seconds:g} s on loopback, {args.batch} updates a post "
          "(8 layers x 4 kinds, 20-bin histograms):")
    print(f"{'backend':<11} {'5xx':>4} {'posts':>7} {'retries':>7} {'posted':>8} {'stored':>8} "
          f"{'once':>5} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'store.write rec/s':>18}")
    for r in results:
        once = "yes" if r["stored"] == r["written"] else "NO"
        print(f"{r['backend']:<11} {r['5xx']:>4} {r['posts']:>7} {r['retries']:>7} "
              f"{r['posted']:>8} {r['stored']:>8} {once:>5} {r['rate']:>10.0f} "
              f"{r['p50']:>8.1f} {r['p99']:>8.1f} {r['direct']:>18.0f}")
        if r["5xx"]:
            print(f"  statuses: {r['statuses']}")


if __name__ == "__main__":
    main()

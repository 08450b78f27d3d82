"""The ingest endpoint of `embedviz serve` (server/ingest.py), over HTTP against a real server
process and a real SQLite store: the token, good posts stored once, malformed ones refused
with a 4xx that names the lines and leaves the store as it was, and a fuzz run with the
server's memory watched."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import embedviz
from embedviz.records import Histogram, Metric, Session, Static, Summary, Update
from embedviz.store import codec

TOKEN = "test-token-" + "k" * 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`embedviz serve STORE [--token-file FILE]` in a process of its own, on a fixed port:
    stop() and start() it again on the same port (an outage)."""

    def __init__(self, store: str | Path, folder: Path, *, token: str | None = TOKEN,
                 port: int | None = None) -> None:
        self.store, self.folder = str(store), folder
        self.port = port or free_port()
        self.token_file: Path | None = None
        self.token = token
        if token is not None:
            self.token_file = folder / "token"
            self.token_file.write_text(token + "\n")
            self.token_file.chmod(0o600)
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        args = [sys.executable, "-m", "embedviz.cli", "serve", self.store, "--port", str(self.port)]
        if self.token_file is not None:
            args += ["--token-file", str(self.token_file)]
        log = open(self.folder / f"serve-{self.port}.log", "ab")  # (never a full pipe)
        with log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / f"serve-{self.port}.log").read_text()
            try:
                status, _ = post(self.url, b"", token=self.token)  # (503: the app loads)
                if status != 503:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("embedviz serve did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Serve:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def post(url: str, body: bytes, *, token: str | None = TOKEN, compress: bool = False,
         headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    """POST ``body`` to ``url``/ingest; (status, the reply's JSON)."""
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    h = {"Content-Type": "application/x-ndjson"}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if compress:
        body = gzip.compress(body)
        h["Content-Encoding"] = "gzip"
    h.update(headers or {})
    try:
        conn.request("POST", "/ingest", body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        reply = json.loads(data)
    except ValueError:
        reply = {"raw": data[:200]}
    return resp.status, reply


def raw_status(url: str, head: bytes) -> int:
    """The status the server answers a request's head with, before any body."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        got = s.recv(200)
    return int(got.split()[1])


def line(record, seq: str | None = None) -> bytes:
    d = record.to_dict()
    if seq is not None:
        d["seq"] = seq
    return codec.dumps(d).encode() + b"\n"


def update(session: str, iteration: int, *, bins: int = 8, worker: str = "0") -> Update:
    rng = np.random.default_rng(iteration)
    values = rng.normal(size=100)
    counts, edges = np.histogram(values, bins=bins)
    s = Summary(count=100, mean=float(values.mean()), stdev=float(values.std()),
                mean_magnitude=float(np.abs(values).mean()), min=float(values.min()),
                max=float(values.max()), histogram=Histogram(edges, counts))
    return Update(session, worker, iteration, score=1.0 / (1 + iteration),
                  scalars={"lr/0": 0.01}, summaries={"param/fc.weight": s, "activation/fc": s})


def export(path: Path) -> str:
    with embedviz.open_store(f"{path}?readonly=1") as store:
        out = io.StringIO()
        store.export_jsonl(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server over one SQLite file for the module; a session "s" in it."""
    folder = tmp_path_factory.mktemp("ingest")
    db = folder / "runs.db"
    with Serve(db, folder) as server:
        status, reply = post(server.url, line(Session(id="s", name="ingest"), "setup:0"))
        assert status == 200, reply
        yield server, db


# ---------------------------------------------------------------------- the token
def test_no_token_file_refuses_posts_saying_how_to_enable_them(tmp_path):
    with Serve(tmp_path / "runs.db", tmp_path, token=None) as server:
        status, reply = post(server.url, line(Session(id="a")), token=TOKEN)
        assert status == 403
        assert "--token-file" in reply["error"]
    assert not (tmp_path / "runs.db").exists() or not export(tmp_path / "runs.db")


def test_missing_or_wrong_token_is_refused_and_stores_nothing(served):
    server, db = served
    before = export(db)
    body = line(Session(id="intruder"))
    for token, headers in ((None, {}), ("w" * 40, {}), (TOKEN[:-1], {}),
                           (None, {"Authorization": f"Basic {TOKEN}"}),
                           (None, {"Authorization": "Bearer "})):
        status, reply = post(server.url, body, token=token, headers=headers)
        assert status == 401, (token, headers, reply)
        assert "token" in reply["error"] and TOKEN not in reply["error"]
    assert export(db) == before


def test_token_file_is_checked_when_the_server_starts(tmp_path):
    (tmp_path / "token").write_text("short\n")
    proc = subprocess.run([sys.executable, "-m", "embedviz.cli", "serve", str(tmp_path / "r.db"),
                           "--port", str(free_port()), "--token-file", str(tmp_path / "token")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "16 to 4096 printable ASCII" in proc.stderr and "short" not in proc.stderr


# ---------------------------------------------------------------------- good posts
def test_a_post_is_stored_once_however_often_it_is_sent(served):
    server, db = served
    records = [Metric("s", "acc", 0.5 + i / 100, i) for i in range(20)] + [update("s", 7)]
    body = b"".join(line(r, f"once:{i}") for i, r in enumerate(records))
    status, reply = post(server.url, body, compress=True)
    assert (status, reply) == (200, {"written": 21, "duplicates": 0})
    status, reply = post(server.url, body)  # (a retry after a lost reply)
    assert (status, reply) == (200, {"written": 0, "duplicates": 21})
    with embedviz.open_store(f"{db}?readonly=1") as store:
        assert len(store.read_series("s", "metric/acc")) == 20
        assert store.read_series("s", "score").iterations.tolist() == [7]
        h = store.read_histograms("s", "param/fc.weight")
        assert len(h) == 1 and h[0].histogram == records[-1].summaries["param/fc.weight"].histogram


def test_an_export_posted_as_is_twice_is_stored_once(served, tmp_path):
    """`curl --data-binary @runs.jsonl`: lines without seqs; the same line again is no new record."""
    server, db = served
    src = tmp_path / "src.db"
    with embedviz.open_store(src) as store:
        store.create_session("exported")
        store.write([update("exported", i) for i in range(3)])
        store.log_metric("exported", "val", 0.5, 2)
        body = io.StringIO()
        store.export_jsonl(body)
    data = body.getvalue().encode()
    assert post(server.url, data) == (200, {"written": 5, "duplicates": 0})
    assert post(server.url, data, compress=True) == (200, {"written": 0, "duplicates": 5})
    with embedviz.open_store(f"{db}?readonly=1") as store:
        assert store.read_series("exported", "score").iterations.tolist() == [0, 1, 2]
        assert len(store.read_series("exported", "metric/val")) == 1


def test_gzip_without_its_header_and_a_token_in_the_query_are_named_and_never_logged(served):
    server, _ = served
    status, reply = post(server.url, gzip.compress(line(Metric("s", "g", 1.0, 1))))
    assert status == 400 and "Content-Encoding: gzip" in reply["error"]
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", f"/ingest?token={TOKEN}", body=b"x", headers={"Content-Length": "1"})
    assert conn.getresponse().status == 401
    conn.close()
    time.sleep(0.5)
    assert TOKEN not in (server.folder / f"serve-{server.port}.log").read_text()


def test_a_connection_cut_mid_post_stores_nothing_and_a_resent_post_is_stored_once(served):
    server, db = served
    records = [Metric("s", "cut", float(i), i) for i in range(30)]
    body = b"".join(line(r, f"cut:{i}") for i, r in enumerate(records))
    head = (f"POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    before = export(db)
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:  # half the body, then gone
        s.sendall(head + body[: len(body) // 2])
    time.sleep(0.3)
    assert export(db) == before
    with socket.create_connection(("127.0.0.1", port)) as s:  # whole, gone before the reply
        s.sendall(head + body)
    deadline = time.monotonic() + 10
    while export(db) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    status, reply = post(server.url, body)  # the client's retry
    assert status == 200 and reply["written"] + reply["duplicates"] == 30
    with embedviz.open_store(f"{db}?readonly=1") as store:
        assert store.read_series("s", "metric/cut").iterations.tolist() == list(range(30))


def test_nan_and_infinity_are_taken_as_the_export_format_takes_them(served):
    server, db = served
    u = b'{"type":"update","session":"s","worker":"nan","iteration":1,"score":NaN,' \
        b'"scalars":{"lr/0":Infinity,"x/1":{"$float":"-Infinity"}},"seq":"nan:1"}\n'
    status, reply = post(server.url, u)
    assert (status, reply) == (200, {"written": 1, "duplicates": 0})
    with embedviz.open_store(f"{db}?readonly=1") as store:
        assert math.isnan(store.read_series("s", "score", worker="nan").values[0])
        assert store.read_series("s", "lr/0", worker="nan").values[0] == math.inf
        assert store.read_series("s", "x/1", worker="nan").values[0] == -math.inf
    before = export(db)
    for bad in (b'"iteration":NaN', b'"iteration":Infinity', b'"iteration":1e400'):
        status, reply = post(server.url, u.replace(b'"iteration":1', bad))
        assert status == 400 and reply["lines"] == [1], reply
    assert export(db) == before


# ---------------------------------------------------------------------- malformed posts
def _bomb() -> bytes:
    z = io.BytesIO()
    with gzip.GzipFile(fileobj=z, mode="wb", compresslevel=9) as f:
        chunk = b"\0" * 2**20
        for _ in range(1024):  # 1 GB of zeros, ~1 MB compressed
            f.write(chunk)
    return z.getvalue()


def _deep(levels: int) -> bytes:
    return (b'{"type":"static","session":"s","worker":"0","info":' + b'{"a":' * levels
            + b'1' + b'}' * levels + b'}\n')


def _bins(n: int) -> bytes:
    u = update("s", 99).to_dict()
    u["summaries"]["param/fc.weight"]["histogram"] = {
        "edges": list(range(n + 1)), "counts": [0] * n, "underflow": 0, "overflow": 0}
    return codec.dumps(u).encode() + b"\n"


GOOD = line(Metric("s", "good", 1.0, 1), "good:1")
MALFORMED = {
    "not json": (b"hello\n", 400),
    "a json array": (b"[1, 2]\n", 400),
    "unknown type": (b'{"type":"nope"}\n', 400),
    "missing field": (b'{"type":"metric","session":"s","name":"x","value":1}\n', 400),
    "wrong type": (b'{"type":"metric","session":"s","name":"x","value":"1","iteration":1}\n', 400),
    "bool iteration": (b'{"type":"metric","session":"s","name":"x","value":1,"iteration":true}\n', 400),
    "huge int": (b'{"type":"metric","session":"s","name":"x","value":1,"iteration":' + b"9" * 30 + b"}\n", 400),
    "huge overflow": (_bins(4).replace(b'"overflow":0', b'"overflow":' + b"9" * 25), 400),
    "bad seq": (GOOD.replace(b'"seq":"good:1"', b'"seq":5'), 400),
    "long seq": (GOOD.replace(b'"seq":"good:1"', b'"seq":"' + b"q" * 300 + b'"'), 400),
    "bad $array": (_bins(4).replace(b'"edges":[', b'"edges":{"$array":{"dtype":"object","shape":[1],"data":"AA=="}},"x":['), 400),
    "not utf-8": (GOOD + b'{"type":"session","session":"\xff\xfe"}\n', 400),
    "lone surrogate": (b'{"type":"session","session":"a\\ud800b"}\n', 400),
    "nul": (b'{"type":"session","session":"a\\u0000b"}\n', 400),
    "deep nesting": (_deep(100), 400),
    "deeper than the parser": (_deep(100_000), 400),
    "brackets": (b"[" * 300_000 + b"\n", 413),
    "20k bins": (_bins(20_000), 400),
    "a million bins": (_bins(1_000_000), 413),
    "10 MB of junk": (b'{"type":"static","session":"s","worker":"0","info":{"a":"' + b"x" * (10 * 2**20) + b'"}\n' + b"}{\n", 400),
    "10 MB of records": (GOOD * 70_000, 413),
    "unknown session": (GOOD + line(Metric("nobody", "x", 1.0, 1), "u:1") * 2, 422),
    "good lines and a bad one": (GOOD * 3 + b"{}\n" + GOOD, 400),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_post_gets_a_4xx_naming_its_lines_and_stores_nothing(served, name):
    server, db = served
    body, want = MALFORMED[name]
    before = export(db)
    for compress in (False, True):
        status, reply = post(server.url, body, compress=compress)
        assert status == want, (name, compress, reply)
        assert reply["error"]
    assert export(db) == before
    if name == "unknown session":
        assert reply["lines"] == [2, 3] and "nobody" in reply["error"]
    if name == "good lines and a bad one":
        assert reply["lines"] == [4] and reply["error"].startswith("line 4:")
    if name == "not utf-8":
        assert reply["lines"] == [2] and "UTF-8" in reply["error"]


def test_limits_on_the_body_hold_before_and_after_gzip(served):
    server, db = served
    before = export(db)
    status, reply = post(server.url, _bomb(), headers={"Content-Encoding": "gzip"})
    assert status == 413 and "decompresses" in reply["error"]
    head = f"POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
    assert raw_status(server.url, (head + "Content-Length: 20000000\r\n\r\n").encode()) == 413
    assert raw_status(server.url, (head + "Transfer-Encoding: chunked\r\n\r\n").encode()) == 411
    for length in (b"abc", b"-5", b"1, 2", b"\xb2", "\u0661".encode()):
        assert raw_status(server.url, head.encode() + b"Content-Length: " + length + b"\r\n\r\n") == 400
    for headers, want in (({"Content-Encoding": "br"}, 415), ({"Content-Encoding": "gzip"}, 400)):
        status, reply = post(server.url, GOOD, headers=headers)
        assert status == want, reply
    status, reply = post(server.url, gzip.compress(GOOD)[:-5], headers={"Content-Encoding": "gzip"})
    assert status == 400 and "ends early" in reply["error"]
    assert export(db) == before


# ---------------------------------------------------------------------- fuzz
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
_BASE = [Session(id="s").to_dict(), Static("s", "fz", {"layers": 2}).to_dict(),
         update("s", 3, worker="fz").to_dict(), Metric("s", "m", 1.0, 2, "fz").to_dict()]


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


@st.composite
def _mutated_line(draw) -> bytes:
    d = json.loads(codec.dumps(draw(st.sampled_from(_BASE))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(d))))
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            parent[path[-1]] = draw(_json)
        else:
            del parent[path[-1]]
            if not d:
                break
    text = json.dumps(d, allow_nan=True).encode()  # (NaN and Infinity as bare tokens)
    cut = draw(st.sampled_from(["none", "none", "truncate", "bytes"]))
    if cut == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif cut == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    return text + b"\n"


_seq = iter(range(10**9))


@st.composite
def _body(draw) -> bytes:
    lines = draw(st.lists(_mutated_line(), min_size=1, max_size=3))
    good = [line(Metric("s", "fz", 1.0, next(_seq), "fz"), f"fz:{next(_seq)}")]
    lines.insert(draw(st.integers(0, len(lines))), good[0])
    return b"".join(lines)


@pytest.mark.slow
def test_fuzzed_posts_get_only_4xx_and_leave_the_store_unchanged_with_memory_bounded(served):
    server, db = served
    proc = psutil.Process(server.proc.pid)
    for body, _ in MALFORMED.values():  # (warm up: the allocator's high-water mark)
        post(server.url, body)
    post(server.url, _bomb(), headers={"Content-Encoding": "gzip"})
    rss0 = proc.memory_info().rss
    seen = {"ok": 0, "4xx": 0}

    @settings(max_examples=int(os.environ.get("EMBEDVIZ_FUZZ", "150")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=_body(), compress=st.booleans(),
           token=st.sampled_from([TOKEN] * 8 + [None, "x" * 40]))
    def check(body, compress, token):
        before = export(db)
        status, reply = post(server.url, body, compress=compress, token=token)
        assert status == 200 or 400 <= status < 500, (status, reply, body[:300])
        if status != 200:
            seen["4xx"] += 1
            assert reply.get("error"), reply
            assert export(db) == before, (status, reply)
        else:
            seen["ok"] += 1

    check()
    for body, _ in MALFORMED.values():  # (the large ones again, after the fuzz)
        assert post(server.url, body)[0] < 500
    grown = proc.memory_info().rss - rss0
    assert seen["4xx"] > 0
    assert grown < 64 * 2**20, f"the server's memory grew by {grown / 2**20:.0f} MB"

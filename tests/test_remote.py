"""The remote router (embedviz/store/remote.py): a RemoteStore and a StatsListener posting to
a real `embedviz serve` process over a real SQLite file; retries stored once; an outage
spooled and sent afterwards without slowing the training; `embedviz sync`."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from embedviz.monitor import StatsListener

import embedviz
from embedviz.cli import main
from embedviz.errors import StoreError, StoreOpenError
from embedviz.records import Metric, Session, Static
from embedviz.store import codec
from embedviz.store.remote import RemoteStore, Spool, SpoolBusyError
from tests.test_ingest import TOKEN, Serve, free_port, update


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """The default spool under this test's folder; no token from the environment."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EMBEDVIZ_TOKEN", raising=False)
    monkeypatch.delenv("EMBEDVIZ_TOKEN_FILE", raising=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote")
    with Serve(folder / "runs.db", folder) as server:
        yield server, folder / "runs.db"


def read(db: Path):
    return embedviz.open_store(f"{db}?readonly=1")


def lines_in(folder: str | Path) -> list[dict]:
    return [codec.loads(x) for p in sorted(Path(folder).glob("*.jsonl"))
            for x in p.read_bytes().splitlines() if x]


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model, torch.randn(256, 16), torch.randint(0, 4, (256,))


def step(model, opt, listener, X, y, i):
    xb, yb = X[(i * 32) % 224:(i * 32) % 224 + 32], y[(i * 32) % 224:(i * 32) % 224 + 32]
    loss = torch.nn.functional.cross_entropy(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    listener.step(loss)


# ---------------------------------------------------------------------- opening
def test_the_token_comes_from_the_argument_the_environment_or_a_file_and_is_never_shown(
        tmp_path, monkeypatch):
    url = "http://127.0.0.1:9"
    with pytest.raises(StoreOpenError, match="EMBEDVIZ_TOKEN_FILE"):
        embedviz.open_store(url)
    store = embedviz.open_store(url, token=TOKEN)
    assert isinstance(store, RemoteStore) and store.url == url
    assert TOKEN not in repr(store) and TOKEN not in store.url
    store.close()
    monkeypatch.setenv("EMBEDVIZ_TOKEN", TOKEN)
    embedviz.open_store(url + "/").close()
    monkeypatch.delenv("EMBEDVIZ_TOKEN")
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    monkeypatch.setenv("EMBEDVIZ_TOKEN_FILE", str(tmp_path / "token"))
    embedviz.open_store(url).close()
    (tmp_path / "token").write_text("short secret")
    with pytest.raises(StoreOpenError, match="16 to 4096") as err:
        embedviz.open_store(url)
    assert "short secret" not in str(err.value)
    for bad in (f"http://user:{TOKEN}@host:5006", f"http://host:5006/?token={TOKEN}"):
        with pytest.raises(StoreOpenError, match="token=") as err:
            embedviz.open_store(bad, token=TOKEN)
        assert TOKEN not in str(err.value)
    with pytest.raises(StoreOpenError, match="only takes writes"):
        embedviz.open_store(url, token=TOKEN, readonly=True)
    with pytest.raises(StoreOpenError, match="token= is for a server"):
        embedviz.open_store(str(tmp_path / "r.db"), token=TOKEN)


def test_every_read_says_the_way_out():
    with embedviz.open_store("http://127.0.0.1:9", token=TOKEN) as store:
        for read_it in (store.sessions, lambda: store.session("s"), store.changes,
                        lambda: store.read_series("s", "score"), store.embeddings,
                        lambda: store.findings(), lambda: list(store.records()),
                        lambda: store.export_jsonl("/dev/null")):
            with pytest.raises(StoreError, match="only takes writes.*open the app"):
                read_it()


# ---------------------------------------------------------------------- through the server
def test_a_listener_given_the_servers_address_records_through_it(served, tmp_path, monkeypatch):
    server, db = served
    monkeypatch.setenv("EMBEDVIZ_TOKEN_FILE", str(server.token_file))
    listener = StatsListener(server.url, 5, session="remote-run", budget=None, max_pending=1000)
    remote = listener.store
    assert isinstance(remote, RemoteStore)
    model, X, y = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with listener.attach(model, opt):
        for i in range(40):
            step(model, opt, listener, X, y, i)
    # (the listener opened the store, so it closed it: what it wrote is delivered)
    assert remote.waiting == 0 and remote.dropped == 0 and remote.rejected == 0
    assert remote.written == remote.sent > 8
    assert not Path(remote.spool_path).exists()
    with read(db) as store:
        assert store.read_series("remote-run", "score").iterations.tolist() == list(range(0, 40, 5))
        assert store.static("remote-run")["optimizer"]["type"] == "SGD"
        hists = store.read_histograms("remote-run", "param/0.weight")
        assert [h.iteration for h in hists] == list(range(0, 40, 5))


def test_a_script_that_ends_without_removing_its_listener_delivers_everything(served, tmp_path):
    server, db = served
    script = f"""
import torch
from embedviz.monitor import StatsListener
listener = StatsListener({server.url!r}, 5, session="atexit", budget=None, max_pending=1000)
model = torch.nn.Linear(8, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
listener.attach(model, opt)
for i in range(30):
    loss = model(torch.randn(4, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    listener.step(loss)
"""
    env = {**os.environ, "EMBEDVIZ_TOKEN_FILE": str(server.token_file),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "embedviz sync" not in done.stderr and "lost" not in done.stderr, done.stderr
    with read(db) as store:
        assert store.read_series("atexit", "score").iterations.tolist() == list(range(0, 30, 5))


class CuttingProxy:
    """A TCP proxy to the server that hands the first ``cut`` posts on and then closes the
    client's connection instead of returning the reply (a reply lost on the way)."""

    def __init__(self, port: int, cut: int) -> None:
        self.upstream, self.cut, self.cuts = port, cut, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    @staticmethod
    def _message(sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return None, buf
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                return None, b""
            rest += data
        return head + b"\r\n\r\n" + rest[:n], rest[n:]

    def _serve(self, client: socket.socket) -> None:
        buf = b""
        with client:
            while True:
                request, buf = self._message(client, buf)
                if request is None:
                    return
                with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                    up.sendall(request)
                    reply, _ = self._message(up, b"")
                if reply is None or self.cuts < self.cut:
                    self.cuts += 1
                    return  # (the server has stored it; the client never hears so)
                client.sendall(reply)

    def close(self) -> None:
        self.sock.close()


def test_a_reply_lost_on_the_way_is_retried_and_the_records_stored_once(served, tmp_path):
    server, db = served
    proxy = CuttingProxy(server.port, cut=2)
    remote = RemoteStore(proxy.url, TOKEN, spool=tmp_path / "spool")
    remote.write([Session(id="cut")])
    for j in range(5):
        remote.write([Metric("cut", "m", float(i), i) for i in range(20 * j, 20 * j + 20)])
        time.sleep(0.05)
    remote.close(timeout=30)
    proxy.close()
    assert proxy.cuts == 2
    assert remote.duplicates >= 1  # (what the cut posts had stored came again)
    assert remote.sent == 101 and remote.waiting == 0 and remote.dropped == 0
    with read(db) as store:
        assert store.read_series("cut", "metric/m").iterations.tolist() == list(range(100))


def test_records_the_server_rejects_are_logged_once_and_not_sent_again(served, tmp_path, caplog):
    server, db = served
    remote = RemoteStore(server.url, TOKEN, spool=tmp_path / "spool")
    with caplog.at_level(logging.WARNING, logger="embedviz.remote"):
        remote.write([Session(id="fine"), Metric("fine", "m", 1.0, 1)])
        for i in range(3):
            remote.write([Metric("nobody", "m", 1.0, i)])
            time.sleep(0.05)
        remote.close()
    assert (remote.rejected, remote.written, remote.waiting) == (3, 2, 0)
    said = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(said) == 2 and "unknown session(s) ['nobody']" in said[0]  # (and the summary)
    with read(db) as store:
        assert store.read_series("fine", "metric/m").iterations.tolist() == [1]


def test_write_never_waits_on_a_server_that_does_not_answer(tmp_path):
    hole = socket.create_server(("127.0.0.1", 0), backlog=64)  # accepts, never answers
    url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    remote = RemoteStore(url, TOKEN, spool=tmp_path / "spool", timeout=1.0, close_timeout=1.0)
    slowest = 0.0
    remote.write([Session(id="hole")])
    for i in range(3000):
        t0 = time.perf_counter()
        remote.write([Metric("hole", "m", float(i), i)])
        slowest = max(slowest, time.perf_counter() - t0)
    t0 = time.monotonic()
    remote.close()
    took = time.monotonic() - t0
    hole.close()
    assert slowest < 0.5, f"a write took {slowest * 1000:.0f} ms"  # (a post waits 1 s here)
    assert took < 5.0, f"close took {took:.1f} s"
    kept = lines_in(remote.spool_path)
    assert len(kept) == 3001 == remote.spooled and remote.dropped == 0
    assert [d["iteration"] for d in kept[1:]] == list(range(3000)) and kept[0]["type"] == "session"


# ---------------------------------------------------------------------- outage and spool
@pytest.mark.slow
def test_an_outage_is_spooled_and_sent_afterwards_without_slowing_the_training(tmp_path):
    db = tmp_path / "runs.db"
    server = Serve(db, tmp_path).start()
    remote = RemoteStore(server.url, TOKEN, spool=tmp_path / "spool", close_timeout=30)
    listener = StatsListener(remote, 10, session="outage", budget=None, max_pending=1000)
    model, X, y = model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    times: dict[str, list[float]] = {"up": [], "down": [], "back": []}
    i = 0
    try:
        with listener.attach(model, opt):
            for phase, seconds in (("up", 1.5), ("down", 3.0), ("back", 1.0)):
                if phase == "down":
                    server.stop()
                elif phase == "back":
                    assert remote.spooled > 0 and Path(remote.spool_path).is_dir()
                    server.start()  # (the same port)
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    step(model, opt, listener, X, y, i)
                    times[phase].append(time.perf_counter() - t0)
                    i += 1
        remote.close()
        with read(db) as store:
            stored = store.read_series("outage", "score").iterations.tolist()
    finally:
        server.stop()
    reported = list(range(0, i, 10))
    assert listener.dropped_reports == 0
    assert remote.waiting == 0 and remote.rejected == 0 and remote.dropped == 0
    assert stored == reported  # every report, once
    assert not Path(remote.spool_path).exists()
    # (no step waits on the network: a post's timeout is 10 s, a retry's backoff 0.5 s and
    # more; and the steps of the outage cost about what the others did: loosely, as other
    # work on a shared 2-core machine makes whole seconds several times slower)
    up, down = times["up"][20:], times["down"]
    assert max(down) < 1.0, f"a step took {max(down):.2f} s while the server was down"
    assert sum(down) / len(down) < 5 * sum(up) / len(up) + 0.010


def test_at_the_spools_bound_the_oldest_are_dropped_and_counted(tmp_path):
    port = free_port()
    remote = RemoteStore(f"http://127.0.0.1:{port}", TOKEN, spool=tmp_path / "spool",
                         spool_bytes=2**16, close_timeout=0.5)
    remote.write([Session(id="b"), Static("b", "0", {"layers": 1})])
    n = 400
    for i in range(n):  # (nothing listens: all of it goes to the spool, ~2 kB a record)
        remote.write([update("b", i)])
        time.sleep(0.002)
    remote.close()
    assert remote.dropped > 0
    assert remote.spool.size <= 2**16
    kept = lines_in(remote.spool_path)
    assert [d["type"] for d in kept[:2]] == ["session", "static"]  # (never dropped)
    its = [d["iteration"] for d in kept[2:]]
    assert its == list(range(n - len(its), n))  # the newest are kept
    assert len(its) + remote.dropped == n
    with Serve(tmp_path / "runs.db", tmp_path, port=port) as server:
        assert main(["sync", remote.spool_path, "--token-file", str(server.token_file)]) == 0
        with read(tmp_path / "runs.db") as store:
            assert store.read_series("b", "score").iterations.tolist() == its
            assert store.static("b") == {"layers": 1}


def test_a_spool_left_offline_is_sent_once_by_embedviz_sync(tmp_path, caplog, capsys):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    remote = RemoteStore(url, TOKEN, close_timeout=0.5)
    assert remote.spool_path.startswith(str(tmp_path / "cache" / "embedviz" / "spool"))
    remote.write([Session(id="off")])
    remote.write([Metric("off", "m", float(i), i) for i in range(50)])
    with caplog.at_level(logging.WARNING, logger="embedviz.remote"):
        remote.close()
    assert f"embedviz sync {remote.spool_path} --to {url}" in caplog.text
    assert len(lines_in(remote.spool_path)) == 51
    copy = tmp_path / "copy"
    shutil.copytree(remote.spool_path, copy)
    with Serve(tmp_path / "runs.db", tmp_path, port=port) as server:
        token = ["--token-file", str(server.token_file)]
        assert main(["sync", str(tmp_path / "cache"), "--to", url, *token]) == 0
        out = capsys.readouterr()
        assert "51 stored, 0 already stored, 0 rejected" in out.out
        assert "51 of 51 records sent" in out.err
        assert not Path(remote.spool_path).exists()
        assert main(["sync", str(copy), *token]) == 0  # (the server it was meant for)
        assert "0 stored, 51 already stored" in capsys.readouterr().out
        assert not copy.exists()  # (a spool sent whole is removed)
        assert main(["sync", str(tmp_path / "cache"), *token]) == 0
        assert "nothing to send" in capsys.readouterr().out
        with read(tmp_path / "runs.db") as store:
            assert store.read_series("off", "metric/m").iterations.tolist() == list(range(50))
    assert main(["sync", str(tmp_path / "nowhere"), *token]) == 2
    assert "no spool at" in capsys.readouterr().err


def test_a_wrong_token_keeps_the_records_in_the_spool(served, tmp_path, caplog, capsys):
    server, db = served
    remote = RemoteStore(server.url, "w" * 40, spool=tmp_path / "spool", close_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="embedviz.remote"):
        remote.write([Session(id="wrong"), Metric("wrong", "m", 1.0, 1)])
        remote.close()
    assert "refused the post (401): wrong token" in caplog.text
    assert len(lines_in(remote.spool_path)) == 2 and remote.sent == 0
    bad = tmp_path / "bad"
    bad.write_text("z" * 40)
    assert main(["sync", remote.spool_path, "--token-file", str(bad)]) == 2
    assert "wrong token" in capsys.readouterr().err
    assert main(["sync", remote.spool_path, "--token-file", str(server.token_file)]) == 0
    with read(db) as store:
        assert store.read_series("wrong", "metric/m").iterations.tolist() == [1]


def test_a_spool_in_use_is_not_synced_meanwhile(tmp_path):
    spool = Spool(tmp_path / "s", target="http://127.0.0.1:9")
    spool.append([b'{"type":"session","session":"x"}'])
    with pytest.raises(SpoolBusyError, match="in use by a running process"):
        Spool.existing(tmp_path / "s")
    spool.close()
    again = Spool.existing(tmp_path / "s")
    assert again.records == 1 and again.target == "http://127.0.0.1:9"
    again.close()

"""The listener's worker process (background="process"): exact, never in the way of training,
and careful with the program's own files and the machine's shared memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from embedviz.monitor import StatsListener

import embedviz
from tests.conftest import mlp


class ManyLayers(torch.nn.Module):
    """200 small layers: a report's layout (400 parameters, three entries each) is too long
    to go inline on the socket: it travels in a memfd of its own."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(64, 8)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(198))
        self.out = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = x + 0.01 * block(x)
        return self.out(x)


def workers() -> list[int]:
    """PIDs of this process's worker processes, as the OS sees them."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"embedviz.monitor._sink" in cmd:
            found.append(int(pid))
    return found


def _stepper(listener, digits):
    """Attach ``listener`` to a fresh MLP; returns (handle, step): step() trains one batch and
    returns the seconds it took, listener.step included."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = digits

    def step() -> float:
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(X[:64]), y[:64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        listener.step(loss)
        return time.perf_counter() - t0

    return listener.attach(model, opt), step


def _with_a_worker(digits, db, session, max_pending):
    """A listener into the SQLite file ``db`` on a fresh MLP, summarizing in a worker process;
    returns (listener, handle, step, the worker's PID)."""
    listener = StatsListener(embedviz.open_store(db), 1, session=session, max_pending=max_pending,
                             background="process", budget=None)  # (every report: see budget=)
    handle, one_step = _stepper(listener, digits)
    (pid,) = workers()
    return listener, handle, one_step, pid


def _until_written(db, session: str, n: int, timeout: float = 120.0) -> None:
    """Wait until ``n`` reports of ``session`` are in the store (a low-priority worker on a
    busy machine takes seconds to start and catch up; ``n`` leaves out those it dropped)."""
    store, deadline = embedviz.open_store(db), time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(store.read_series(session, "score").iterations) >= n:
                store.close()
                return
        except embedviz.UnknownSessionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the worker did not write {n} reports within {timeout:.0f} s")


def _flowing_then_closed(listener, handle, one_step, db, session, steps):
    """``steps`` more steps at a gentle pace (a worker at a low priority on a busy machine
    keeps up), then close; returns (the iteration they began at, the iterations whose score
    is in the store)."""
    began = listener.iteration
    for _ in range(steps):
        one_step()
        time.sleep(0.05)
    handle.remove()
    return began, embedviz.open_store(db).read_series(session, "score").iterations.tolist()


@pytest.mark.parametrize("make", [mlp, ManyLayers], ids=["inline", "memfd-message"])
def test_the_worker_process_records_exactly_what_happened(make, digits, tmp_path):
    """Reports summarized by the worker process, reading the capture buffers from shared
    memory and making the updates there, are exact, from the first report on."""
    store = embedviz.open_store(tmp_path / "worker.db")
    # (exactness is the point here: the worker may take its time on a loaded machine)
    listener = StatsListener(store, 2, session="w", max_pending=10_000, background="process",
                             close_timeout=120, budget=None)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    X, y = digits
    truth: dict[int, dict[str, torch.Tensor]] = {}
    with listener.attach(model, opt):
        assert len(workers()) == 1
        for i in range(12):
            loss = torch.nn.functional.cross_entropy(model(X[:64]), y[:64])
            opt.zero_grad()
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            truth[i] = {f"gradient/{n}": g for n, g in grads.items()} | {
                f"param/{n}": p.detach().clone() for n, p in model.named_parameters()} | {
                f"update/{n}": p.detach() - before[n] for n, p in model.named_parameters()}
            listener.step(loss)
    assert workers() == [] and listener.dropped_reports == 0
    assert store.static("w")["listener"]["background"] == "ProcessSink"
    keys = list(truth[0])
    for key in keys if len(keys) < 30 else keys[:6] + keys[-6:]:
        series = {s: store.read_series("w", f"{key}/{s}") for s in ("mean", "stdev", "max", "count")}
        assert series["mean"].iterations.tolist() == list(range(0, 12, 2))
        for it, mean, stdev, hi, count in zip(series["mean"].iterations, series["mean"].values,
                                              series["stdev"].values, series["max"].values,
                                              series["count"].values):
            t = truth[int(it)][key].double()
            tol = 1e-5 * t.abs().max().item()  # (an update is a difference: float32 rounding)
            assert count == t.numel()
            assert mean == pytest.approx(t.mean().item(), rel=1e-4, abs=tol)
            assert stdev == pytest.approx(t.std(unbiased=False).item(), rel=1e-3, abs=tol)
            assert hi == pytest.approx(t.max().item(), rel=1e-6, abs=tol)
    rss = store.read_series("w", "memory/rss_bytes")
    assert rss.values[-1] > 50e6  # the training process's memory, read by the worker


def test_the_store_options_reach_the_worker(digits, tmp_path):
    """A store opened with synchronous=FULL is written with it by the worker process too."""
    db = tmp_path / "full.db"
    listener = StatsListener(f"sqlite:///{db}?synchronous=FULL", 1, session="f",
                             background="process", budget=None)
    handle, one_step = _stepper(listener, digits)
    (pid,) = workers()
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        url = f.read().split(b"\0")[3].decode()
    assert embedviz.open_store(url).synchronous == "FULL"
    one_step()
    handle.remove()
    assert embedviz.open_store(db).read_series("f", "score").iterations.tolist() == [0]


def _open_files(folder, n: int, first: int = 0) -> list:
    files = []
    for i in range(first, first + n):
        f = open(folder / f"user-{i}.txt", "w+b")
        f.write(f"the user's file {i}".encode())
        f.flush()
        files.append(f)
    return files


def _intact(files) -> bool:
    for i, f in enumerate(files):
        f.seek(0)
        if f.read() != f"the user's file {i}".encode():
            return False
    return True


def test_closing_twice_concurrently_around_a_stuck_worker_leaves_the_programs_files_alone(
        digits, tmp_path):
    """Remove a listener whose worker never reads (stopped before it took anything), from
    two threads at once and then again, with the program's own files opened in between:
    every one of them stays open and untouched, and the listener leaves no descriptor of its
    own behind."""
    before = set(os.listdir("/proc/self/fd"))
    listener = StatsListener(tmp_path / "stuck.db", 1, session="s", background="process",
                             close_timeout=1.0, budget=None)
    handle, one_step = _stepper(listener, digits)
    (pid,) = workers()
    os.kill(pid, signal.SIGSTOP)
    mine = _open_files(tmp_path, 10)
    for _ in range(3):
        one_step()
    closers = [threading.Thread(target=handle.remove) for _ in range(2)]
    for t in closers:
        t.start()
    mine += _open_files(tmp_path, 10, 10)
    for t in closers:
        t.join(10)
    handle.remove()
    assert not any(t.is_alive() for t in closers)
    time.sleep(0.5)
    assert _intact(mine)
    assert all(os.fstat(f.fileno()) for f in mine)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    for f in mine:
        f.close()
    left = {_target(fd) for fd in set(os.listdir("/proc/self/fd")) - before}
    assert not [t for t in left if "stuck.db" in t or "embedviz" in t or t.startswith("socket:")
                or t.startswith("anon_inode:[eventfd]")], left


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def test_a_listener_removed_right_after_attach_touches_no_file_later(digits, tmp_path):
    """The issue's repro: attach, remove at once (the worker still starting), open files,
    wait: they are all still open and hold what the program wrote."""
    for _ in range(3):
        handle, _ = _stepper(StatsListener(tmp_path / "quick.db", 1, background="process",
                                           budget=None), digits)
        handle.remove()
    mine = _open_files(tmp_path, 20)
    time.sleep(1.0)
    assert _intact(mine) and all(os.fstat(f.fileno()) for f in mine)
    assert workers() == []


def test_many_short_trainings_in_a_row_into_one_store(digits, tmp_path):
    db = tmp_path / "many.db"
    for k in range(11):
        handle, one_step = _stepper(StatsListener(db, 1, session=f"run{k}", background="process",
                                                  budget=None),
                                    digits)
        for _ in range(3):
            one_step()
        handle.remove()
    store = embedviz.open_store(db)
    assert [store.read_series(f"run{k}", "score").iterations.tolist() for k in range(11)] == [
        [0, 1, 2]] * 11


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("when", ["at once", "mid-run"])
def test_a_killed_training_process_leaves_its_reports_written_and_no_shared_memory(tmp_path, when):
    """SIGKILL the training process right after attach (its worker still starting) or after
    20 reports: its worker writes every report it was handed, exits, and nothing is left in
    /dev/shm."""
    db = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, signal, time, torch
        from embedviz.monitor import StatsListener
        listener = StatsListener({str(db)!r}, 1, session="k", max_pending=10_000,
                                 background="process", budget=None)
        model = torch.nn.Linear(20, 5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        listener.attach(model, opt)
        steps = 20 if {when == "mid-run"} else 1
        for i in range(steps):
            loss = model(torch.randn(8, 20)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            listener.step(loss)
            time.sleep(0.01)
        print(steps, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    shm = _shm()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, err
    deadline = time.monotonic() + 30
    store = embedviz.open_store(db)
    while time.monotonic() < deadline:  # (the orphaned worker writes, then exits)
        if "k" in [s.id for s in store.sessions()] and len(
                store.read_series("k", "score").iterations) == int(out):
            break
        time.sleep(0.2)
    assert store.read_series("k", "score").iterations.tolist() == list(range(int(out))), err
    assert store.static("k")
    assert _shm() <= shm


@pytest.mark.parametrize("ending", ["falls off the end", "raises"])
@pytest.mark.parametrize("background", ["thread", "process"])
def test_a_script_that_never_removes_the_listener_loses_nothing(tmp_path, ending, background):
    """A script that ends, or fails, without ``remove()``: everything it recorded is in the
    store when it has exited (the session, every report, the last metric)."""
    db = tmp_path / "unclosed.db"
    script = textwrap.dedent(f"""
        import torch
        from embedviz.monitor import StatsListener
        torch.manual_seed(0)
        listener = StatsListener({str(db)!r}, 5, session="u", max_pending=10_000,
                                 background={background!r}, budget=None)
        model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        listener.attach(model, opt)
        for i in range(72):
            loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 2, (8,)))
            opt.zero_grad(); loss.backward(); opt.step()
            listener.step(loss, batch_size=8)
        listener.log_metric("val_loss", 0.25)
        if {ending == "raises"}:
            raise RuntimeError("the training script fails here")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == (1 if ending == "raises" else 0), proc.stderr
    store = embedviz.open_store(db)
    assert store.read_series("u", "score").iterations.tolist() == list(range(0, 72, 5))
    assert store.read_series("u", "metric/val_loss").values.tolist() == [0.25]
    assert store.static("u")["listener"]["background"] == background.title() + "Sink"
    store.close()


def test_a_locked_sqlite_store_does_not_block_training(digits, tmp_path):
    """Another process holds SQLite's write lock for seconds (a long transaction): the
    worker waits for it, reports beyond what the buffers hold are dropped and counted, no
    training step waits, and once the lock is gone the reports flow again."""
    import sqlite3

    db = tmp_path / "locked.db"
    listener, handle, one_step, _ = _with_a_worker(digits, db, "L", 4)
    for _ in range(5):
        one_step()
    _until_written(db, "L", 5 - listener.dropped_reports)  # (the worker's connection is open)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by another connection
    locked_from, worst = listener.iteration, 0.0
    t_end = time.monotonic() + 4
    while time.monotonic() < t_end:
        worst = max(worst, one_step())
    blocker.execute("COMMIT")
    blocker.close()
    released_at, written = _flowing_then_closed(listener, handle, one_step, db, "L", 20)
    assert worst < 0.5, f"a training step waited {worst:.2f} s for the locked store"
    assert listener.dropped_reports > 0  # more reports than the buffers hold waited
    assert written == sorted(set(written))  # each at most once, in order
    assert any(it >= released_at for it in written)  # flowing again
    assert len([it for it in written if it >= locked_from]) < released_at - locked_from + 20


def test_a_killed_worker_process_leaves_training_running_and_reports_flowing(digits, tmp_path):
    """The worker process dies (killed) mid-training: the listener notices, logs it once,
    summarizes on a thread from then on, and closing still returns promptly."""
    db = tmp_path / "workerdied.db"
    listener, handle, one_step, pid = _with_a_worker(digits, db, "d", 10_000)
    for _ in range(10):
        one_step()
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    killed_at = listener.iteration
    for _ in range(30):
        one_step()
        time.sleep(0.01)
    t0 = time.perf_counter()
    handle.remove()
    assert time.perf_counter() - t0 < 5
    written = embedviz.open_store(db).read_series("d", "score").iterations.tolist()
    after = [it for it in written if it >= killed_at]
    assert len(after) >= 25  # at most what the dying worker held is lost
    assert written == sorted(set(written))


def test_a_stopped_worker_process_neither_blocks_training_nor_loses_the_count(digits, tmp_path):
    """A worker that stops (SIGSTOP) holds every capture buffer: no training step waits,
    what cannot be handed over is dropped and counted, and once it runs again the reports
    flow."""
    db = tmp_path / "stopped.db"
    listener, handle, one_step, pid = _with_a_worker(digits, db, "s", 4)
    for _ in range(10):
        one_step()
        time.sleep(0.01)
    _until_written(db, "s", 10 - listener.dropped_reports)  # (started: it holds max_pending + 2)
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at, worst = listener.iteration, 0.0
        for _ in range(400):
            worst = max(worst, one_step())
        dropped = listener.dropped_reports
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed_at, written = _flowing_then_closed(listener, handle, one_step, db, "s", 40)
    assert worst < 0.5, f"a training step waited {worst:.2f} s for the stopped worker"
    assert dropped >= 400 - 6  # all but what the capture buffers held
    assert written == sorted(set(written))
    assert len([it for it in written if it >= resumed_at]) >= 30  # flowing again
    assert len([it for it in written if stopped_at <= it < resumed_at]) <= 6


def test_reports_that_wait_for_the_worker_are_all_kept(digits, tmp_path):
    """A worker that falls behind for a moment (stopped for max_pending reports) loses none
    of them."""
    db = tmp_path / "late.db"
    listener, handle, one_step, pid = _with_a_worker(digits, db, "late", 4)
    for _ in range(10):
        one_step()
        time.sleep(0.01)
    _until_written(db, "late", 10 - listener.dropped_reports)  # (caught up: buffers free)
    os.kill(pid, signal.SIGSTOP)
    dropped = listener.dropped_reports  # (a busy machine may have cost some before)
    try:
        stopped_at = listener.iteration
        for _ in range(4):
            one_step()
    finally:
        os.kill(pid, signal.SIGCONT)
    _, written = _flowing_then_closed(listener, handle, one_step, db, "late", 0)
    assert listener.dropped_reports == dropped
    assert [it for it in written if it >= stopped_at] == list(range(stopped_at, stopped_at + 4))


def test_word2vec_and_small_models_start_no_process(digits, tmp_path):
    """A worker process only where it pays: not for a small model, nor for word2vec."""
    from embedviz.monitor import Word2VecListener
    from gensim.models import Word2Vec

    handle, one_step = _stepper(StatsListener(tmp_path / "small.db", 1, budget=None), digits)
    one_step()
    assert workers() == []
    handle.remove()
    listener = Word2VecListener(tmp_path / "w2v.db", session="w", top_n=10)
    seen = []

    class Look:
        def on_epoch_end(self, model):
            seen.append(workers())

        def __getattr__(self, name):
            return lambda model: None

    Word2Vec([["a", "b", "c"], ["b", "c", "d"]] * 20, vector_size=8, min_count=1, epochs=2,
             workers=1, compute_loss=True, callbacks=[listener, Look()])
    assert seen == [[], []]
    assert len(embedviz.open_store(tmp_path / "w2v.db").read_series("w", "score").values) == 2


def test_a_fast_loop_loses_no_report_while_the_worker_starts(digits, tmp_path):
    """The worker process takes a few tenths of a second to start (here: it is held stopped
    before it answers anything): the reports of a fast loop meanwhile wait for it, up to
    STARTING_BUFFERS more than max_pending, and none is dropped."""
    db = tmp_path / "fast.db"
    listener, handle, one_step, pid = _with_a_worker(digits, db, "f", 4)
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(30):  # (a report every step)
            one_step()
    finally:
        os.kill(pid, signal.SIGCONT)
    handle.remove()
    assert listener.dropped_reports == 0
    assert embedviz.open_store(db).read_series("f", "score").iterations.tolist() == list(range(30))

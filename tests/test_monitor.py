"""StatsListener on real training (scikit-learn's digits): what it records is what happened."""

from __future__ import annotations

import math
import threading
import time
import weakref

import pytest
import torch
from embedviz.monitor import StatsListener
from sklearn.datasets import load_digits

import embedviz
from embedviz.store import MemoryStore

FREQ = 5


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x.view(-1, 1, 8, 8))).flatten(1))


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    s = embedviz.open_store(tmp_path / "runs.db" if request.param == "sqlite" else ":memory:")
    yield s
    s.close()


def train(model, listener, digits, steps, *, optimizer=None, hook=None):
    X, y = digits
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    seen = []
    with listener.attach(model, opt):
        for i in range(steps):
            xb, yb = X[(i * 64) % 1700:(i * 64) % 1700 + 64], y[(i * 64) % 1700:(i * 64) % 1700 + 64]
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            if hook:
                hook(i, model)
            seen.append({"loss": loss.item(), "grads": grads,
                         "update": {n: p.detach() - before[n] for n, p in model.named_parameters()},
                         "param": {n: p.detach().clone() for n, p in model.named_parameters()}})
            listener.step(loss, batch_size=len(xb))
    return seen


@pytest.mark.parametrize("make", [mlp, SmallCNN], ids=["mlp", "cnn"])
def test_recorded_statistics_are_what_the_optimizer_did(make, digits, store):
    model = make()
    acts: dict[str, torch.Tensor] = {}
    relu = model[1] if isinstance(model, torch.nn.Sequential) else model.act
    relu.register_forward_hook(lambda m, i, o: acts.__setitem__("relu", o.detach().clone()))
    zero_fractions = []
    seen = train(model, StatsListener(store, FREQ, session="run", max_pending=10_000,
                                 sample_limit=None), digits, 23,
                 hook=lambda i, m: zero_fractions.append(float((acts["relu"] == 0).float().mean())))
    relu_name = "1" if isinstance(model, torch.nn.Sequential) else "act"
    assert store.read_series("run", "score").iterations.tolist() == [0, 5, 10, 15, 20]
    assert store.read_series("run", "score").values.tolist() == pytest.approx(
        [seen[i]["loss"] for i in (0, 5, 10, 15, 20)], rel=1e-6)
    for name, _ in model.named_parameters():
        for kind, key in (("update", "update"), ("gradient", "grads"), ("param", "param")):
            stats = {s: store.read_series("run", f"{kind}/{name}/{s}").values
                     for s in ("mean", "stdev", "mean_magnitude", "min", "max", "count")}
            for j, it in enumerate((0, 5, 10, 15, 20)):
                t = seen[it][key][name].double()
                tol = 1e-5 * t.abs().max().item()  # float32 sums of values near zero
                assert stats["count"][j] == t.numel()
                assert stats["mean"][j] == pytest.approx(t.mean().item(), rel=1e-4, abs=tol)
                assert stats["mean_magnitude"][j] == pytest.approx(t.abs().mean().item(), rel=1e-4)
                assert stats["stdev"][j] == pytest.approx(t.std(unbiased=False).item(), rel=1e-3, abs=tol)
                assert stats["min"][j] == pytest.approx(t.min().item(), rel=1e-6)
                assert stats["max"][j] == pytest.approx(t.max().item(), rel=1e-6)
    zf = store.read_series("run", f"activation/{relu_name}/zero_fraction").values
    assert zf.tolist() == pytest.approx([zero_fractions[i] for i in (0, 5, 10, 15, 20)], abs=1e-9)
    hists = store.read_histograms("run", f"param/{next(iter(dict(model.named_parameters())))}")
    assert [h.iteration for h in hists] == [0, 5, 10, 15, 20]
    h = hists[0].histogram
    assert h.counts.sum() + h.underflow + h.overflow == seen[0]["param"][next(iter(seen[0]["param"]))].numel()
    lr = store.read_series("run", "lr/0").values
    assert lr.tolist() == [0.1] * 5
    assert "timing/examples_per_s" in store.series_keys("run")
    static = store.static("run")
    layers = {layer["name"]: layer for layer in static["model"]["layers"]}
    first = next(iter(layers.values()))
    assert first["input_shapes"] and first["output_shapes"] and first["n_params"] > 0
    assert static["optimizer"]["type"] == "SGD" and static["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert static["software"]["torch"] == torch.__version__


def test_an_injected_nan_shows_up_at_the_layer_where_it_appeared(digits, store):
    class Poison(torch.nn.Module):
        def forward(self, x):
            if self.training and getattr(self, "armed", False):
                x = x.clone()
                x[0, :3] = math.nan
            return x

    torch.manual_seed(0)
    poison = Poison()
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), poison, torch.nn.Linear(32, 10))
    listener = StatsListener(store, FREQ, session="nan", max_pending=10_000)

    def arm(i, m):
        poison.armed = i >= 9  # from iteration 10's forward on

    train(model, listener, digits, 11, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), hook=arm)
    nan = {name: store.read_series("nan", f"activation/{name}/nan_count").values.tolist()
           for name in ("0", "1", "2", "3")}
    assert nan["0"] == [0, 0, 0] and nan["1"] == [0, 0, 0]
    assert nan["2"] == [0, 0, 3]  # where it appeared
    assert nan["3"][2] > 0  # and downstream
    assert math.isnan(store.read_series("nan", "score").values[2])
    assert store.read_series("nan", "gradient/3.weight/nan_count").values[2] > 0


def test_frequency_and_filters_are_honoured(digits):
    store = MemoryStore()
    listener = StatsListener(store, 7, session="f", watch=["2.*", "2"], histograms=False,
                             max_pending=10_000)
    train(mlp(), listener, digits, 30)
    assert store.read_series("f", "score").iterations.tolist() == [0, 7, 14, 21, 28]
    keys = store.series_keys("f")
    assert "param/2.weight/mean" in keys and "activation/2/mean" in keys
    assert not any(k.startswith(("param/0.", "activation/0", "activation/1/")) for k in keys)
    assert store.read_histograms("f", "param/2.weight") == []


def test_removing_the_listener_removes_every_hook(digits):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from torch.nn.modules.module import _global_forward_hooks

    handle = StatsListener(MemoryStore(), FREQ).attach(model, opt)
    assert _global_forward_hooks and opt._optimizer_step_pre_hooks  # (iteration 0 is reported)
    handle.remove()
    assert not any(m._forward_hooks for m in model.modules()) and not _global_forward_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_hooks_are_in_place_only_around_reported_iterations(digits):
    from torch.nn.modules.module import _global_forward_hooks as global_forward_hooks

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    listener = StatsListener(MemoryStore(), 3, session="h")
    hooked = []
    X, y = digits
    with listener.attach(model, opt):
        for _ in range(7):
            hooked.append(bool(global_forward_hooks) and bool(opt._optimizer_step_pre_hooks))
            loss = torch.nn.functional.cross_entropy(model(X[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss)
    assert hooked == [True, False, False, True, False, False, True]  # iterations 0, 3, 6
    assert not global_forward_hooks and not opt._optimizer_step_pre_hooks


class FailingStore(MemoryStore):
    def _write(self, records):
        raise RuntimeError("disk on fire")


class StalledStore(MemoryStore):
    """A real store that hangs on every write until released (a stalled network disk)."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def _write(self, records):
        self.release.wait(60)
        super()._write(records)


def test_a_store_that_raises_does_not_stop_training(digits, caplog):
    store = FailingStore()
    seen = train(mlp(), StatsListener(store, FREQ), digits, 40)
    assert len(seen) == 40 and all(math.isfinite(s["loss"]) for s in seen)
    warnings = [r for r in caplog.records if "disk on fire" in str(r.exc_info) or "failed" in r.getMessage()]
    assert warnings and len(warnings) < 5  # logged once, not per report


def _one_batch_loop(listener, digits, steps, each=None):
    """Train an MLP on one batch for ``steps`` steps under ``listener``; returns the handle
    (still attached)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = digits
    handle = listener.attach(model, opt)
    for i in range(steps):
        loss = torch.nn.functional.cross_entropy(model(X[:64]), y[:64])
        opt.zero_grad()
        loss.backward()
        opt.step()
        listener.step(loss)
        if each is not None:
            each(i)
    return handle


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
    """A listener into the SQLite file ``db`` on a fresh MLP, its worker process up;
    returns (listener, handle, step) (see _stepper)."""
    listener = StatsListener(embedviz.open_store(db), 1, session=session, max_pending=max_pending)
    handle, one_step = _stepper(listener, digits)
    _until_the_worker_is_up(listener, one_step)
    return listener, handle, one_step


def _flowing_then_closed(listener, handle, one_step, db, session, steps):
    """``steps`` more steps at a gentle pace, then close; returns (the iteration they began
    at, the iterations whose score is in the store)."""
    began = listener.iteration
    for _ in range(steps):
        one_step()
        time.sleep(0.01)
    handle.remove()
    return began, embedviz.open_store(db).read_series(session, "score").iterations.tolist()


def _until_the_worker_is_up(listener, step, timeout=120.0):
    deadline = time.monotonic() + timeout
    while listener._writer._worker is None:
        assert time.monotonic() < deadline, "the worker process did not start"
        step()
        time.sleep(0.02)


def test_a_stalled_store_neither_blocks_training_nor_grows_memory(digits):
    store = StalledStore()
    listener = StatsListener(store, 1, max_pending=4, close_timeout=2.0)
    t0 = time.perf_counter()
    handle = _one_batch_loop(listener, digits, 300)
    elapsed = time.perf_counter() - t0
    assert elapsed < 20  # a blocked write would take 60 s
    # all but what waits (4), what one batch holds (<= 50) and the one being written
    assert listener.dropped_reports >= 300 - 4 - 50 - 1
    assert listener._writer.pending() <= 4  # bounded: memory does not grow
    t1 = time.perf_counter()
    handle.remove()
    assert time.perf_counter() - t1 < 4  # close returns although the store still hangs
    store.release.set()


@pytest.mark.slow
def test_memory_stays_flat_over_10000_iterations(digits, tmp_path):
    import tracemalloc

    store = embedviz.open_store(tmp_path / "long.db")
    listener = StatsListener(store, 10)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    X, y = digits
    tracemalloc.start()
    with listener.attach(model, opt):
        for i in range(10_000):
            xb, yb = X[(i * 32) % 1760:(i * 32) % 1760 + 32], y[(i * 32) % 1760:(i * 32) % 1760 + 32]
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            listener.step(loss)
            if i == 2000:
                early = tracemalloc.get_traced_memory()[0]
    late = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert late - early < 2_000_000, f"python heap grew {late - early} bytes"
    n = store.session(listener.session).workers[0].n_updates
    assert n >= 500 and n + listener.dropped_reports == 1000  # written, or counted as dropped


def test_log_metric_and_bad_arguments(digits):
    store = MemoryStore()
    listener = StatsListener(store, FREQ, session="m", max_pending=10_000)
    model = mlp()
    train(model, listener, digits, 6)
    with listener.attach(model):
        listener.log_metric("val_loss", torch.tensor(0.25), iteration=6)
    assert store.read_series("m", "metric/val_loss").values.tolist() == [0.25]
    with pytest.raises(embedviz.InvalidRecordError, match="frequency must be an integer >= 1"):
        StatsListener(store, 0)
    with pytest.raises(embedviz.InvalidRecordError, match="list of patterns"):
        StatsListener(store, watch="fc*")
    with pytest.raises(embedviz.InvalidRecordError, match="torch.nn.Module"):
        StatsListener(store).attach("not a model")


def test_large_tensors_are_summarized_from_an_even_sample():
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Linear(400, 400)  # 160,000 weights > sample_limit
    listener = StatsListener(store, 1, session="big", sample_limit=16384)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with listener.attach(model, opt):
        loss = model(torch.randn(8, 400)).pow(2).mean()
        loss.backward()
        opt.step()
        listener.step(loss)
    w = model.weight.detach()
    assert store.read_series("big", "param/weight/count").values[0] == w.numel()
    assert store.read_series("big", "param/weight/mean_magnitude").values[0] == pytest.approx(w.abs().mean().item(), rel=0.02)
    assert store.read_series("big", "param/weight/stdev").values[0] == pytest.approx(w.std().item(), rel=0.02)
    h = store.read_histograms("big", "param/weight")[0].histogram
    assert abs(h.counts.sum() + h.underflow + h.overflow - w.numel()) <= 25
    assert store.static("big")["listener"]["sampled"]["weight"][1] == w.numel()


def test_the_sample_of_a_matrix_is_spread_over_every_column_and_row():
    """Samples are blocks of 16 neighbours (a cache line); their starts are spread so that
    every column of a matrix is visited, and they reach its last rows."""
    listener = StatsListener(MemoryStore(), 1)
    for shape in [(256, 512), (512, 784), (1000, 10), (4096, 3), (300, 1000)]:
        t = torch.arange(math.prod(shape)).reshape(shape)
        kept = listener._view(t).reshape(-1)
        assert kept.numel() == 4096 and len(set(kept.tolist())) == 4096
        assert set((kept % shape[1]).tolist()) == set(range(shape[1])), shape
        assert int(kept.max()) // shape[1] >= shape[0] * 0.9, shape


def test_metrics_are_never_dropped_to_make_room_for_reports(digits):
    store = StalledStore()
    listener = StatsListener(store, 1, session="keep", max_pending=2, close_timeout=10.0)
    handle = _one_batch_loop(listener, digits, 60,
                             each=lambda i: listener.log_metric("val_loss", float(i), iteration=i))
    assert listener.dropped_reports > 0  # reports made room...
    store.release.set()
    handle.remove()
    got = store.read_series("keep", "metric/val_loss")
    assert got.iterations.tolist() == list(range(60))  # ...metrics did not


class ManyLayers(torch.nn.Module):
    """200 small layers: a report's layout (400 parameters, three entries each) is too long
    for a mailbox, so every report takes the socket."""

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


@pytest.mark.parametrize("make, ordered", [(mlp, True), (mlp, False), (ManyLayers, True)],
                         ids=["mailbox", "mailbox-crc", "socket"])
def test_the_worker_process_records_exactly_what_happened(make, ordered, digits, tmp_path,
                                                          monkeypatch):
    """Into an SQLite store, reports are summarized by a worker process reading the capture
    buffers from shared memory (and making the updates there): once it is up, what it
    writes is still exact, whichever way the report went to it (a mailbox, checked by a CRC
    on a CPU that may show stores out of order, or the socket)."""
    import embedviz.monitor._report

    monkeypatch.setattr(embedviz.monitor._report, "ORDERED_STORES", ordered)
    store = embedviz.open_store(tmp_path / "worker.db")
    listener = StatsListener(store, 2, session="w", max_pending=10_000)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    X, y = digits
    truth: dict[int, dict[str, torch.Tensor]] = {}
    deadline = time.monotonic() + 120
    with listener.attach(model, opt):
        i, first = 0, None
        while first is None or i < first + 10:
            if first is None and listener._writer._worker is not None and i % 2 == 0:
                first = i  # the worker is connected: from here on it summarizes
            assert time.monotonic() < deadline, "the worker process did not start"
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
            i += 1
            if first is None:
                time.sleep(0.05)
    assert listener._writer is None and listener.dropped_reports == 0
    keys = list(truth[first])
    checked = 0
    for key in keys if len(keys) < 30 else keys[:6] + keys[-6:]:
        series = {s: store.read_series("w", f"{key}/{s}") for s in ("mean", "stdev", "max", "count")}
        for it, mean, stdev, hi, count in zip(series["mean"].iterations, series["mean"].values,
                                              series["stdev"].values, series["max"].values,
                                              series["count"].values):
            if it < first:
                continue
            t = truth[int(it)][key].double()
            tol = 1e-5 * t.abs().max().item()  # (an update is a difference: float32 rounding)
            assert count == t.numel()
            assert mean == pytest.approx(t.mean().item(), rel=1e-4, abs=tol)
            assert stdev == pytest.approx(t.std(unbiased=False).item(), rel=1e-3, abs=tol)
            assert hi == pytest.approx(t.max().item(), rel=1e-6, abs=tol)
            checked += 1
    assert checked >= 5 * min(len(keys), 12)
    rss = store.read_series("w", "memory/rss_bytes")
    assert rss.values[-1] > 50e6  # the training process's memory, read by the worker


def test_a_nan_outside_the_sample_is_counted_exactly():
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Linear(400, 400)  # 160,000 weights, sampled in 256 blocks of 16, 624 apart
    listener = StatsListener(store, 1, session="s", sample_limit=4096)
    with torch.no_grad():
        model.weight[3, 1] = math.nan  # position 1201: not one of the sampled positions
        model.weight[7, 2] = math.inf
    with listener.attach(model):  # no optimizer: the weights stay as they are
        loss = model(torch.rand(8, 400) + 0.1).pow(2).mean()
        loss.backward()
        listener.step(loss)
    assert store.static("s")["listener"]["sampled"]["weight"] == [4096, 160_000]
    assert store.read_series("s", "param/weight/nan_count").values.tolist() == [1]
    assert store.read_series("s", "param/weight/inf_count").values.tolist() == [1]
    # output units 3 and 7 are NaN / Inf for every example: their gradient rows are not finite
    grad = model.weight.grad
    nan_grad, inf_grad = int(torch.isnan(grad).sum()), int(torch.isinf(grad).sum())
    assert nan_grad >= 400
    assert store.read_series("s", "gradient/weight/nan_count").values.tolist() == [nan_grad]
    assert store.read_series("s", "gradient/weight/inf_count").values.tolist() == [inf_grad]
    h = store.read_histograms("s", "param/weight")[0].histogram
    assert h.counts.sum() + h.underflow + h.overflow == 160_000 - 2


class SqrtOfSquare(torch.nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(h * h)  # |h|, whose gradient at exactly 0 is 0/0: NaN


def test_nan_gradients_under_a_finite_loss_are_counted_exactly():
    """A backward pass can make NaN gradients while the loss stays finite. They come in whole
    rows or columns, which the sample sees; then every element of the parameters and their
    gradients is checked, and the counts are exact."""
    store = MemoryStore()
    torch.manual_seed(0)
    fc1 = torch.nn.Linear(64, 400)  # 25,600 weights: sampled (sample_limit 4096)
    with torch.no_grad():
        fc1.weight[3] = 0.0
        fc1.bias[3] = 0.0  # unit 3 is exactly 0 for every example
    model = torch.nn.Sequential(fc1, SqrtOfSquare(), torch.nn.Linear(400, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    listener = StatsListener(store, 1, session="g", sample_limit=4096)
    with listener.attach(model, opt):
        loss = model(torch.rand(8, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        listener.step(loss)
    assert math.isfinite(loss.item())
    assert int(torch.isnan(fc1.weight.grad).sum()) == 64 == int(torch.isnan(fc1.weight).sum())
    assert store.static("g")["listener"]["sampled"]["0.weight"] == [4096, 25_600]
    assert store.read_series("g", "gradient/0.weight/nan_count").values.tolist() == [64]
    assert store.read_series("g", "param/0.weight/nan_count").values.tolist() == [64]
    assert store.read_series("g", "gradient/0.bias/nan_count").values.tolist() == [1]


class ConsumingSGD(torch.optim.SGD):
    """An optimizer that clears the gradients it used, in place (as some fused ones do)."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        out = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()
        return out


def test_gradients_are_recorded_as_the_optimizer_saw_them(digits):
    """The gradient is read before the step (a closure-less step() gets the optimizer as its
    only argument): an optimizer that clears gradients in place does not hide them."""
    store = MemoryStore()
    model = mlp()
    listener = StatsListener(store, 1, session="c")
    opt = ConsumingSGD(model.parameters(), lr=0.1)
    seen = train(model, listener, digits, 3, optimizer=opt)
    got = store.read_series("c", "gradient/0.weight/mean_magnitude").values
    want = [s["grads"]["0.weight"].abs().mean().item() for s in seen]
    assert want[0] > 0 and got.tolist() == pytest.approx(want, rel=1e-5)


def test_large_activations_are_sampled_by_whole_examples(digits):
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.__setitem__("relu", o.detach().clone()))
    listener = StatsListener(store, 1, session="a", sample_limit=4096)
    X, y = digits
    with listener.attach(model):
        loss = torch.nn.functional.cross_entropy(model(X[:64]), y[:64])
        loss.backward()
        listener.step(loss)
    relu = seen["relu"]  # 64 x 512 = 32,768 > 4,096: the first 8 examples are summarized
    assert store.read_series("a", "activation/1/count").values.tolist() == [relu.numel()]
    zf = store.read_series("a", "activation/1/zero_fraction").values[0]
    assert zf == pytest.approx(float((relu[:8] == 0).float().mean()), abs=1e-9)
    assert zf == pytest.approx(float((relu == 0).float().mean()), abs=0.05)
    mean = store.read_series("a", "activation/1/mean").values[0]
    assert mean == pytest.approx(relu[:8].double().mean().item(), rel=1e-5)


def test_a_killed_training_process_leaves_its_reports_written_and_no_shared_memory(tmp_path):
    """SIGKILL the training process: its worker process writes what it received, removes
    the capture buffers from /dev/shm, and exits. (Reports summarized on the thread before
    the worker was up are written about once a second: a kill can lose that last second.)"""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, signal, time, torch
        from embedviz.monitor import StatsListener
        listener = StatsListener({str(db)!r}, 1, session="k", max_pending=10_000)
        model = torch.nn.Linear(20, 5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        listener.attach(model, opt)
        deadline = time.monotonic() + 120
        i, first = 0, None
        while first is None or i < first + 20:  # 20 reports through the worker
            if first is None and listener._writer._worker is not None:
                first = i
            loss = model(torch.randn(8, 20)).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            listener.step(loss)
            i += 1
            time.sleep(0.01)
            assert time.monotonic() < deadline
        print(listener._writer.shared_folder, listener._writer._worker.proc.pid, i, flush=True)
        time.sleep(0.5)  # the worker has taken the reports (it acknowledges each)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder, worker_pid, steps = proc.stdout.split()
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{worker_pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(folder)
    store = embedviz.open_store(db)
    written = store.read_series("k", "score").iterations.tolist()
    assert written == list(range(int(steps))), (sorted(set(range(int(steps))) - set(written)), proc.stderr)


def _killed_before_its_worker_is_up(tmp_path, kill: str) -> tuple[str, str]:
    """Run a training script that is SIGKILLed right after attach, before its worker process
    has imported torch: ``kill`` "process" kills it alone, "group" its worker too. Returns
    (its shared folder, its worker's PID)."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, torch
        from embedviz.monitor import StatsListener
        listener = StatsListener({str(tmp_path / "early.db")!r}, 1)
        model = torch.nn.Linear(4, 2)
        listener.attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
        writer = listener._writer
        assert writer._worker is None  # (not up yet)
        print(writer.shared_folder, writer._starting.proc.pid, flush=True)
        if {kill!r} == "group":
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder, worker_pid = proc.stdout.split()
    return folder, worker_pid


def test_a_process_killed_before_its_worker_was_up_leaves_no_shared_memory(tmp_path):
    """Killed alone, its worker process finds it gone when it comes up and removes the folder;
    killed with its worker (the whole process group), the next listener's start removes it.
    Folders of live processes stay."""
    import os

    folder, worker_pid = _killed_before_its_worker_is_up(tmp_path, "process")
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{worker_pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(folder)

    folder, _ = _killed_before_its_worker_is_up(tmp_path, "group")
    assert os.path.isdir(folder)  # nobody left to remove it
    mine = StatsListener(tmp_path / "next.db", 1)
    model = torch.nn.Linear(4, 2)
    with mine.attach(model):
        assert not os.path.exists(folder)
        assert os.path.isdir(mine._writer.shared_folder)
        other = StatsListener(tmp_path / "other.db", 1)  # (a second one here: ours is alive)
        with other.attach(torch.nn.Linear(4, 2)):
            assert os.path.isdir(mine._writer.shared_folder)


@pytest.mark.parametrize("ending", ["falls off the end", "raises", "worker up"])
def test_a_script_that_never_removes_the_listener_loses_nothing(tmp_path, ending):
    """A script that ends, or fails, without ``remove()``: everything it recorded is in the
    store (the session, every report, the last metric) and its shared folder is gone. A short
    one ends while its worker process is still importing torch; "worker up" runs until the
    worker takes the reports, then ends."""
    import os
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "unclosed.db"
    script = textwrap.dedent(f"""
        import time, torch
        from embedviz.monitor import StatsListener
        torch.manual_seed(0)
        listener = StatsListener({str(db)!r}, 5, session="u", max_pending=10_000)
        model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        listener.attach(model, opt)

        def step():
            loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 20)), torch.randint(0, 2, (8,)))
            opt.zero_grad(); loss.backward(); opt.step()
            listener.step(loss, batch_size=8)

        i, deadline = 0, time.monotonic() + 120
        while i < 50 or ({ending == "worker up"} and listener._writer._worker is None):
            step()
            i += 1
            time.sleep(0.001 * (i > 50))
            assert time.monotonic() < deadline
        while i % 5 or i < 70:  # (a few reports more, then a whole cycle)
            step()
            i += 1
        listener.log_metric("val_loss", 0.25)
        print(listener._writer.shared_folder, listener._writer._worker is None, i, flush=True)
        if {ending == "raises"}:
            raise RuntimeError("the training script fails here")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert proc.returncode == (1 if ending == "raises" else 0), proc.stderr
    folder, worker_not_up, steps = proc.stdout.split()
    assert worker_not_up == str(ending != "worker up")  # (which of the two ways did the work)
    assert not os.path.exists(folder)
    store = embedviz.open_store(db)
    assert store.read_series("u", "score").iterations.tolist() == list(range(0, int(steps), 5))
    assert store.read_series("u", "metric/val_loss").values.tolist() == [0.25]
    assert store.static("u")  # (layer table etc.)
    store.close()


def test_a_locked_sqlite_store_does_not_block_training(digits, tmp_path):
    """Another process holds SQLite's write lock for seconds (a long transaction): the
    worker waits for it, reports beyond max_pending are dropped and counted, no training
    step waits, and once the lock is gone the reports flow again."""
    import sqlite3

    db = tmp_path / "locked.db"
    listener = StatsListener(embedviz.open_store(db), 1, session="L", max_pending=4,
                             close_timeout=30)
    handle, one_step = _stepper(listener, digits)
    _until_the_worker_is_up(listener, one_step)
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
    assert listener.dropped_reports > 0  # more reports than max_pending waited
    assert written == sorted(set(written))  # each at most once, in order
    assert any(it >= released_at for it in written)  # flowing again
    assert len([it for it in written if it >= locked_from]) < released_at - locked_from + 20


def test_channels_last_weights_are_followed_step_by_step():
    """A non-contiguous parameter (a channels_last convolution) is sampled anew each report,
    not from a stale copy."""
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(16, 32, 5).to(memory_format=torch.channels_last)  # 12,800 weights
    assert not model.weight.is_contiguous()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    listener = StatsListener(store, 1, session="cl", sample_limit=4096)
    means = []
    with listener.attach(model, opt):
        for _ in range(3):
            loss = model(torch.randn(4, 16, 12, 12).to(memory_format=torch.channels_last)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            means.append(model.weight.detach().mean().item())
            listener.step(loss)
    got = store.read_series("cl", "param/weight/mean").values
    assert len(set(got.tolist())) == 3  # it moves with the weights
    assert got.tolist() == pytest.approx(means, rel=0.2, abs=0.02)
    updates = store.read_series("cl", "update/weight/mean_magnitude").values
    assert (updates > 0).all()


def test_gradient_accumulation_records_each_activation_once(digits):
    """Four micro-batches, one optimizer step and one listener.step per iteration: the
    activations recorded are the first micro-batch's, once."""
    store = MemoryStore()
    model = mlp()
    first = {}
    model[1].register_forward_hook(lambda m, i, o: first.setdefault("relu", o.detach().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = digits
    with StatsListener(store, 1, session="acc").attach(model, opt) as handle:
        opt.zero_grad()
        for k in range(4):
            xb, yb = X[16 * k:16 * (k + 1)], y[16 * k:16 * (k + 1)]
            (torch.nn.functional.cross_entropy(model(xb), yb) / 4).backward()
        opt.step()
        handle.listener.step(batch_size=64)
    assert store.read_series("acc", "activation/1/count").values.tolist() == [first["relu"].numel()]
    zf = store.read_series("acc", "activation/1/zero_fraction").values[0]
    assert zf == pytest.approx(float((first["relu"] == 0).float().mean()))


@pytest.mark.parametrize("validation", ["no_grad", "eval", "inference_mode"])
def test_a_validation_pass_between_steps_is_not_taken_for_the_activations(digits, validation):
    """A validation pass right before a reported iteration (under no_grad, in eval() mode, or
    under inference_mode), on inputs unlike the training batches: the recorded activations
    are those of the training passes, the same as without it."""
    X, y = digits

    def run(with_validation: bool) -> dict:
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        store = MemoryStore()
        listener = StatsListener(store, FREQ, session="v")
        with listener.attach(model, opt):
            for i in range(4 * FREQ):
                xb, yb = X[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                listener.step(loss, batch_size=len(xb))
                if with_validation and (i + 1) % FREQ == 0:  # the next iteration is reported
                    if validation == "eval":
                        model.eval()
                        model(X[:16] * 1000.0)
                        model.train()
                    else:
                        with torch.no_grad() if validation == "no_grad" else torch.inference_mode():
                            model(X[:16] * 1000.0)
        return {key: store.read_series("v", key).values.tolist()
                for key in ("activation/0/mean_magnitude", "activation/2/max", "update/0.weight/mean")}

    plain, validated = run(False), run(True)
    assert len(plain["activation/0/mean_magnitude"]) == 4
    assert validated == plain


def test_accumulation_counts_the_first_passs_nan_and_lets_its_outputs_go(digits):
    """NaN/Inf in the outputs kept from a reported iteration's first forward pass are counted
    when the next pass begins, and the first pass's outputs are not held beyond it."""
    class Poison(torch.nn.Module):
        def forward(self, x):
            if getattr(self, "armed", False):
                x = x.clone()
                x[40, 7] = math.nan  # not among the sampled first examples
            return x

    store = MemoryStore()
    torch.manual_seed(0)
    poison = Poison()
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), poison, torch.nn.Linear(512, 10))
    kept = []
    model[0].register_forward_hook(lambda m, i, o: kept.append(weakref.ref(o.untyped_storage())))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    X, y = digits
    with StatsListener(store, 1, session="acc", sample_limit=4096).attach(model, opt) as handle:
        opt.zero_grad()
        for k in range(2):
            poison.armed = k == 0
            xb, yb = X[64 * k:64 * (k + 1)], y[64 * k:64 * (k + 1)]
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            if k == 1:
                assert kept[0]() is None, "the first pass's output is still held"
        opt.step()
        handle.listener.step(batch_size=128)
    assert store.read_series("acc", "activation/1/nan_count").values.tolist() == [1]
    assert store.read_series("acc", "activation/0/nan_count").values.tolist() == [0]


def test_a_full_shared_memory_folder_does_not_crash_training(tmp_path):
    """Capture buffers are files in /dev/shm (64 MB in a default Docker container). When it
    is full, writing to a mapped page would kill the process with SIGBUS: space is reserved
    first, and without room the buffer is ordinary memory. Checked on a real 512 kB tmpfs
    (mounting one needs root), in a subprocess so that a SIGBUS would fail the test, not end it."""
    import subprocess
    import sys
    import textwrap

    mount = tmp_path / "tinyshm"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        script = textwrap.dedent(f"""
            import torch
            from embedviz.monitor._report import SlotPool
            pool = SlotPool(2, {str(mount)!r})
            slot = pool.acquire(torch.device("cpu"), torch.float32)
            small = torch.arange(1000, dtype=torch.float32)
            slot.add(["param/a"], [small], [1000])
            assert slot.path is not None  # 256 kB fit: shared
            big = torch.randn(300_000)  # 1.2 MB do not
            slot.add(["param/b"], [big], [300_000])
            assert slot.path is None and pool.warned_full
            assert torch.equal(slot.buf[:1000], small) and torch.equal(slot.buf[1000:301_000], big)
            print("ok")
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_killed_worker_process_leaves_training_running_and_reports_flowing(digits, tmp_path):
    """The worker process dies (killed) mid-training, while the training thread hands it the
    reports (in mailboxes, which take them whether or not anyone reads them): the listener
    notices, logs it once, summarizes on its thread from then on, and closing still returns
    promptly."""
    import os
    import signal

    db = tmp_path / "workerdied.db"
    listener, handle, one_step = _with_a_worker(digits, db, "d", 10_000)
    for _ in range(50):
        one_step()
        time.sleep(0.01)
        if listener._writer._direct:
            break
    assert listener._writer._direct  # (the way reports take once the worker is up)
    for _ in range(5):
        one_step()
    os.kill(listener._writer._worker.proc.pid, signal.SIGKILL)
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
    """Reports go to the worker straight from the training thread, in mailboxes it polls. A
    worker that stops (SIGSTOP) holds every capture buffer (reports go without captures, on
    a socket, then) and lets that socket fill: no training step waits, what cannot be handed
    over is dropped and counted, and once it runs again the reports flow."""
    import os
    import signal

    db = tmp_path / "stopped.db"
    listener, handle, one_step = _with_a_worker(digits, db, "s", 4)
    for _ in range(10):
        one_step()
        time.sleep(0.01)
    writer = listener._writer
    assert writer._direct  # (the way reports take once the worker is up)
    pid = writer._worker.proc.pid
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
    assert dropped > 0
    assert written == sorted(set(written))
    assert len([it for it in written if it >= resumed_at]) >= 30  # flowing again
    assert len([it for it in written if stopped_at <= it < resumed_at]) < 400


def test_reports_that_wait_for_the_workers_look_are_all_kept(digits, tmp_path):
    """The worker process looks at its mailboxes every few report intervals and takes what
    waits together. A look that comes late (here: the worker stopped for five reports, more
    than max_pending) loses nothing while the store keeps up: max_pending bounds the reports
    left waiting from an earlier look, not those taken in one."""
    import os
    import signal

    db = tmp_path / "late.db"
    listener, handle, one_step = _with_a_worker(digits, db, "late", 4)
    for _ in range(10):
        one_step()
        time.sleep(0.01)
    time.sleep(0.5)  # (the worker has caught up: every capture buffer is free)
    pid = listener._writer._worker.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = listener.iteration
        for _ in range(5):
            one_step()
    finally:
        os.kill(pid, signal.SIGCONT)
    _, written = _flowing_then_closed(listener, handle, one_step, db, "late", 10)
    assert listener.dropped_reports == 0
    assert [it for it in written if it >= stopped_at] == list(range(stopped_at, stopped_at + 15))


def test_a_nan_in_an_unsampled_example_is_counted_exactly(digits):
    class Poison(torch.nn.Module):
        def forward(self, x):
            x = x.clone()
            x[63, 5] = math.nan  # the last example: not among the first, sampled ones
            return x

    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), Poison(), torch.nn.Linear(512, 10))
    listener = StatsListener(store, 1, session="p", sample_limit=4096)
    X, _ = digits
    with listener.attach(model):
        out = model(X[:64])
        listener.step(out.sum())
    assert store.read_series("p", "activation/1/nan_count").values.tolist() == [1]
    assert store.read_series("p", "activation/2/nan_count").values.tolist() == [10]  # its row
    assert store.read_series("p", "activation/0/nan_count").values.tolist() == [0]


def test_a_trusted_update_is_the_update_a_checked_one_would_be():
    """The monitor builds its updates without checking them again (Update.trusted): the same
    fields make the same update."""
    from embedviz.records import Summary, Update

    summary = Summary(count=3, mean=1.0, stdev=0.5, mean_magnitude=1.0, min=0.5, max=1.5,
                      nan_count=0, inf_count=0, zero_fraction=0.0)
    fields = ("s", "0", 10, 0.25, 1, {"lr/0": 0.1, "timing/iteration_ms": 3.0},
              {"param/fc.weight": summary})
    checked, trusted = Update(*fields[:3], score=fields[3], epoch=fields[4],
                              scalars=fields[5], summaries=fields[6]), Update.trusted(*fields)
    a, b = checked.to_dict(), trusted.to_dict()
    assert abs(a.pop("wall_time") - b.pop("wall_time")) < 5 and a == b


class Residual(torch.nn.Module):
    """fc, then ``x += skip`` on its output (in place, as torchvision's blocks do), then ReLU
    in place; ``bump``: the input layer's output, too, is changed in place after the layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Linear(64, 32)
        self.fc = torch.nn.Linear(32, 32)
        self.act = torch.nn.ReLU(inplace=True)
        self.out = torch.nn.Linear(32, 10)
        self.bump = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if self.bump:
            h.mul_(3.0)
        y = self.fc(h)
        y += h
        return self.out(self.act(y))


def test_outputs_changed_in_place_after_their_module_are_recorded_as_it_made_them(digits, store):
    """An output that something changes in place later in the forward pass (``x += skip``,
    ReLU(inplace=True), on some iterations only) is recorded as its module returned it, on
    every report."""
    model = Residual()
    made: dict[str, list[torch.Tensor]] = {"inp": [], "fc": [], "act": []}
    for name in made:
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: made[name].append(o.detach().clone()))
    X, y = digits
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reports = list(range(0, 30, FREQ))
    with StatsListener(store, FREQ, session="ip", sample_limit=None).attach(model, opt) as handle:
        for i in range(30):
            model.bump = i in (10, 15, 16)
            loss = torch.nn.functional.cross_entropy(model(X[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            handle.listener.step(loss, batch_size=32)
    for name in ("inp", "fc", "act"):
        got = {key: store.read_series("ip", f"activation/{name}/{key}")
               for key in ("min", "mean", "zero_fraction")}
        assert got["min"].iterations.tolist() == reports
        for j, it in enumerate(reports):
            t = made[name][it]
            assert got["min"].values[j] == pytest.approx(t.min().item(), rel=1e-6)
            assert got["mean"].values[j] == pytest.approx(t.double().mean().item(), rel=1e-5, abs=1e-7)
            assert got["zero_fraction"].values[j] == pytest.approx(float((t == 0).float().mean()))
        if name == "fc":  # (before += and ReLU: negative values, which the ReLU takes away)
            assert (got["min"].values < 0).all() and (got["zero_fraction"].values == 0).all()

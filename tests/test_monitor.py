"""StatsListener on real training (scikit-learn's digits): what it records is what happened."""

from __future__ import annotations

import math
import threading
import time
import weakref

import embedviz.monitor.listener
import pytest
import torch
from embedviz.monitor import StatsListener

import embedviz
from embedviz.store import MemoryStore
from tests.conftest import mlp

FREQ = 5


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x.view(-1, 1, 8, 8))).flatten(1))


@pytest.fixture(params=["sqlite", "memory", "sqlite-process"])
def store(request, tmp_path, monkeypatch):
    """A store; with "sqlite-process" every listener summarizes in a worker process (a small
    model would get a thread by default)."""
    if request.param == "sqlite-process":
        monkeypatch.setattr(embedviz.monitor.listener, "PROCESS_PARAMETERS", 0)
    s = embedviz.open_store(":memory:" if request.param == "memory" else tmp_path / "runs.db")
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
                                 sample_limit=None, budget=None), digits, 23,
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
    listener = StatsListener(store, FREQ, session="nan", max_pending=10_000, budget=None)

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
                             max_pending=10_000, budget=None)
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

    handle = StatsListener(MemoryStore(), FREQ, budget=None).attach(model, opt)
    assert _global_forward_hooks and opt._optimizer_step_pre_hooks  # (iteration 0 is reported)
    handle.remove()
    assert not any(m._forward_hooks for m in model.modules()) and not _global_forward_hooks
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_hooks_are_in_place_only_around_reported_iterations(digits):
    from torch.nn.modules.module import _global_forward_hooks as global_forward_hooks

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    listener = StatsListener(MemoryStore(), 3, session="h", budget=None)
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


def test_a_stalled_store_neither_blocks_training_nor_grows_memory(digits):
    store = StalledStore()
    listener = StatsListener(store, 1, max_pending=4, close_timeout=2.0, budget=None)
    t0 = time.perf_counter()
    handle = _one_batch_loop(listener, digits, 300)
    elapsed = time.perf_counter() - t0
    assert elapsed < 45  # a blocked write would take 60 s
    # all but what waits (4), what one batch holds (<= 50) and the one being written
    assert listener.dropped_reports >= 300 - 4 - 50 - 1
    t1 = time.perf_counter()
    handle.remove()
    assert time.perf_counter() - t1 < 4  # close returns although the store still hangs
    store.release.set()


@pytest.mark.slow
def test_memory_stays_flat_over_10000_iterations(digits, tmp_path):
    import tracemalloc

    store = embedviz.open_store(tmp_path / "long.db")
    listener = StatsListener(store, 10, budget=None)  # (tracemalloc slows the loop, not the listener)
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
    listener = StatsListener(store, FREQ, session="m", max_pending=10_000, budget=None)
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
    listener = StatsListener(store, 1, session="big", sample_limit=16384, budget=None)
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
    from embedviz.monitor._capture import Capture

    capture = Capture(4096, lambda device: None)
    for shape in [(256, 512), (512, 784), (1000, 10), (4096, 3), (300, 1000)]:
        t = torch.arange(math.prod(shape)).reshape(shape)
        kept = capture.view(t).reshape(-1)
        assert kept.numel() == 4096 and len(set(kept.tolist())) == 4096
        assert set((kept % shape[1]).tolist()) == set(range(shape[1])), shape
        assert int(kept.max()) // shape[1] >= shape[0] * 0.9, shape


def test_metrics_are_never_dropped_to_make_room_for_reports(digits):
    store = StalledStore()
    listener = StatsListener(store, 1, session="keep", max_pending=2, close_timeout=10.0,
                             budget=None)
    handle = _one_batch_loop(listener, digits, 60,
                             each=lambda i: listener.log_metric("val_loss", float(i), iteration=i))
    assert listener.dropped_reports > 0  # reports made room...
    store.release.set()
    handle.remove()
    got = store.read_series("keep", "metric/val_loss")
    assert got.iterations.tolist() == list(range(60))  # ...metrics did not


def test_a_nan_outside_the_sample_is_counted_exactly():
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Linear(400, 400)  # 160,000 weights, sampled in 256 blocks of 16, 624 apart
    listener = StatsListener(store, 1, session="s", sample_limit=4096, budget=None)
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
    listener = StatsListener(store, 1, session="g", sample_limit=4096, budget=None)
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
    listener = StatsListener(store, 1, session="c", budget=None)
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
    listener = StatsListener(store, 1, session="a", sample_limit=4096, budget=None)
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


def test_channels_last_weights_are_followed_step_by_step():
    """A non-contiguous parameter (a channels_last convolution) is sampled anew each report,
    not from a stale copy."""
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Conv2d(16, 32, 5).to(memory_format=torch.channels_last)  # 12,800 weights
    assert not model.weight.is_contiguous()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    listener = StatsListener(store, 1, session="cl", sample_limit=4096, budget=None)
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
    with StatsListener(store, 1, session="acc", budget=None).attach(model, opt) as handle:
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
        listener = StatsListener(store, FREQ, session="v", budget=None)
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
    with StatsListener(store, 1, session="acc", sample_limit=4096, budget=None).attach(model, opt) as handle:
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


def test_a_nan_in_an_unsampled_example_is_counted_exactly(digits):
    class Poison(torch.nn.Module):
        def forward(self, x):
            x = x.clone()
            x[63, 5] = math.nan  # the last example: not among the first, sampled ones
            return x

    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), Poison(), torch.nn.Linear(512, 10))
    listener = StatsListener(store, 1, session="p", sample_limit=4096, budget=None)
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
    with StatsListener(store, FREQ, session="ip", sample_limit=None,
                       max_pending=10_000, budget=None).attach(model, opt) as handle:  # (none dropped)
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

"""TensorBoard logdirs into a store: `embedviz import LOGDIR`, `import_tensorboard`, and
`embedviz serve --tensorboard`. The event files are written by torch's SummaryWriter and
Lightning's TensorBoardLogger; what is read back is compared with TensorBoard's own
EventAccumulator over the same files."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import embedviz
from embedviz.tbimport import TensorBoardImporter, _kind, import_tensorboard

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

ALL = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0}
LOSS = [2.0, 1.5, float("nan"), 1.1, 0.9, 0.8, float("inf"), 0.6]


def accumulator(folder: Path) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(folder), size_guidance=ALL)
    acc.Reload()
    return acc


def write_run(folder: Path, steps: int = len(LOSS)) -> None:
    """A run as a PyTorch user writes one: the loss (NaN and Inf among it), an accuracy,
    histograms of a weight and its gradient every other step, an embedding at two steps,
    hparams."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4)
    w = SummaryWriter(str(folder))
    for step in range(steps):
        w.add_scalar("Loss/train", LOSS[step % len(LOSS)], step)
        w.add_scalar("accuracy", step / 10, step)
        if step % 2 == 0:
            w.add_histogram("fc.weight", lin.weight.detach() * (1 + step), step)
            w.add_histogram("fc.weight.grad", torch.randn(32), step)
    w.add_scalar("val/loss", -math.inf, 3)
    words = [f"w{i}" for i in range(12)]
    for step in (0, 5):
        w.add_embedding(torch.randn(12, 6), metadata=[[x, str(i % 3)] for i, x in enumerate(words)],
                        metadata_header=["word", "group"], global_step=step, tag="emb")
    w.add_hparams({"lr": 0.1, "optimizer": "sgd", "nesterov": True}, {"hp/accuracy": 0.7},
                  run_name="hp")
    w.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb") / "runs"
    write_run(root / "exp1")
    return root


@pytest.fixture(scope="module")
def imported(logdir, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "tb.db"
    report = import_tensorboard(logdir, db, progress=False)
    store = embedviz.open_store(db)
    yield store, report
    store.close()


def session_named(store, name):
    return next(s for s in store.sessions() if s.name == name)


def equal_with_nan(a, b) -> bool:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def test_every_scalar_reads_back_equal_with_nan_and_inf_kept(logdir, imported):
    store, report = imported
    s = session_named(store, "runs/exp1")
    acc = accumulator(logdir / "exp1")
    loss = acc.Scalars("Loss/train")
    score = store.read_series(s.id, "score")
    assert score.iterations.tolist() == [e.step for e in loss]
    assert equal_with_nan(score.values, [e.value for e in loss])
    assert np.isnan(score.values[2]) and score.values[6] == math.inf
    assert equal_with_nan(score.wall_times, [e.wall_time for e in loss])
    for tag in ("accuracy", "val/loss"):
        got = store.read_series(s.id, f"metric/{tag}")
        want = acc.Scalars(tag)
        assert got.iterations.tolist() == [e.step for e in want]
        assert equal_with_nan(got.values, [e.value for e in want])
    assert store.read_series(s.id, "metric/val/loss").values.tolist() == [-math.inf]
    assert "metric/Loss/train" not in store.series_keys(s.id)  # (it is the score)
    assert report.imported["scores"] == len(LOSS) and not report.problems


def test_histograms_keep_counts_and_derive_what_the_proto_allows(logdir, imported):
    store, _ = imported
    s = session_named(store, "runs/exp1")
    acc = accumulator(logdir / "exp1")
    assert set(store.series_keys(s.id)) >= {"param/fc.weight/mean", "gradient/fc.weight/mean"}
    for tag, target in (("fc.weight", "param/fc.weight"), ("fc.weight.grad", "gradient/fc.weight")):
        want = acc.Histograms(tag)
        got = store.read_histograms(s.id, target)
        assert [h.iteration for h in got] == [e.step for e in want]
        for h, e in zip(got, want):
            v = e.histogram_value
            assert int(h.histogram.counts.sum()) == int(v.num)
            assert h.histogram.edges[0] >= v.min and h.histogram.edges[-1] <= v.max
            assert np.all(np.diff(h.histogram.edges) > 0)
        mean = store.read_series(s.id, f"{target}/mean").values
        assert np.allclose(mean, [e.histogram_value.sum / e.histogram_value.num for e in want])
        sd = store.read_series(s.id, f"{target}/stdev").values
        v = want[-1].histogram_value
        assert sd[-1] == pytest.approx(math.sqrt(v.sum_squares / v.num - (v.sum / v.num) ** 2))
        assert store.read_series(s.id, f"{target}/min").values.tolist() == [e.histogram_value.min for e in want]
        # TensorBoard keeps no mean magnitude nor share of zeros: absent, not made up
        assert np.isnan(store.read_series(s.id, f"{target}/mean_magnitude").values).all()
        assert np.isnan(store.read_series(s.id, f"{target}/zero_fraction").values).all()


def test_hparams_become_tags_and_projector_tensors_snapshots(logdir, imported):
    store, _ = imported
    # (add_hparams writes into a folder of its run's: part of the run, not a session)
    assert [s.name for s in store.sessions()] == ["runs/exp1"]
    s = session_named(store, "runs/exp1")
    assert s.tags == {"lr": 0.1, "optimizer": "sgd", "nesterov": True}
    assert store.read_series(s.id, "metric/hp/accuracy").values.tolist() == [pytest.approx(0.7)]
    sets = sorted(store.embeddings(s.id), key=lambda e: e.iteration)
    for info in sets:  # (a PCA map each, as the projector opens on one)
        [p] = store.projections(info.key)
        assert (p.method, p.state, p.coords.shape) == ("pca", "done", (12, 2))
    assert [(e.name, e.iteration) for e in sets] == [("emb", 0), ("emb", 5)]
    e = store.embedding(sets[1].key)
    assert e.labels == [f"w{i}" for i in range(12)]
    assert e.metadata == {"group": [str(i % 3) for i in range(12)]}
    want = np.loadtxt(logdir / "exp1" / "00005" / "emb" / "tensors.tsv", delimiter="\t")
    assert np.array_equal(e.vectors, want.astype(np.float32))


def test_the_checks_run_on_what_an_import_has_and_say_what_they_could_not(imported):
    store, _ = imported
    s = session_named(store, "runs/exp1")
    found = [f for _, f in store.findings(s.id)]
    # (NaN at 2, finite for three reports, then Inf at 6: two episodes)
    assert [(f.check, f.iteration) for f in found] == [("nan", 2), ("nan", 6)]
    not_run = s.info["health"]["not_run"]
    assert "update_ratio_high" in not_run and "mean magnitudes" in not_run["update_ratio_high"]
    assert "loss_diverging" not in not_run and "nan" not in not_run


def test_doctor_lists_the_checks_an_import_could_not_run(imported, tmp_path):
    store, _ = imported
    out = subprocess.run(["embedviz", "doctor", store.url], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr  # (the NaN is an error)
    assert "nan" in out.stdout and "runs/exp1: " in out.stdout
    assert "could not run for want of data" in out.stdout
    assert "update_ratio_high, update_ratio_low" in out.stdout


def test_reimport_adds_nothing_and_an_appending_writer_is_followed(tmp_path):
    folder = tmp_path / "logs" / "live"
    db = tmp_path / "live.db"
    w = SummaryWriter(str(folder), flush_secs=3600)
    for step in range(5):
        w.add_scalar("loss", 1.0 / (step + 1), step)
    w.flush()
    with TensorBoardImporter(tmp_path / "logs", str(db)) as imp:
        first = imp.poll()
        assert first.imported["scores"] == 5
        again = imp.poll()
        assert not again.imported and not again.sessions
        for step in range(5, 9):
            w.add_scalar("loss", 1.0 / (step + 1), step)
            w.add_scalar("lr", 0.1, step)
        w.flush()
        more = imp.poll()
        assert more.imported["scores"] == 4 and more.imported["metrics"] == 4
    w.close()
    # a new process, a new importer: what is stored says where each file was left
    report = import_tensorboard(tmp_path / "logs", db, progress=False)
    assert not report.imported
    with embedviz.open_store(db, readonly=True) as store:
        sid = store.sessions()[0].id
        score = store.read_series(sid, "score")
        assert score.iterations.tolist() == list(range(9))
        assert np.allclose(score.values, [1.0 / (i + 1) for i in range(9)])


def event_file(folder: Path) -> Path:
    return next(folder.glob("events.out.tfevents.*"))


def record_starts(path: Path) -> list[int]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        out.append(pos)
        pos += 12 + int.from_bytes(data[pos:pos + 8], "little") + 4
    return out


def ten_losses(folder: Path) -> tuple[Path, list[int]]:
    """An event file of the losses 0..9 at steps 0..9, and where each record starts
    (record 1: the file version; record k + 2: step k)."""
    w = SummaryWriter(str(folder))
    for step in range(10):
        w.add_scalar("loss", float(step), step)
    w.close()
    f = event_file(folder)
    return f, record_starts(f)


def test_a_cut_file_imports_what_precedes_and_names_the_record(tmp_path):
    f, starts = ten_losses(tmp_path / "src")
    run = tmp_path / "logs" / "cut"
    run.mkdir(parents=True)
    data = f.read_bytes()
    (run / f.name).write_bytes(data[:starts[6] + 5])  # (record 7, step 5, cut short)
    db = tmp_path / "cut.db"
    report = import_tensorboard(tmp_path / "logs", db, progress=False)
    assert report.imported["scores"] == 5
    assert any(f.name in n and "record 7 " in n and "incomplete" in n for n in report.notes)
    # the rest of the record arrives (a writer still writing): it and what follows are read
    (run / f.name).write_bytes(data)
    report = import_tensorboard(tmp_path / "logs", db, progress=False)
    assert report.imported["scores"] == 5 and not report.notes
    with embedviz.open_store(db, readonly=True) as store:
        assert store.read_series(store.sessions()[0].id, "score").values.tolist() == list(range(10))


def test_a_damaged_record_is_named_and_what_precedes_it_imported(tmp_path):
    f, starts = ten_losses(tmp_path / "src")
    data = bytearray(f.read_bytes())
    data[starts[4] + 14] ^= 0xFF  # (a byte of record 5's data: step 3)
    bad = tmp_path / "logs" / "bad"
    bad.mkdir(parents=True)
    (bad / f.name).write_bytes(bytes(data))
    junk = tmp_path / "logs" / "junk"
    junk.mkdir()
    (junk / "events.out.tfevents.1.host").write_bytes(b"this is not an event file at all")
    db = tmp_path / "bad.db"
    out = subprocess.run(["embedviz", "import", str(tmp_path / "logs"), str(db)],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert f"{f.name}: record 5 (byte {starts[4]:,}) is damaged" in out.stderr
    assert "checksum" in out.stderr and "the 4 records before it are imported" in out.stderr
    assert "junk" in out.stderr and "not a TensorBoard event file" in out.stderr
    with embedviz.open_store(db, readonly=True) as store:
        names = {s.name: s for s in store.sessions()}
        assert store.read_series(names["logs/bad"].id, "score").values.tolist() == [0, 1, 2]
        assert "logs/junk" not in names  # (nothing of a file that is not one)


def test_lightning_tensorboard_logger_runs_import_whole(tmp_path):
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import TensorBoardLogger
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(X[:512] / 16.0, dtype=torch.float32),
                                          torch.tensor(y[:512]))

    class Net(lightning.LightningModule):
        def __init__(self, hidden: int = 16, lr: float = 1e-2):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 10))

        def training_step(self, batch, _):
            x, t = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), t)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, t = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), t))

        def on_train_epoch_end(self):
            for name, p in self.named_parameters():
                self.logger.experiment.add_histogram(name, p, self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    trainer = lightning.Trainer(max_epochs=3, logger=TensorBoardLogger(str(tmp_path), name="pl"),
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, log_every_n_steps=2,
                                accelerator="cpu")
    trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=64),
                torch.utils.data.DataLoader(data, batch_size=256))
    db = tmp_path / "pl.db"
    out = subprocess.run(["embedviz", "import", str(tmp_path / "pl"), str(db)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    acc = accumulator(tmp_path / "pl" / "version_0")
    with embedviz.open_store(db, readonly=True) as store:
        s = session_named(store, "pl/version_0")
        assert s.tags == {"hidden": 16, "lr": 0.01}
        score = store.read_series(s.id, "score")
        want = acc.Scalars("train_loss")
        assert score.iterations.tolist() == [e.step for e in want] and len(want) == 12
        assert np.array_equal(score.values, np.array([e.value for e in want]))
        # (Lightning's "epoch" scalar, logged at each step beside the loss: the update's epoch)
        epochs = [r.epoch for r in store.records(s.id)
                  if isinstance(r, embedviz.Update) and r.score is not None]
        assert epochs == [0] * 4 + [1] * 4 + [2] * 4
        val = store.read_series(s.id, "metric/val_loss")
        assert val.values.tolist() == [e.value for e in acc.Scalars("val_loss")]
        # histograms at the epoch's number, a step without a score: no NaN made of the gap
        assert [h.iteration for h in store.read_histograms(s.id, "param/net.0.weight")] == [0, 1, 2]
        assert not [f for _, f in store.findings(s.id) if f.check == "nan"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_follows_a_logdir_a_training_is_writing(tmp_path):
    logdir = tmp_path / "logs"  # (not there yet: the app starts first, as TensorBoard can)
    db = tmp_path / "follow.db"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "embedviz.cli", "serve", str(db), "--port",
                             str(port), "--tensorboard", str(logdir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def scores() -> list[float]:
        if not db.exists():
            return []
        with embedviz.open_store(db, readonly=True) as store:
            sessions = store.sessions()
            return store.read_series(sessions[0].id, "score").values.tolist() if sessions else []

    def wait(n: int) -> list[float]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                got = scores()
            except embedviz.StoreError:
                got = []
            if len(got) >= n:
                return got
            time.sleep(0.5)
        raise AssertionError(f"{n} scores not imported in 60 s: {got}")

    try:
        time.sleep(2)
        w = SummaryWriter(str(logdir / "run"), flush_secs=3600)
        w.add_scalar("loss", 1.0, 0)
        w.flush()
        assert wait(1) == [1.0]
        for step in range(1, 4):
            w.add_scalar("loss", 1.0 / (step + 1), step)
        w.flush()
        assert wait(4) == [1.0, 0.5, pytest.approx(1 / 3), 0.25]
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    w.close()
    assert f"following {logdir}" in out and "waiting for it" in out


def test_a_missing_logdir_and_a_file_are_told_apart(tmp_path):
    out = subprocess.run(["embedviz", "import", str(tmp_path / "nope"), str(tmp_path / "x.db")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no such file or folder" in out.stderr
    (tmp_path / "empty").mkdir()
    out = subprocess.run(["embedviz", "import", str(tmp_path / "empty"), str(tmp_path / "x.db")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no TensorBoard event files" in out.stderr
    assert not (tmp_path / "x.db").exists()  # (a failed import leaves no empty store)


@pytest.mark.parametrize("tag,key", [
    ("fc1.weight", "param/fc1.weight"),
    ("fc1.weight.grad", "gradient/fc1.weight"),
    ("grad/fc1.weight", "gradient/fc1.weight"),
    ("gradients/layer1/kernel", "gradient/layer1.kernel"),
    ("dense/kernel/histogram", "param/dense.kernel"),  # (Keras: layer dense, tensor kernel)
    ("activations/relu1", "activation/relu1"),
    ("grad", "param/grad"),
])
def test_histogram_tags_name_the_kind_of_tensor(tag, key):
    assert _kind(tag) == key


def test_a_copied_run_is_imported_once(tmp_path):
    write = SummaryWriter(str(tmp_path / "logs" / "a"))
    write.add_scalar("loss", 1.0, 0)
    write.close()
    shutil.copytree(tmp_path / "logs" / "a", tmp_path / "logs" / "b")
    report = import_tensorboard(tmp_path / "logs", tmp_path / "c.db", progress=False)
    assert report.imported["scores"] == 1
    assert any("a copy?" in p for p in report.problems)


def test_the_health_page_lists_the_checks_an_import_could_not_run(imported):
    from bokeh.document import Document
    from embedviz.server import AppState
    from embedviz.server.app_doc import build_document

    store, _ = imported
    s = session_named(store, "runs/exp1")
    app = AppState(store.url, jobs=False)
    try:
        doc = Document()
        build_document(doc, app, page="health", sessions=[s.id])
        note = doc.get_model_by_name("not-run")
        assert note.visible and "runs/exp1" in note.text
        assert "update_ratio_high, update_ratio_low" in note.text
    finally:
        app.close()


def test_tensorflow_2_summaries_read_by_the_plugin_named_once(tmp_path):
    """TensorFlow 2 writes scalars and histograms as tensors, naming their plugin on a tag's
    first value only (written here with TensorBoard's own writer and summary protos)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.histogram.summary import histogram_pb
    from tensorboard.plugins.scalar.summary import scalar_pb
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(tmp_path / "logs" / "tf2"))
    data = np.random.default_rng(0).normal(size=1000)
    for step in range(4):
        s = scalar_pb("loss", 1.0 / (step + 1))
        h = histogram_pb("dense/kernel", data * (step + 1), buckets=30)
        if step:  # (the plugin named once)
            s.value[0].ClearField("metadata")
            h.value[0].ClearField("metadata")
        w.add_event(Event(wall_time=1000.0 + step, step=step, summary=s))
        w.add_event(Event(wall_time=1000.0 + step, step=step, summary=h))
    w.close()
    db = tmp_path / "tf2.db"
    report = import_tensorboard(tmp_path / "logs", db, progress=False)
    assert report.imported["scores"] == 4 and report.imported["histograms"] == 4
    with embedviz.open_store(db, readonly=True) as store:
        sid = store.sessions()[0].id
        assert np.allclose(store.read_series(sid, "score").values, [1, 1 / 2, 1 / 3, 1 / 4])
        got = store.read_histograms(sid, "param/dense.kernel")
        assert [int(h.histogram.counts.sum()) for h in got] == [1000] * 4
        assert store.read_series(sid, "param/dense.kernel/min").values[-1] == pytest.approx(4 * data.min())
        assert store.read_series(sid, "param/dense.kernel/max").values[0] == pytest.approx(data.max())
        # (bucket triples hold no sum: no mean made up)
        assert np.isnan(store.read_series(sid, "param/dense.kernel/mean").values).all()


def test_an_event_file_passed_for_its_folder_and_an_old_stub_are_named(tmp_path):
    run = tmp_path / "logs" / "run"
    w = SummaryWriter(str(run))
    w.add_scalar("loss", 1.0, 0)
    w.close()
    f = event_file(run)
    out = subprocess.run(["embedviz", "import", str(f), str(tmp_path / "x.db")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "is a TensorBoard event file: pass its folder" in out.stderr
    stub = tmp_path / "logs" / "stub" / "events.out.tfevents.2.host"
    stub.parent.mkdir()
    stub.write_bytes(b"\x01\x02\x03\x04\x05\x06")
    # (a partial first record: a writer that has just begun, unless the file is old)
    report = import_tensorboard(tmp_path / "logs", tmp_path / "a.db", progress=False)
    assert not report.problems and any("stub" in n and "incomplete" in n for n in report.notes)
    old = time.time() - 3600
    os.utime(stub, (old, old))
    report = import_tensorboard(tmp_path / "logs", tmp_path / "b.db", progress=False)
    assert any("stub" in p and "not a TensorBoard event file" in p for p in report.problems)
    assert report.imported["scores"] == 1


def test_the_model_page_explains_what_tensorboard_does_not_keep(imported):
    """No mean magnitudes in TensorBoard's histograms: their columns are not series (no NaN
    marked on a chart), the charts say why; the histograms are drawn."""
    from bokeh.document import Document
    from bokeh.models import Div
    from embedviz.server import AppState
    from embedviz.server.app_doc import build_document

    store, _ = imported
    s = session_named(store, "runs/exp1")
    assert "param/fc.weight/mean_magnitude" in store.series_keys(s.id)  # (stored, all NaN)
    app = AppState(store.url, jobs=False)
    try:
        doc = Document()
        tab = build_document(doc, app, page="model", sessions=[s.id])
        text = "\n".join(m.text for m in doc.models if isinstance(m, Div))
        assert "Imported from TensorBoard" in text
        assert "a learning rate it logged" not in text  # (this run logged none)
        charts = tab.pages[tab.current].charts
        assert not any("mean_magnitude" in str(line.keys) for c in charts for g in c.groups
                       for line in g.lines)
        assert any(m.name == "layer" for m in doc.models)
    finally:
        app.close()


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_every_store_takes_an_import_and_a_second_adds_nothing(backend, logdir, imported, request):
    target = request.getfixturevalue("postgres_url") if backend == "postgres" else ":memory:"
    want, _ = imported
    with embedviz.open_store(target) as store:
        first = import_tensorboard(logdir, store, progress=False)
        assert first.imported["scores"] == len(LOSS) and first.imported["embeddings"] == 2
        assert not import_tensorboard(logdir, store, progress=False).imported
        s, w = session_named(store, "runs/exp1"), session_named(want, "runs/exp1")
        assert s.id == w.id and s.tags == w.tags
        for key in ("score", "metric/accuracy", "param/fc.weight/stdev"):
            assert equal_with_nan(store.read_series(s.id, key).values,
                                  want.read_series(w.id, key).values)
        assert [(f.check, f.iteration) for _, f in store.findings(s.id)] == \
            [(f.check, f.iteration) for _, f in want.findings(w.id)]


def test_add_scalars_lines_and_a_resumed_run_belong_to_their_run(tmp_path):
    """add_scalars writes a folder a line inside the run's: the run's metrics "Loss/train"
    (a loss the score); a training resumed in the same folder at an earlier step is kept
    whole and said."""
    run = tmp_path / "logs" / "exp"
    w = SummaryWriter(str(run))
    for step in range(6):
        w.add_scalars("Loss", {"train": 1.0 / (step + 1), "val": 2.0 / (step + 1)}, step)
    w.close()
    w = SummaryWriter(str(run))  # (resumed from a checkpoint of step 3: a second file)
    for step in range(3, 6):
        w.add_scalars("Loss", {"train": 0.5 / (step + 1), "val": 1.0 / (step + 1)}, step)
    w.close()
    report = import_tensorboard(tmp_path / "logs", tmp_path / "s.db", progress=False)
    assert report.sessions == ["logs/exp"]
    assert any("goes back from 5 to 3" in n and "both are kept" in n for n in report.notes)
    with embedviz.open_store(tmp_path / "s.db", readonly=True) as store:
        [s] = store.sessions()
        assert store.read_series(s.id, "score").iterations.tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5]
        assert store.read_series(s.id, "metric/Loss/val").values[:2].tolist() == [2.0, 1.0]


def test_a_run_without_a_known_loss_is_said_and_score_picks_one(tmp_path):
    w = SummaryWriter(str(tmp_path / "logs" / "run"))
    for step in range(3):
        w.add_scalar("objective", 3.0 - step, step)
    w.close()
    report = import_tensorboard(tmp_path / "logs", tmp_path / "a.db", progress=False)
    assert report.imported["metrics"] == 3 and not report.imported["scores"]
    assert any("no scalar tag is a training loss" in n and "--score TAG" in n for n in report.notes)
    report = import_tensorboard(tmp_path / "logs", tmp_path / "b.db", score="objective",
                                progress=False)
    assert report.imported["scores"] == 3 and not report.notes
    # (a store that holds the run keeps the score it was imported with, and says so)
    report = import_tensorboard(tmp_path / "logs", tmp_path / "a.db", score="objective",
                                progress=False)
    assert any("import into a new store" in n for n in report.notes)


def test_two_runs_embedding_sets_of_one_name_are_told_apart_in_the_picker(tmp_path):
    """Bokeh's picker finds a choice by its label: two runs' "hidden" must not read alike."""
    from bokeh.document import Document
    from bokeh.models import Select
    from embedviz.server import AppState
    from embedviz.server.app_doc import build_document

    for run in ("a", "b"):
        w = SummaryWriter(str(tmp_path / "logs" / run))
        w.add_scalar("loss", 1.0, 0)
        w.add_embedding(torch.randn(10, 4), metadata=[str(i % 2) for i in range(10)],
                        global_step=0, tag="hidden")
        w.close()
    db = tmp_path / "two.db"
    import_tensorboard(tmp_path / "logs", db, progress=False)
    app = AppState(str(db), jobs=False)
    try:
        doc = Document()
        ids = [s.id for s in app.store.sessions()]
        build_document(doc, app, page="embeddings", sessions=ids)
        pick = next(m for m in doc.models if isinstance(m, Select) and m.title == "Embedding set")
        labels = [label for _, label in pick.options]
        assert len(labels) == 2 and len(set(labels)) == 2
        assert {label.rsplit(": ", 1)[1] for label in labels} == {"logs/a", "logs/b"}
    finally:
        app.close()

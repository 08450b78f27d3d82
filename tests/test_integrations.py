"""gensim word2vec and PyTorch Lightning, recorded into the same store."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from embedviz.monitor import Word2VecListener

import embedviz


@pytest.fixture(scope="module")
def lee_corpus():
    from gensim.test.utils import datapath
    from gensim.utils import simple_preprocess

    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        return [simple_preprocess(line) for line in f]


def test_word2vec_epochs_and_vocabulary_snapshots_land_in_the_store(lee_corpus, tmp_path):
    from gensim.models import Word2Vec

    store = embedviz.open_store(tmp_path / "w2v.db")
    listener = Word2VecListener(store, session="lee", snapshot_every=2, top_n=200)
    model = Word2Vec(lee_corpus, vector_size=32, min_count=3, epochs=4, workers=1, seed=1,
                     compute_loss=True, callbacks=[listener])
    loss = store.read_series("lee", "score")
    assert loss.iterations.tolist() == [0, 1, 2, 3]
    assert np.all(loss.values > 0)
    assert len(store.read_series("lee", "timing/words_per_s")) == 4
    sets = store.embeddings("lee")
    assert [(e.iteration, e.n, e.dim) for e in sets] == [(1, 200, 32), (3, 200, 32)]
    last = store.embedding(sets[-1].key)
    assert last.labels == model.wv.index_to_key[:200]
    assert np.allclose(last.vectors, model.wv.vectors[:200])
    assert last.metadata["count"][0] >= last.metadata["count"][-1]  # frequency order
    assert store.static("lee")["model"]["vector_size"] == 32


def test_word2vec_without_compute_loss_says_how_to_get_it(lee_corpus, caplog):
    from gensim.models import Word2Vec

    store = embedviz.open_store(":memory:")
    Word2Vec(lee_corpus[:50], vector_size=8, min_count=1, epochs=1, workers=1,
             callbacks=[Word2VecListener(store, session="nl", snapshot_every=0)])
    assert "compute_loss=True" in caplog.text
    assert len(store.read_series("nl", "timing/epoch_s")) == 1


def test_lightning_callback_in_one_line(tmp_path):
    lightning = pytest.importorskip("lightning")
    from embedviz.monitor.lightning import StatsCallback
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y))

    class Net(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))

        def training_step(self, batch, _):
            x, t = batch
            return torch.nn.functional.cross_entropy(self.net(x), t)

        def validation_step(self, batch, _):
            x, t = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), t))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    store = embedviz.open_store(tmp_path / "pl.db")
    torch.manual_seed(0)
    trainer = lightning.Trainer(max_epochs=2, callbacks=[StatsCallback(store, 5, session="pl", max_pending=10_000,
                                                                          budget=None)],
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                default_root_dir=str(tmp_path), accelerator="cpu")
    trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=64),
                torch.utils.data.DataLoader(data, batch_size=256))
    steps = 2 * int(np.ceil(len(X) / 64))
    assert store.read_series("pl", "score").iterations.tolist() == list(range(0, steps, 5))
    upd = store.read_series("pl", "update/net.0.weight/mean_magnitude").values
    assert len(upd) == len(range(0, steps, 5)) and np.all(upd > 0)
    # Adam's first step moves every weight with a gradient by about lr (1e-2): the update,
    # not the gradient, is what is recorded
    hi = store.read_series("pl", "update/net.0.weight/max").values[0]
    lo = store.read_series("pl", "update/net.0.weight/min").values[0]
    assert max(hi, -lo) == pytest.approx(1e-2, rel=1e-3)
    assert len(store.read_series("pl", "metric/val_loss")) == 2
    # Lightning's sanity check runs validation batches of 256 before training's first batch of
    # 64, while iteration 0's hooks are in place: the layer table and iteration 0's activations
    # are the training batch's
    layers = {layer["name"]: layer for layer in store.static("pl")["model"]["layers"]}
    assert layers["net.0"]["input_shapes"] == [[64, 64]]
    assert layers["net.2"]["output_shapes"] == [[64, 10]]
    assert store.read_series("pl", "activation/net.0/count").values[0] == 64 * 16
    assert store.read_series("pl", "timing/examples_per_s").values[-1] > 0
    assert os.path.exists(tmp_path / "pl.db")


LIGHTNING_DDP = """
    import json, sys
    import torch
    import lightning
    from embedviz.monitor.lightning import StatsCallback

    class Net(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                           torch.nn.Linear(16, 1))
            self.losses = []

        def training_step(self, batch, _):
            x, t = batch
            loss = torch.nn.functional.mse_loss(self.net(x), t)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    g = torch.Generator().manual_seed(0)
    X = torch.randn(128, 8, generator=g)
    data = torch.utils.data.TensorDataset(X, X[:, :1] * 2 + 0.1 * torch.randn(128, 1, generator=g))
    torch.manual_seed(0)
    model = Net()
    callback = StatsCallback(sys.argv[1], 1, max_pending=1000, background="thread", checks=False,
                             budget=None)
    trainer = lightning.Trainer(max_epochs=2, strategy="ddp", devices=2, accelerator="cpu",
                                callbacks=[callback], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                default_root_dir=sys.argv[2])
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=16))
    with open(f"{sys.argv[1]}.{trainer.global_rank}.json", "w") as f:
        json.dump({"losses": model.losses, "session": callback.listener.session}, f)
"""


def _listener_knows_ranks() -> bool:
    import inspect

    from embedviz.monitor.listener import StatsListener
    return "ranks" in inspect.signature(StatsListener.__init__).parameters


@pytest.mark.slow
def test_lightning_ddp_on_cpu_records_one_session_with_a_worker_a_rank(tmp_path):
    pytest.importorskip("lightning")
    if not _listener_knows_ranks():
        pytest.skip("StatsListener does not know ranks yet")
    import json
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(LIGHTNING_DDP))
    db = tmp_path / "ddp.db"
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK",
                                                            "RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(script), str(db), str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    logged = [json.loads((tmp_path / f"ddp.db.{r}.json").read_text()) for r in (0, 1)]
    store = embedviz.open_store(db)
    (session,) = store.sessions()
    assert logged[0]["session"] == logged[1]["session"] == session.id
    assert [w.worker for w in session.workers] == ["0", "1"]
    steps = 2 * 128 // 16 // 2  # (each rank: half of each epoch's batches)
    assert not np.allclose(logged[0]["losses"], logged[1]["losses"])  # (each rank its data)
    for rank in (0, 1):
        score = store.read_series(session.id, "score", worker=str(rank))
        assert score.iterations.tolist() == list(range(steps))
        assert np.allclose(score.values, logged[rank]["losses"], rtol=1e-6)
        static = store.static(session.id, str(rank))
        assert (static["distributed"]["rank"], static["distributed"]["world_size"]) == (rank, 2)
        assert len(store.read_series(session.id, "update/net.0.weight/mean_magnitude",
                                     worker=str(rank))) == steps
    store.close()


def test_lightning_with_two_optimizers_records_both_models(tmp_path):
    lightning = pytest.importorskip("lightning")
    from embedviz.monitor.lightning import StatsCallback

    class Gan(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.generator = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                                 torch.nn.Linear(8, 2))
            self.discriminator = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
                                                     torch.nn.Linear(8, 1))

        def training_step(self, batch, _):
            (real,) = batch
            opt_g, opt_d = self.optimizers()
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            fake = self.generator(torch.randn(len(real), 4))
            d_loss = (bce(self.discriminator(real), torch.ones(len(real), 1))
                      + bce(self.discriminator(fake.detach()), torch.zeros(len(real), 1)))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            g_loss = bce(self.discriminator(fake), torch.ones(len(real), 1))
            opt_g.zero_grad()
            self.manual_backward(g_loss)
            opt_g.step()
            return {"loss": g_loss.detach()}

        def configure_optimizers(self):
            return (torch.optim.Adam(self.generator.parameters(), lr=1e-3),
                    torch.optim.Adam(self.discriminator.parameters(), lr=2e-3))

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 2) + 3)
    store = embedviz.open_store(tmp_path / "gan.db")
    trainer = lightning.Trainer(max_epochs=1, callbacks=[StatsCallback(store, 2, session="gan",
                                                                       checks=False, budget=None)],
                                logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=str(tmp_path),
                                accelerator="cpu")
    trainer.fit(Gan(), torch.utils.data.DataLoader(data, batch_size=32))
    score = store.read_series("gan", "score")
    assert score.iterations.tolist() == [0, 2, 4, 6] and np.all(np.isfinite(score.values))
    for name in ("generator.0.weight", "discriminator.0.weight"):
        update = store.read_series("gan", f"update/{name}/mean_magnitude").values
        assert len(update) == 4 and np.all(update > 0)
    assert store.read_series("gan", "lr/0").values.tolist() == [1e-3] * 4
    assert store.read_series("gan", "lr/1").values.tolist() == [2e-3] * 4
    store.close()

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
    trainer = lightning.Trainer(max_epochs=2, callbacks=[StatsCallback(store, 5, session="pl", max_pending=10_000)],
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

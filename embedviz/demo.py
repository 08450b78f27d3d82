"""``embedviz demo``: train a small network and a word2vec model, record both, show them.

Everything it uses ships with the installed packages: scikit-learn's digits and gensim's
``lee_background.cor`` corpus.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from embedviz.records import EmbeddingSet
from embedviz.store import Store


def train_digits_mlp(store: Store, *, epochs: int = 8, frequency: int = 10, lr: float = 0.1,
                     name: str = "digits-mlp", snapshots: tuple[int, ...] = ()) -> str:
    """An MLP 64-64-32-10 on scikit-learn's digits with SGD + momentum; returns the session.

    ``snapshots``: epochs after which the penultimate layer's outputs for the held-out
    images are stored as an embedding set (epoch 0: before training), coloured by digit in
    the app, whose snapshot slider then shows the classes separating as the network learns.
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from embedviz.monitor import StatsListener

    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(X / 16.0, y, test_size=0.2, random_state=0)
    Xtr, Xva = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xva, dtype=torch.float32)
    ytr, yva = torch.tensor(ytr), torch.tensor(yva)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    listener = StatsListener(store, frequency, session_name=name, num_classes=10,
                             tags={"dataset": "sklearn digits"},
                             hyperparameters={"lr": lr, "momentum": 0.9, "batch_size": 32,
                                              "epochs": epochs})
    features: list[tuple[int, np.ndarray]] = []  # (stored once the session is)

    def snapshot(epoch: int) -> None:
        with torch.no_grad():
            features.append((epoch, model[:4](Xva).numpy()))

    with listener.attach(model, opt):
        if 0 in snapshots:
            snapshot(0)
        for epoch in tqdm(range(epochs), desc=name, unit="epoch"):
            perm = torch.randperm(len(Xtr))
            for i in range(0, len(Xtr), 32):
                idx = perm[i:i + 32]
                loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                listener.step(loss, batch_size=len(idx), epoch=epoch)
            with torch.no_grad():
                logits = model(Xva)
                listener.log_metric("val_loss", torch.nn.functional.cross_entropy(logits, yva))
                listener.log_metric("val_accuracy", (logits.argmax(1) == yva).float().mean())
            if epoch + 1 in snapshots:
                snapshot(epoch + 1)
    for epoch, f in features:
        store.put_embedding(EmbeddingSet(
            f"{name}: penultimate layer, epoch {epoch}",
            [f"{int(d)} (image {i})" for i, d in enumerate(yva)],
            f, metadata={"digit": [str(int(d)) for d in yva]}, session=listener.session,
            iteration=epoch))
    return listener.session


def train_lee_word2vec(store: Store, *, epochs: int = 40, top_n: int = 400) -> str:
    """word2vec on gensim's shipped Lee corpus, with snapshots of its ``top_n`` most frequent
    words that are not stopwords (the most frequent words are mostly those, and a map of
    "the", "of" and "he" shows nothing); returns the session."""
    from gensim.models import Word2Vec
    from gensim.parsing.preprocessing import STOPWORDS
    from gensim.test.utils import datapath
    from gensim.utils import simple_preprocess

    from embedviz.monitor import Word2VecListener

    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        corpus = [simple_preprocess(line) for line in f]
    listener = Word2VecListener(store, session_name="lee-word2vec", snapshot_every=max(1, epochs // 5),
                                top_n=top_n, exclude=STOPWORDS)

    class Progress:  # gensim callbacks are duck-typed
        def __init__(self) -> None:
            self.bar = tqdm(total=epochs, desc="word2vec", unit="epoch")

        def on_epoch_end(self, model: object) -> None:
            self.bar.update()

        def __getattr__(self, name: str):  # the other hooks do nothing
            return lambda *a: None

    Word2Vec(corpus, vector_size=50, window=5, min_count=3, epochs=epochs, workers=1, seed=1,
             compute_loss=True, callbacks=[listener, Progress()])
    return listener.session


def plot_last_snapshot(store: Store, session: str, output: str) -> None:
    """t-SNE of the last vocabulary snapshot of a word2vec session, as a standalone page."""
    from embedviz.plot import plot_vocab
    from embedviz.projection import BarnesHutTsne
    from embedviz.vocab import Vocabulary

    last = store.embeddings(session)[-1]
    emb = store.embedding(last.key)
    vocab = Vocabulary(emb.labels, emb.vectors, emb.metadata, f"lee word2vec, epoch {emb.iteration}")
    plot_vocab(vocab, BarnesHutTsne(random_state=0), top_n=None, color_by="cluster",
               output=output, store=store, session=session)


def project_snapshots(store: Store, session: str, skip_last: bool = False, last: int = 3) -> None:
    """t-SNE of the ``last`` embedding sets of a session (the app's snapshot slider shows
    them); 500 iterations each, enough for a few hundred points."""
    from embedviz.projection import BarnesHutTsne, project
    from embedviz.vocab import Vocabulary

    sets = store.embeddings(session)[-last:]
    sets = sets[:-1] if skip_last else sets
    for info in tqdm(sets, desc=f"t-SNE of {store.session(session).name}", unit="snapshot"):
        e = store.embedding(info.key)
        project(Vocabulary(e.labels, e.vectors, e.metadata, e.name),
                BarnesHutTsne(max_iter=500, random_state=0, progress=False), store=store, session=session,
                iteration=e.iteration)


def run(store: Store, html: str | None = "vocab.html") -> None:
    """Record the demo's sessions into ``store`` and print what they show."""
    t0 = time.time()
    # a planted fault, so that the app has something to warn about: a learning rate 15x too high
    bad = train_digits_mlp(store, epochs=3, lr=1.5, name="digits-mlp-lr-too-high")
    mlp = train_digits_mlp(store, snapshots=(0, 2, 8))
    w2v = train_lee_word2vec(store)
    project_snapshots(store, mlp)
    project_snapshots(store, w2v, skip_last=bool(html))
    print(f"\nrecorded in {time.time() - t0:.1f} s into {store.url}")
    keys = [k for k in store.series_keys(mlp) if k.startswith("param/") and k.endswith(".weight/mean_magnitude")]
    print(f"\n{mlp}: log10 update:param ratio per layer (about -3 is healthy)")
    for key in keys:
        name = key.split("/")[1]
        p = store.read_series(mlp, key).values
        u = store.read_series(mlp, f"update/{name}/mean_magnitude").values
        r = np.log10(u / p)
        print(f"  {name:<10} first {r[0]:6.2f}   last {r[-1]:6.2f}")
    acc = store.read_series(mlp, "metric/val_accuracy").values
    print(f"  validation accuracy {acc[0]:.3f} -> {acc[-1]:.3f}")
    score = store.read_series(bad, "score").values
    print(f"{bad}: the planted fault, lr 1.5: score {score[0]:.2f} -> {score[-1]:.3g} "
          f"(chance is ln 10 = 2.30: the ReLUs died and it stopped learning)")
    loss = store.read_series(w2v, "score").values
    print(f"{w2v}: word2vec loss per epoch {loss[0]:.0f} -> {loss[-1]:.0f}; "
          f"{len(store.embeddings(w2v))} vocabulary snapshots")
    if html:
        plot_last_snapshot(store, w2v, html)
        proj = store.projections(store.embeddings(w2v)[-1].key)[-1]
        print(f"  t-SNE of the last snapshot: kNN preservation "
              f"{proj.quality['knn_preservation']:.2f}, trustworthiness "
              f"{proj.quality['trustworthiness']:.2f}; also in {html}")

"""``embedviz demo``: train a small network and a word2vec model, record both, show them.

Everything it uses ships with the installed packages: scikit-learn's digits and gensim's
``lee_background.cor`` corpus.

The demo is a set of three sessions, one per part (``PARTS``), each tagged ``demo`` (the set's
number, 1 for the first), ``demo_part`` and ``demo_state``: "recording" while it trains,
"recorded" once its training is stored, "done" once its snapshots are projected too, and
"interrupted" for one whose training stopped (it is renamed "<name> (interrupted)" and
recorded again). Run again on the same store, the demo records nothing when its last set is
done, completes it when it is not, and records a new set with ``again=True``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from embedviz.errors import EmbedvizError
from embedviz.records import EmbeddingSet, Session
from embedviz.store import SessionInfo, Store

if TYPE_CHECKING:
    from embedviz.projection import BarnesHutTsne

#: the demo's parts, in the order they are recorded, with their epochs
EPOCHS = {"digits-mlp-lr-too-high": 3, "digits-mlp": 8, "lee-word2vec": 40}
PARTS = tuple(EPOCHS)
SET, PART, STATE = "demo", "demo_part", "demo_state"


def train_digits_mlp(store: Store, *, epochs: int = 8, frequency: int = 10, lr: float = 0.1,
                     name: str = "digits-mlp", snapshots: tuple[int, ...] = (),
                     tags: Mapping | None = None, seed: int = 0) -> str:
    """An MLP 64-64-32-10 on scikit-learn's digits with SGD + momentum; returns the session.

    ``snapshots``: epochs after which the penultimate layer's outputs for the held-out
    images are stored as an embedding set (epoch 0: before training), coloured by digit in
    the app, whose snapshot slider then shows the classes separating as the network learns.
    ``tags``: the session's, beside the dataset; ``seed``: torch's.
    """
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from embedviz.monitor import StatsListener

    X, y = load_digits(return_X_y=True)
    Xtr, Xva, ytr, yva = train_test_split(X / 16.0, y, test_size=0.2, random_state=0)
    Xtr, Xva = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(Xva, dtype=torch.float32)
    ytr, yva = torch.tensor(ytr), torch.tensor(yva)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    # (budget=None: a 0.3 ms step would get its reports spaced to a handful; the demo is
    # there to show every chart of a run, and it is over in seconds)
    listener = StatsListener(store, frequency, session_name=name, num_classes=10, budget=None,
                             tags={"dataset": "sklearn digits", **(tags or {})},
                             hyperparameters={"lr": lr, "momentum": 0.9, "batch_size": 32,
                                              "epochs": epochs})
    features: list[tuple[int, int, np.ndarray]] = []  # (stored once the session is)

    def snapshot(epoch: int) -> None:
        with torch.no_grad():  # (at the iteration the charts show: the listener's count)
            features.append((epoch, listener.iteration, model[:4](Xva).numpy()))

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
    for epoch, iteration, f in features:
        store.put_embedding(EmbeddingSet(
            f"{name}: penultimate layer, epoch {epoch}",
            [f"{int(d)} (image {i})" for i, d in enumerate(yva)],
            f, metadata={"digit": [str(int(d)) for d in yva]}, session=listener.session,
            iteration=iteration))
    return listener.session


def train_lee_word2vec(store: Store, *, epochs: int = 40, top_n: int = 400,
                       tags: Mapping | None = None, seed: int = 0) -> str:
    """word2vec on gensim's shipped Lee corpus, with snapshots of its ``top_n`` most frequent
    words that are not stopwords (the most frequent words are mostly those, and a map of
    "the", "of" and "he" shows nothing); returns the session. ``seed``: added to gensim's 1."""
    from gensim.models import Word2Vec
    from gensim.parsing.preprocessing import STOPWORDS
    from gensim.test.utils import datapath
    from gensim.utils import simple_preprocess

    from embedviz.monitor import Word2VecListener

    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        corpus = [simple_preprocess(line) for line in f]
    listener = Word2VecListener(store, session_name="lee-word2vec", snapshot_every=max(1, epochs // 5),
                                top_n=top_n, exclude=STOPWORDS, tags=dict(tags or {}))

    class Progress:  # gensim callbacks are duck-typed
        def __init__(self) -> None:
            self.bar = tqdm(total=epochs, desc="word2vec", unit="epoch")

        def on_epoch_end(self, model: object) -> None:
            self.bar.update()

        def __getattr__(self, name: str):  # the other hooks do nothing
            return lambda *a: None

    Word2Vec(corpus, vector_size=50, window=5, min_count=3, epochs=epochs, workers=1, seed=1 + seed,
             compute_loss=True, callbacks=[listener, Progress()])
    return listener.session


def plot_last_snapshot(store: Store, session: str, output: str) -> None:
    """t-SNE of the last vocabulary snapshot of a word2vec session, as a standalone page."""
    from embedviz.plot import plot_vocab
    from embedviz.vocab import Vocabulary

    last = _snapshots(store, session)[-1]
    emb = store.embedding(last.key)
    vocab = Vocabulary(emb.labels, emb.vectors, emb.metadata, f"lee word2vec, epoch {emb.iteration}")
    plot_vocab(vocab, _snapshot_tsne(), top_n=None, color_by="cluster", output=output, store=store,
               session=session)


def _snapshot_tsne() -> BarnesHutTsne:
    """The t-SNE of the demo's maps: 500 iterations, enough for a few hundred points."""
    from embedviz.projection import BarnesHutTsne

    return BarnesHutTsne(max_iter=500, random_state=0, progress=False)


def project_snapshots(store: Store, session: str, last: int = 3) -> None:
    """t-SNE of the ``last`` embedding sets of a session (the app's snapshot slider shows
    them); a map already stored is not computed again."""
    from embedviz.projection import project
    from embedviz.vocab import Vocabulary

    sets = _snapshots(store, session)[-last:]
    for info in tqdm(sets, desc=f"t-SNE of {store.session(session).name}", unit="snapshot"):
        e = store.embedding(info.key)
        project(Vocabulary(e.labels, e.vectors, e.metadata, e.name), _snapshot_tsne(), store=store,
                session=session, iteration=e.iteration)


def _snapshots(store: Store, session: str) -> list:
    """The embedding sets ``session`` recorded (oldest first)."""
    sets = store.embeddings(session)
    if not sets:
        # (a set is stored once per content: the same vectors recorded by another session are
        # tied to that one, which is why each recording of the demo has its own seed)
        raise EmbedvizError(f"session {session!r} holds no embedding sets: its snapshots were not "
                            "recorded or belong to an earlier session with the same vectors; "
                            "record the demo anew with `embedviz demo --again`")
    return sets


def demo_sets(store: Store) -> dict[int, dict[str, SessionInfo]]:
    """The demo's sessions in ``store`` by set number and part, interrupted ones left out."""
    sets: dict[int, dict[str, SessionInfo]] = {}
    for s in store.sessions():
        n, part = s.tags.get(SET), s.tags.get(PART)
        if isinstance(n, int) and part in PARTS and s.tags.get(STATE) != "interrupted":
            sets.setdefault(n, {})[part] = s
    return sets


def _tag(store: Store, session: str, name: str | None = None, **tags: object) -> None:
    """Add ``tags`` to a session (and rename it): its record written again, the rest kept."""
    s = store.session(session)
    store.write([Session(id=s.id, name=name or s.name, created=s.created,
                         tags={**s.tags, **tags}, info=s.info)])


def _attempts(store: Store, part: str) -> int:
    """How often ``part`` was recorded into ``store`` before (by tag, or by name for a demo
    recorded before the tags): the seed of the next recording, so that its vectors differ."""
    return sum(s.tags.get(PART) == part or s.name == part for s in store.sessions())


def _train(store: Store, part: str, tags: dict, epochs: int) -> str:
    seed = _attempts(store, part)
    if part == "digits-mlp-lr-too-high":
        # a planted fault, so that the app has something to warn about: a learning rate 15x too high
        return train_digits_mlp(store, epochs=epochs, lr=1.5, name=part, tags=tags, seed=seed)
    if part == "digits-mlp":
        return train_digits_mlp(store, epochs=epochs, snapshots=tuple(sorted({0, epochs // 4, epochs})),
                                name=part, tags=tags, seed=seed)
    return train_lee_word2vec(store, epochs=epochs, tags=tags, seed=seed)


def _finish(store: Store, part: str, session: str) -> None:
    """What a part does after training: the t-SNE maps of its last snapshots."""
    if part in ("digits-mlp", "lee-word2vec"):
        project_snapshots(store, session)


def _record(store: Store, n: int, part: str, found: SessionInfo | None, epochs: int) -> str:
    """Part ``part`` of demo set ``n`` recorded and projected (``found``: what a run before
    left of it); returns its session."""
    state = found.tags.get(STATE) if found else None
    if found is not None and state == "done":
        return found.id
    if found is not None and state != "recorded":  # (its training stopped half-way)
        _tag(store, found.id, name=f"{found.name or part} (interrupted)", **{STATE: "interrupted"})
        found = None
    session = found.id if found else _train(store, part, {SET: n, PART: part, STATE: "recording"}, epochs)
    _tag(store, session, **{STATE: "recorded"})
    _finish(store, part, session)
    _tag(store, session, **{STATE: "done"})
    return session


def run(store: Store, html: str | None = "vocab.html", *, again: bool = False,
        epochs: Mapping[str, int] | None = None) -> dict[str, str]:
    """Record the demo's sessions into ``store`` and print what they show; returns the
    session of each part.

    A store whose last demo set is done is left as it is (one line says so); one whose
    last set was interrupted gets it completed; ``again``: record a new set all the same.
    ``epochs``: per part (``EPOCHS``'s keys), to record a smaller demo."""
    unknown = set(epochs or {}) - set(PARTS)
    if unknown:
        raise EmbedvizError(f"the demo has no part {sorted(unknown)[0]!r}: give epochs for "
                            f"{', '.join(PARTS)}")
    sets = demo_sets(store)
    n = max(sets, default=0)
    done = n > 0 and all(sets[n].get(p) is not None and sets[n][p].tags.get(STATE) == "done"
                         for p in PARTS)
    if done and not again:
        print(f"embedviz demo: {store.label} already holds the demo (set {n}); not recording it "
              "again (`embedviz demo --again` records a new set)")
        return {p: sets[n][p].id for p in PARTS}
    if done or n == 0 or again:
        n, left = n + 1, {}
    else:
        left = sets[n]
        print(f"embedviz demo: completing the interrupted demo (set {n}) in {store.label}")
    sizes = {**EPOCHS, **(epochs or {})}
    t0 = time.time()
    ids = {p: _record(store, n, p, left.get(p), sizes[p]) for p in PARTS}
    if html:
        plot_last_snapshot(store, ids["lee-word2vec"], html)
    print(f"\nrecorded in {time.time() - t0:.1f} s into {store.label}")
    _summary(store, ids, html)
    return ids


def _summary(store: Store, ids: dict[str, str], html: str | None) -> None:
    bad, mlp, w2v = (ids[p] for p in PARTS)
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
        proj = store.projections(_snapshots(store, w2v)[-1].key)[-1]
        print(f"  t-SNE of the last snapshot: kNN preservation "
              f"{proj.quality['knn_preservation']:.2f}, trustworthiness "
              f"{proj.quality['trustworthiness']:.2f}; also in {html}")

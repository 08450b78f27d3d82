"""A small store recorded the way a user records one: the digits MLP with StatsListener,
word2vec on the Lee corpus with its listener, a projection, findings (the listener's, of a
run with a learning rate too high, and two written by hand); shared by the
server tests (pages built in-process and in a real browser)."""

from __future__ import annotations

import os

import embedviz
from embedviz.demo import train_digits_mlp, train_lee_word2vec
from embedviz.projection import BarnesHutTsne, project
from embedviz.records import Finding
from embedviz.vocab import Vocabulary


def record(path: str | os.PathLike) -> dict:
    """Record into ``path``; returns the ids a test needs."""
    with embedviz.open_store(path) as store:
        # (recorded first: the healthy run stays the newest, the app's default)
        bad = train_digits_mlp(store, epochs=2, lr=1.5, name="digits-mlp-lr-too-high")
        mlp = train_digits_mlp(store, epochs=2)
        w2v = train_lee_word2vec(store, epochs=20)
        last = store.embeddings(w2v)[-1]
        e = store.embedding(last.key)
        project(Vocabulary(e.labels, e.vectors, e.metadata, e.name),
                BarnesHutTsne(max_iter=400, stop_lying_iteration=100, random_state=0,
                              progress=False), store=store,
                session=w2v, iteration=e.iteration)
        store.add_finding(Finding(mlp, "update_ratio_high", "fc ratio <b>high</b>: lower the lr",
                                  iteration=20, severity="warning", layer="2.weight",
                                  detail={"value": -1.5}))
        store.add_finding(Finding(mlp, "nan", "NaN in the loss", iteration=40, severity="error"))
        return {"mlp": mlp, "w2v": w2v, "bad": bad, "words": e.labels}

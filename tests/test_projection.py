"""Barnes-Hut t-SNE on openTSNE: the mapping, the quality, the store, transform."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from gensim.test.utils import datapath

import embedviz
from embedviz.errors import ProjectionError
from embedviz.projection import BarnesHutTsne, PCAProjection, project, quality
from embedviz.vocab import Vocabulary, load_vocabulary


def clusters(n_per=150, k=4, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, dim))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, dim)) for c in centres]).astype(np.float32)
    labels = [f"w{i}" for i in range(len(x))]
    return Vocabulary(labels, x, {"cluster": [str(i // n_per) for i in range(len(x))]}, "clusters")


def test_parameters_reach_opentsne():
    t = BarnesHutTsne(max_iter=600, stop_lying_iteration=100, learning_rate=200, theta=0.3,
                      momentum=0.5, final_momentum=0.7, perplexity=12, metric="cosine",
                      random_state=3)
    kw = t.opentsne_kwargs(500)
    assert kw["early_exaggeration_iter"] == 100 and kw["n_iter"] == 500
    assert kw["learning_rate"] == 200 and kw["theta"] == 0.3
    assert kw["initial_momentum"] == 0.5 and kw["final_momentum"] == 0.7
    assert kw["perplexity"] == 12 and kw["metric"] == "cosine" and kw["random_state"] == 3
    assert kw["negative_gradient_method"] == "bh" and kw["initialization"] == "pca"
    assert kw["neighbors"] == "exact"
    assert BarnesHutTsne().opentsne_kwargs(200_000, 300)["neighbors"] == "faiss"
    assert BarnesHutTsne(neighbors="annoy").opentsne_kwargs(200_000, 300)["neighbors"] == "annoy"
    assert BarnesHutTsne().opentsne_kwargs(20_000)["negative_gradient_method"] == "fft"
    assert BarnesHutTsne(negative_gradient_method="bh").opentsne_kwargs(20_000)["negative_gradient_method"] == "bh"


def test_clusters_stay_apart_and_neighbours_are_kept():
    v = clusters()
    t = BarnesHutTsne(random_state=0, progress=False, normalize=False)
    y = t.fit_transform(v.vectors)
    groups = np.array(v.metadata["cluster"])
    centres = np.array([y[groups == g].mean(0) for g in "0123"])
    spread = max(np.linalg.norm(y[groups == g] - centres[i], axis=1).mean() for i, g in enumerate("0123"))
    gaps = min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:])
    assert gaps > 3 * spread
    q = quality(v.vectors, y)
    assert q["knn_preservation"] > 0.3 and q["trustworthiness"] > 0.9


def test_random_state_makes_it_reproducible():
    v = clusters(n_per=50)
    a = BarnesHutTsne(random_state=7, progress=False, max_iter=300).fit_transform(v.vectors)
    b = BarnesHutTsne(random_state=7, progress=False, max_iter=300).fit_transform(v.vectors)
    assert np.array_equal(a, b)


def test_store_records_progress_and_reuses_the_result(tmp_path):
    store = embedviz.open_store(tmp_path / "p.db")
    store.create_session("s")
    v = clusters(n_per=60)
    seen = []
    t = BarnesHutTsne(random_state=0, progress=False, max_iter=400, callback_every=25,
                      until="max_iter", callback=lambda it, err, emb: seen.append(it))
    first = project(v, t, store=store, session="s", stream_every=50)
    assert seen[:3] == [25, 50, 75] and seen[-1] == 400
    p = store.projection(first.projection.id)
    assert p.state == "done" and p.progress == 1.0 and p.coords.shape == (240, 2)
    assert p.quality["knn_preservation"] > 0.3 and "trustworthiness" in p.quality
    assert store.embedding(p.embedding).labels == v.labels
    again = project(v, BarnesHutTsne(random_state=0, progress=False, max_iter=400,
                                     callback_every=25, until="max_iter"), store=store, session="s")
    assert again.reused and np.array_equal(again.coords, first.coords)
    other = project(v, BarnesHutTsne(random_state=0, progress=False, max_iter=400,
                                     perplexity=10), store=store, session="s")
    assert not other.reused and len(store.projections(p.embedding)) == 2


def test_a_callback_can_stop_it_and_the_partial_map_is_kept():
    v = clusters(n_per=40)
    t = BarnesHutTsne(random_state=0, progress=False, callback_every=10,
                      callback=lambda it, err, emb: it >= 100)
    r = project(v, t, store=":memory:")
    assert t.interrupted_ and r.projection.state == "interrupted"
    assert r.coords.shape == (160, 2) and 100 <= t.n_iter_ < 750


def test_transform_places_a_known_word_near_its_neighbours():
    kv = load_vocabulary(datapath("lee_fasttext.vec"), top_n=600)
    held_out = 123
    keep = [i for i in range(len(kv)) if i != held_out]
    base = kv.subset(keep)
    t = BarnesHutTsne(random_state=0, progress=False).fit(base.vectors)
    placed = t.transform(kv.vectors[held_out])[0]
    x = kv.vectors / np.linalg.norm(kv.vectors, axis=1, keepdims=True)
    near = np.argsort(-(x[keep] @ x[held_out]))[:10]  # its neighbours in the input space
    d_near = np.linalg.norm(t.embedding_[near] - placed, axis=1).mean()
    d_all = np.linalg.norm(t.embedding_ - placed, axis=1).mean()
    assert d_near < 0.5 * d_all


def test_pca_beside_tsne_through_the_same_pipeline():
    r = project(clusters(n_per=30), PCAProjection(), store=":memory:")
    assert r.coords.shape == (120, 2) and r.projection.method == "pca"
    assert r.projection.quality["knn_preservation"] > 0.2


def test_small_inputs_lower_the_perplexity_and_say_so(caplog):
    caplog.set_level(logging.WARNING, "embedviz")
    y = BarnesHutTsne(random_state=0, progress=False).fit_transform(np.random.default_rng(0).normal(size=(10, 4)))
    assert y.shape == (10, 2) and "perplexity 30.0 is too high for 10 points" in caplog.text
    with pytest.raises(ProjectionError, match="at least 2 points"):
        BarnesHutTsne(progress=False).fit(np.ones((1, 3)))


@pytest.mark.parametrize("kwargs, match", [
    ({"max_iter": 0}, "max_iter must be a whole number >= 1"),
    ({"stop_lying_iteration": 900}, "must not exceed max_iter"),
    ({"theta": 2}, r"theta must be within \[0, 1\]"),
    ({"perplexity": -1}, "perplexity must be > 0"),
    ({"negative_gradient_method": "exact"}, "'auto', 'bh' or 'fft'"),
])
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ProjectionError, match=match):
        BarnesHutTsne(progress=False, **kwargs).fit(np.random.default_rng(0).normal(size=(50, 3)))


@pytest.mark.parametrize("n", [3, 4, 5, 8, 20])
def test_a_tiny_vocabulary_is_projected_and_measured_from_the_command_line(tmp_path, n):
    from embedviz.cli import main

    rng = np.random.default_rng(n)
    vec = tmp_path / "tiny.vec"
    vec.write_text(f"{n} 5\n" + "".join(f"w{i} " + " ".join(f"{x:.3f}" for x in rng.normal(size=5)) + "\n"
                                         for i in range(n)))
    store = tmp_path / "s.db"
    assert main(["tsne", str(vec), "-o", str(tmp_path / "t.html"), "--store", str(store),
                 "--max-iter", "250"]) == 0
    with embedviz.open_store(store) as s:
        (p,) = s.projections()
        assert p.state == "done" and p.coords.shape == (n, 2)
        assert 0 <= p.quality["trustworthiness"] <= 1 and p.quality["k"] < n / 2


def test_a_projection_that_fails_is_stored_as_failed_not_running(tmp_path, monkeypatch):
    import embedviz.projection as projection

    def broken(*a, **k):
        raise RuntimeError("the measure broke")

    monkeypatch.setattr(projection, "quality", broken)
    store = embedviz.open_store(tmp_path / "s.db")
    vocab = Vocabulary([f"w{i}" for i in range(30)], np.random.default_rng(0).normal(size=(30, 4)))
    with pytest.raises(RuntimeError):
        project(vocab, BarnesHutTsne(max_iter=250, progress=False), store=store)
    (p,) = store.projections()
    assert p.state == "failed" and "the measure broke" in p.message


def test_ctrl_c_during_a_projection_leaves_it_interrupted_not_running(tmp_path):
    import numpy as np

    import embedviz
    from embedviz.projection import BarnesHutTsne, project

    def stop(it, kl, emb):  # (what Ctrl+C does in the middle of the optimisation)
        if it >= 50:
            raise KeyboardInterrupt
        return False

    with embedviz.open_store(tmp_path / "p.db") as store:
        x = np.random.default_rng(0).normal(size=(80, 5))
        tsne = BarnesHutTsne(max_iter=300, stop_lying_iteration=100, random_state=0,
                             progress=False, callback=stop, callback_every=25)
        with pytest.raises(KeyboardInterrupt):
            project(x, tsne, store=store, labels=[f"w{i}" for i in range(80)], stream_every=25)
        (p,) = store.projections()
        assert p.state == "interrupted" and p.coords is not None

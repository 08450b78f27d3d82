"""The t-SNE pipeline's automatic choices: how neighbours are searched (by size and
dimension, checked by recall) and when the optimisation stops (opt-SNE's rule)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from embedviz import neighbors
from embedviz.neighbors import NeighborSearch
from embedviz.projection import BarnesHutTsne, quality

pytest.importorskip("faiss")


def clusters(n: int, dim: int, seed: int = 0, k: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, dim))
    return (centres[rng.integers(0, k, n)] + rng.normal(0, 1, (n, dim))).astype(np.float32)


def brute(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


def test_few_points_are_searched_exactly_nearest_first_without_themselves():
    x = clusters(600, 8)
    x[1] = x[0]  # (a duplicate: each is the other's nearest, at distance 0)
    s = NeighborSearch(x, 15)
    idx, dist = s.build()
    assert s.choice["method"] == "exact" and s.choice["recall"] == 1.0
    want, want_d = brute(x.astype(np.float64), 15)
    assert (idx != np.arange(600)[:, None]).all()
    assert np.allclose(dist, want_d, atol=1e-4)
    assert (np.diff(dist, axis=1) >= 0).all()
    assert idx[0, 0] == 1 and idx[1, 0] == 0 and dist[0, 0] == 0


def test_many_points_are_searched_with_an_inverted_file_at_the_recall_asked():
    x = clusters(30_000, 50)  # (30,000^2 x 50 is over EXACT_WORK)
    s = NeighborSearch(x, 30, random_state=0)
    idx, dist = s.build()
    assert s.choice["method"] == "ivf" and s.choice["nlist"] == 173
    assert s.choice["recall"] >= neighbors.MIN_RECALL
    sample = np.random.default_rng(1).choice(30_000, 50, replace=False)
    d = np.sqrt(((x[sample, None, :] - x[None, :, :]) ** 2).sum(-1))
    d[np.arange(50), sample] = np.inf
    truth = np.argsort(d, axis=1)[:, :30]
    found = np.mean([len(set(a) & set(b)) / 30 for a, b in zip(idx[sample], truth)])
    assert found >= 0.85  # (an independent sample agrees with the logged recall)


def test_wide_vectors_are_reduced_only_where_the_reduction_keeps_the_neighbours(caplog):
    caplog.set_level(logging.INFO, logger="embedviz")
    rng = np.random.default_rng(2)
    low_rank = (clusters(10_000, 10) @ rng.normal(size=(10, 300))).astype(np.float32)
    low_rank += rng.normal(0, 0.01, low_rank.shape).astype(np.float32)
    s = NeighborSearch(low_rank, 15, random_state=0)
    s.build()
    assert s.choice["dims"] == neighbors.PCA_DIMS and s.choice["pca_recall"] >= neighbors.MIN_RECALL
    noise = rng.normal(size=(10_000, 300)).astype(np.float32)  # (no direction matters more)
    s = NeighborSearch(noise, 15, random_state=0)
    _, dist = s.build()
    assert s.choice["pca_recall"] < neighbors.MIN_RECALL and "dims" not in s.choice
    assert "searching all 300 dimensions" in caplog.text
    # distances are always the full space's, whatever space found the candidates
    i = 123
    assert np.isclose(np.sort(np.linalg.norm(noise - noise[i], axis=1))[1], dist[i, 0], rtol=1e-4)


def test_the_plan_falls_back_to_opentsne_without_faiss(monkeypatch):
    assert BarnesHutTsne().neighbor_plan(20_000, 50) == "faiss"
    assert BarnesHutTsne().neighbor_plan(500, 50) == "exact"  # (few points: openTSNE's)
    assert BarnesHutTsne(metric="cosine").neighbor_plan(20_000, 50) != "faiss"
    monkeypatch.setattr(neighbors, "have_faiss", lambda: False)
    assert BarnesHutTsne().neighbor_plan(20_000, 50) == "exact"
    assert BarnesHutTsne().neighbor_plan(200_000, 50) == "annoy"


def test_a_converged_map_stops_early_and_keeps_the_fixed_counts_quality():
    x = clusters(2500, 30, seed=3)
    fixed = BarnesHutTsne(random_state=0, progress=False, until="max_iter", normalize=False).fit(x)
    early = BarnesHutTsne(random_state=0, progress=False, normalize=False).fit(x)
    assert fixed.n_iter_ == 750 and early.n_iter_ < 600
    q_fixed = quality(x, fixed.embedding_)["knn_preservation"]
    q_early = quality(x, early.embedding_)["knn_preservation"]
    assert q_early >= q_fixed - 0.01, (q_early, q_fixed)
    assert early.neighbors_["method"] == "exact"


def test_the_user_callback_sees_every_step_it_asked_for_when_the_run_converges():
    seen = []
    t = BarnesHutTsne(random_state=0, progress=False, callback_every=25,
                      callback=lambda it, kl, y: seen.append(it))
    t.fit(clusters(1200, 10, seed=4))
    assert seen == list(range(25, t.n_iter_ + 1, 25)) and t.n_iter_ < 750


def test_a_fitted_map_pickles_and_places_new_points_the_same_afterwards():
    import pickle

    x = clusters(3000, 20, seed=5)
    t = BarnesHutTsne(random_state=0, progress=False).fit(x[:2900])
    again = pickle.loads(pickle.dumps(t))
    assert np.allclose(again.transform(x[2900:]), t.transform(x[2900:]))


def test_identical_vectors_are_refused_with_the_reason():
    from embedviz.errors import ProjectionError

    with pytest.raises(ProjectionError, match="all 200 vectors are the same"):
        BarnesHutTsne(progress=False).fit(np.ones((200, 20), np.float32))

"""Projections of vectors to 2-D: Barnes-Hut t-SNE on openTSNE, PCA, and UMAP when installed.

:class:`BarnesHutTsne` takes Deeplearning4j's BarnesHutTsne parameters under Python names and
maps each onto openTSNE (see the class docstring for the table). Where openTSNE does better
than the seed's defaults it is used, and the choice is logged at INFO: PCA initialisation,
learning rate n/12 ("auto"), and the FFT-accelerated gradient for large N (auto: Barnes-Hut
below 10,000 points, FFT from there, the crossover measured on a 2-core machine).

:func:`project` runs the whole pipeline on anything :func:`embedviz.vocab.load_vocabulary`
reads, records the embedding set and the projection (with progress while it runs and quality
figures at the end) in a store, and reuses a stored result for the same vectors and
parameters.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedviz.errors import ProjectionError
from embedviz.records import Projection
from embedviz.vocab import Vocabulary, load_vocabulary

log = logging.getLogger("embedviz")

#: below this many points Barnes-Hut is faster here, from it on the FFT method
FFT_THRESHOLD = 10_000
#: without faiss: openTSNE's exact neighbours while n * n * dim stays below this, Annoy above
#: (measured with 50 dimensions: exact 1.7 s vs Annoy 6.0 s at 20,000 points, 9.8 s vs
#: 18.0 s at 50,000)
EXACT_NEIGHBORS_WORK = 50_000 * 50_000 * 50
#: below this many points openTSNE's own exact search (faiss's set-up is not worth it)
SMALL = 1000
#: until="converged": the KL divergence is read every this many iterations...
CHECK_EVERY = 10
#: ...early exaggeration lasts at least this long (up to stop_lying_iteration)...
MIN_EXAGGERATION = 100
#: ...and the run stops when the KL falls by less than this share per iteration (opt-SNE's 1/5000)
TOLERANCE = 2e-4

Callback = Callable[[int, float, np.ndarray], Any]


def _l2_normalize(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    if inplace:
        x /= norms
        return x
    return x / norms


class _Quiet(logging.Filter):
    """openTSNE logs "Optimization was interrupted with callback." at INFO when a phase ends
    on our stopping rule: not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "interrupted with callback" not in record.getMessage()


logging.getLogger("openTSNE.tsne").addFilter(_Quiet())


class BarnesHutTsne:
    """t-SNE with the seed's parameters, computed by openTSNE.

    ====================== ======================================== ========================
    parameter (seed name)  openTSNE                                 default here
    ====================== ======================================== ========================
    max_iter (maxIter)     early_exaggeration_iter + n_iter         750 (openTSNE's 250+500)
    stop_lying_iteration   early_exaggeration_iter                  250
    learning_rate          learning_rate ("auto": n / exaggeration) "auto" (seed: 500)
    use_ada_grad           openTSNE always adapts per-point gains   True (False: warned)
    theta                  theta (Barnes-Hut only)                  0.5
    momentum               initial_momentum (exaggeration phase)    0.8 (seed: 0.5)
    final_momentum         final_momentum                           0.8
    normalize              L2-normalise rows first (ours)           True
    use_pca                reduce to ``pca_components`` first (ours) False
    perplexity             perplexity (lowered to (n-1)/3 if needed) 30
    n_components           n_components                             2
    metric                 metric                                   "euclidean"
    random_state           random_state                             None
    (gradient method)      negative_gradient_method                 "auto": BH < 10,000 <= FFT
    (neighbours)           neighbors (or faiss, ours)               "auto": faiss, exact or
                                                                    IVF by size (Annoy
                                                                    without faiss)
    (stopping)             (ours: opt-SNE's rule)                   until="converged"
    ====================== ======================================== ========================

    ``until``: "converged" (stop each phase when the KL divergence says so, see :meth:`fit`;
    ``max_iter`` the cap) or "max_iter" (openTSNE's fixed schedule). ``tolerance``: the
    relative decrease of the KL per iteration below which the run has converged.

    After :meth:`fit`: ``embedding_`` (ndarray of shape (n, n_components)),
    ``kl_divergence_``, ``method_`` ("bh" or "fft"), ``n_iter_`` (iterations run),
    ``interrupted_`` (the callback stopped it; ``embedding_`` is the partial result).
    ``callback(iteration, kl_divergence, embedding) -> bool``: called every
    ``callback_every`` iterations; returning True stops the optimisation.
    """

    def __init__(self, max_iter: int = 750, stop_lying_iteration: int = 250,
                 learning_rate: float | str = "auto", use_ada_grad: bool = True,
                 theta: float = 0.5, momentum: float = 0.8, final_momentum: float = 0.8,
                 normalize: bool = True, use_pca: bool = False, pca_components: int = 50,
                 perplexity: float = 30.0, n_components: int = 2, metric: str = "euclidean",
                 random_state: int | None = None, negative_gradient_method: str = "auto",
                 early_exaggeration: float = 12.0, initialization: str = "pca",
                 neighbors: str = "auto", until: str = "converged", tolerance: float = TOLERANCE,
                 n_jobs: int | None = None, callback: Callback | None = None,
                 callback_every: int = 50, progress: bool = True) -> None:
        self.max_iter = max_iter
        self.stop_lying_iteration = stop_lying_iteration
        self.learning_rate = learning_rate
        self.use_ada_grad = use_ada_grad
        self.theta = theta
        self.momentum = momentum
        self.final_momentum = final_momentum
        self.normalize = normalize
        self.use_pca = use_pca
        self.pca_components = pca_components
        self.perplexity = perplexity
        self.n_components = n_components
        self.metric = metric
        self.random_state = random_state
        self.negative_gradient_method = negative_gradient_method
        self.early_exaggeration = early_exaggeration
        self.initialization = initialization
        self.neighbors = neighbors
        self.until = until
        self.tolerance = tolerance
        self.neighbors_: dict = {}
        self._owned = False
        self.n_jobs = n_jobs
        self.callback = callback
        self.callback_every = callback_every
        self.progress = progress

    method = "tsne"

    def params(self) -> dict:
        """What determines the result (the store's reuse key); callbacks and progress do not."""
        keys = ("max_iter", "stop_lying_iteration", "learning_rate", "use_ada_grad", "theta",
                "momentum", "final_momentum", "normalize", "use_pca", "pca_components",
                "perplexity", "n_components", "metric", "random_state",
                "negative_gradient_method", "early_exaggeration", "initialization", "neighbors",
                "until", "tolerance")
        return {k: getattr(self, k) for k in keys}

    # -------------------------------------------------------------- checks
    def _check_params(self) -> None:
        def whole(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ProjectionError(f"{name} must be a whole number >= {low} (got {v!r})")

        whole("max_iter", 1)
        whole("stop_lying_iteration", 0)
        whole("n_components", 1)
        whole("callback_every", 1)
        if self.stop_lying_iteration > self.max_iter:
            raise ProjectionError(f"stop_lying_iteration ({self.stop_lying_iteration}) must not "
                                  f"exceed max_iter ({self.max_iter}): it ends the early "
                                  "exaggeration phase within the run")
        if not (self.learning_rate == "auto" or (isinstance(self.learning_rate, (int, float))
                                                 and self.learning_rate > 0)):
            raise ProjectionError(f"learning_rate must be 'auto' or > 0 (got {self.learning_rate!r})")
        if not 0 <= self.theta <= 1:
            raise ProjectionError(f"theta must be within [0, 1] (got {self.theta!r}): 0.5 is usual")
        for name in ("momentum", "final_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ProjectionError(f"{name} must be within [0, 1) (got {getattr(self, name)!r})")
        if not isinstance(self.perplexity, (int, float)) or self.perplexity <= 0:
            raise ProjectionError(f"perplexity must be > 0 (got {self.perplexity!r}): 5 to 50 is usual")
        if self.neighbors not in ("auto", "exact", "ivf", "annoy", "pynndescent"):
            raise ProjectionError("neighbors must be 'auto', 'exact', 'ivf', 'annoy' or "
                                  f"'pynndescent' (got {self.neighbors!r})")
        if self.until not in ("converged", "max_iter"):
            raise ProjectionError("until must be 'converged' (stop when the KL divergence "
                                  f"settles) or 'max_iter' (got {self.until!r})")
        if not isinstance(self.tolerance, (int, float)) or not 0 < self.tolerance < 1:
            raise ProjectionError(f"tolerance must be within (0, 1) (got {self.tolerance!r}): "
                                  f"{TOLERANCE} is opt-SNE's")
        if self.negative_gradient_method not in ("auto", "bh", "fft"):
            raise ProjectionError("negative_gradient_method must be 'auto', 'bh' or 'fft' "
                                  f"(got {self.negative_gradient_method!r})")

    def _check_input(self, x: np.ndarray) -> float:
        """The perplexity to use for this many points (data-dependent checks)."""
        n = x.shape[0]
        if n < 2:
            raise ProjectionError(f"t-SNE needs at least 2 points (got {n}): select more words")
        if not np.isfinite(x).all():
            raise ProjectionError("the vectors hold NaN or Inf: load them with "
                                  "embedviz.load_vocabulary, which drops and reports them")
        if (x == x[0]).all():
            raise ProjectionError(f"all {n} vectors are the same: a map of them has no shape "
                                  "(is the embedding trained?)")
        limit = (n - 1) / 3
        if self.perplexity > limit:
            log.warning("embedviz: perplexity %s is too high for %d points; using %.2f "
                        "(at most (n - 1) / 3)", self.perplexity, n, limit)
            return limit
        return float(self.perplexity)

    def neighbor_plan(self, n: int, dim: int = 50) -> str:
        """How the nearest neighbours of ``n`` points of ``dim`` are searched: "faiss" (exact or
        IVF by size, see :mod:`embedviz.neighbors`), "exact" (openTSNE's, few points), "annoy"
        or "pynndescent" (openTSNE's)."""
        from embedviz.neighbors import have_faiss

        if self.neighbors in ("annoy", "pynndescent"):
            return self.neighbors
        if self.metric != "euclidean" or n < SMALL or n <= 3 * self.perplexity + 1:
            if self.neighbors == "ivf":
                log.warning("embedviz: neighbors='ivf' needs the euclidean metric and at least %d "
                            "points; searching with openTSNE's methods", SMALL)
            return "exact" if self.neighbors == "exact" or n * n * dim <= EXACT_NEIGHBORS_WORK \
                else "annoy"
        if have_faiss():
            return "faiss"
        if self.neighbors == "ivf":
            raise ProjectionError("neighbors='ivf' needs faiss: pip install faiss-cpu")
        log.info("embedviz: faiss is not installed (pip install faiss-cpu): openTSNE's "
                 "neighbour search, several times slower above 10,000 points")
        return "exact" if self.neighbors == "exact" or n * n * dim <= EXACT_NEIGHBORS_WORK \
            else "annoy"

    def opentsne_kwargs(self, n: int, dim: int = 50) -> dict:
        """The openTSNE.TSNE arguments this object maps to for ``n`` points of ``dim``
        (``neighbors``: openTSNE's method, or "faiss" where embedviz searches them)."""
        method = self.negative_gradient_method
        if method == "auto":
            method = "fft" if n >= FFT_THRESHOLD else "bh"
            log.info("embedviz: %d points: %s gradients (Barnes-Hut below %d points, FFT from "
                     "there)", n, "FFT" if method == "fft" else "Barnes-Hut", FFT_THRESHOLD)
        neighbors = self.neighbor_plan(n, dim)
        if not self.use_ada_grad:
            log.warning("embedviz: openTSNE always adapts per-point gains (its counterpart of "
                        "AdaGrad); use_ada_grad=False cannot be honoured")
        if self.learning_rate == "auto":
            log.info("embedviz: learning rate 'auto' = n / exaggeration (%.0f in the early "
                     "exaggeration phase), openTSNE's choice over the seed's 500",
                     n / self.early_exaggeration)
        return dict(
            n_components=self.n_components, perplexity=self.perplexity,
            learning_rate=self.learning_rate,
            early_exaggeration_iter=self.stop_lying_iteration,
            early_exaggeration=self.early_exaggeration,
            n_iter=self.max_iter - self.stop_lying_iteration, theta=self.theta,
            initial_momentum=self.momentum, final_momentum=self.final_momentum,
            metric=self.metric, initialization=self.initialization,
            negative_gradient_method=method, random_state=self.random_state, neighbors=neighbors,
            n_jobs=self.n_jobs or os.cpu_count() or 1,
        )

    # -------------------------------------------------------------- fitting
    def _prepare(self, x: np.ndarray, fit: bool) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.normalize:
            # (project() lends vectors it loaded itself: normalised where they lie, not copied)
            owned = fit and self._owned and x.flags.c_contiguous and x.flags.writeable
            x = _l2_normalize(x, inplace=owned)
        if self.use_pca and x.shape[1] > self.pca_components:
            if fit:
                from sklearn.decomposition import PCA

                k = min(self.pca_components, x.shape[0])
                self.pca_ = PCA(n_components=k, random_state=self.random_state).fit(x)
            x = self.pca_.transform(x).astype(np.float32)
        return x

    def _affinities(self, xp: np.ndarray, kwargs: dict, perplexity: float) -> Any:
        from openTSNE.affinity import PerplexityBasedNN

        n = len(xp)
        method = kwargs.pop("neighbors")
        if method != "faiss":
            return PerplexityBasedNN(xp, perplexity, method=method, metric=self.metric,
                                     n_jobs=kwargs["n_jobs"], random_state=self.random_state)
        from embedviz.neighbors import NeighborSearch, opentsne_index

        search = NeighborSearch(xp, min(n - 1, int(3 * perplexity)),
                                method="exact" if self.neighbors == "exact" else
                                ("ivf" if self.neighbors == "ivf" else "auto"),
                                n_jobs=kwargs["n_jobs"], random_state=self.random_state,
                                progress=self.progress)
        affinities = PerplexityBasedNN(perplexity=perplexity, knn_index=opentsne_index(search),
                                       n_jobs=kwargs["n_jobs"])
        self.neighbors_ = dict(search.choice)
        return affinities

    def fit(self, x: np.ndarray) -> BarnesHutTsne:
        """Affinities from the nearest neighbours, then two phases of gradient descent (early
        exaggeration, then the plain objective).

        ``until="converged"`` (opt-SNE's rule, Belkina et al. 2019): the KL divergence is read
        every ``CHECK_EVERY`` iterations; early exaggeration ends once its relative decrease
        per iteration has peaked (after at least ``MIN_EXAGGERATION`` iterations), and the run
        once it falls below ``tolerance`` per iteration; ``max_iter`` stays the cap. Measured
        on 20,000 clustered points: kNN preservation 0.308 after 280 iterations against 0.301
        after openTSNE's fixed 750, in a quarter of the time (later iterations cost more: the
        map, and so the FFT grid, grows).
        """
        from openTSNE import TSNE
        from openTSNE.tsne import OptimizationInterrupt

        self._check_params()
        x = np.asarray(x)
        if x.ndim != 2:
            raise ProjectionError(f"vectors must have shape (n, dim) (got {x.shape})")
        perplexity = self._check_input(x)
        xp = self._prepare(x, fit=True)
        n = xp.shape[0]
        kwargs = self.opentsne_kwargs(n, xp.shape[1])
        kwargs["perplexity"] = perplexity
        if n <= 3 * perplexity + 1 or n < 4:  # openTSNE's kNN needs a few neighbours
            kwargs["initialization"] = "spectral" if n > 3 else "random"
        bar = None
        converge = self.until == "converged"
        every = CHECK_EVERY if converge else self.callback_every
        if converge and self.callback is not None:
            every = math.gcd(CHECK_EVERY, self.callback_every)
        state: dict[str, Any] = {"done": 0, "kl": float("nan"), "stopped": False,
                                 "prev": None, "rate": 0.0, "phase_end": False}

        def on_check(offset: int, exaggerated: bool) -> Callback:
            def check(iteration: int, error: float, embedding: np.ndarray) -> bool:
                done = offset + iteration
                if bar is not None:
                    bar.update(done - state["done"])
                prev, prev_done = state["prev"] or (None, 0)
                state["done"], state["kl"], state["prev"] = done, float(error), (float(error), done)
                if self.callback is not None and done % self.callback_every == 0:
                    if self.callback(done, float(error), np.asarray(embedding)):
                        state["stopped"] = True
                        return True
                if not converge or prev is None or done == prev_done:
                    return False
                rate = (prev - error) / abs(prev) / (done - prev_done)
                if exaggerated:
                    peaked = 0 < rate < state["rate"]
                    state["rate"] = max(state["rate"], rate)
                    state["phase_end"] = peaked and done >= MIN_EXAGGERATION
                else:
                    state["phase_end"] = rate < self.tolerance
                return state["phase_end"]
            return check

        try:
            started = time.perf_counter()
            affinities = self._affinities(xp, kwargs, perplexity)
            embedding = TSNE(**kwargs).prepare_initial(xp, affinities=affinities,
                                                       initialization=kwargs["initialization"])
            log.info("embedviz: affinities and initial map of %d points in %.1f s", n,
                     time.perf_counter() - started)
            if self.progress:
                from tqdm import tqdm

                bar = tqdm(total=self.max_iter, desc=f"t-SNE ({n} points)", unit="it",
                           leave=False)
            phases = [(self.stop_lying_iteration, self.early_exaggeration, self.momentum, True),
                      (None, None, self.final_momentum, False)]
            for length, exaggeration, momentum, exaggerated in phases:
                if length is None:
                    length = self.max_iter - state["done"]
                if length <= 0:
                    continue
                state["prev"], state["phase_end"] = None, False
                offset = state["done"]
                watched = converge or self.callback is not None or bar is not None
                try:
                    embedding.optimize(length, exaggeration=exaggeration, momentum=momentum,
                                       inplace=True, propagate_exception=True,
                                       callbacks=[on_check(offset, exaggerated)] if watched else None,
                                       callbacks_every_iters=every)
                    if bar is not None:
                        bar.update(offset + length - state["done"])
                    state["done"] = offset + length
                except OptimizationInterrupt:
                    if state["stopped"]:
                        break
        finally:
            if bar is not None:
                if state["phase_end"] and not state["stopped"]:  # (converged: a full bar)
                    bar.total = state["done"]
                    bar.refresh()
                bar.close()
        if state["phase_end"] and not state["stopped"]:
            log.info("embedviz: converged after %d of at most %d iterations (KL divergence %.4f "
                     "falling by less than %g a step)", state["done"], self.max_iter,
                     state["kl"], self.tolerance)
        self.method_ = kwargs["negative_gradient_method"]
        self.opentsne_ = embedding
        self.embedding_ = np.asarray(embedding, dtype=np.float32)
        kl = getattr(embedding, "kl_divergence", None)  # None when interrupted
        self.kl_divergence_ = float(state["kl"] if kl is None else kl)
        self.n_iter_ = state["done"]
        self.interrupted_ = state["stopped"]
        return self

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).embedding_

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Place new points into the fitted map without recomputing it (openTSNE's transform)."""
        if not hasattr(self, "opentsne_"):
            raise ProjectionError("call fit() before transform(): there is no map to place "
                                  "points into yet")
        xp = self._prepare(np.atleast_2d(np.asarray(x, dtype=np.float32)), fit=False)
        return np.asarray(self.opentsne_.transform(xp), dtype=np.float32)


class PCAProjection:
    """PCA to ``n_components`` dimensions, behind the same interface as BarnesHutTsne."""

    method = "pca"

    def __init__(self, n_components: int = 2, normalize: bool = True,
                 random_state: int | None = None) -> None:
        self.n_components = n_components
        self.normalize = normalize
        self.random_state = random_state
        self.callback = None

    def params(self) -> dict:
        return {"n_components": self.n_components, "normalize": self.normalize}

    def fit(self, x: np.ndarray) -> PCAProjection:
        from sklearn.decomposition import PCA

        x = np.asarray(x, dtype=np.float32)
        if x.shape[0] < 2:
            raise ProjectionError(f"PCA needs at least 2 points (got {x.shape[0]})")
        xp = _l2_normalize(x) if self.normalize else x
        self.pca_ = PCA(n_components=min(self.n_components, *xp.shape),
                        random_state=self.random_state).fit(xp)
        self.embedding_ = self.pca_.transform(xp).astype(np.float32)
        self.interrupted_ = False
        return self

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).embedding_

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        return self.pca_.transform(_l2_normalize(x) if self.normalize else x).astype(np.float32)


class UMAPProjection:
    """UMAP (umap-learn, when installed) behind the same interface."""

    method = "umap"

    def __init__(self, n_components: int = 2, n_neighbors: int = 15, min_dist: float = 0.1,
                 metric: str = "euclidean", normalize: bool = True,
                 random_state: int | None = None) -> None:
        try:
            import umap  # noqa: F401
        except ImportError:
            raise ProjectionError("UMAP needs umap-learn: pip install umap-learn "
                                  "(or use method='tsne' or 'pca')") from None
        self.n_components, self.n_neighbors, self.min_dist = n_components, n_neighbors, min_dist
        self.metric, self.normalize, self.random_state = metric, normalize, random_state
        self.callback = None

    def params(self) -> dict:
        return {"n_components": self.n_components, "n_neighbors": self.n_neighbors,
                "min_dist": self.min_dist, "metric": self.metric, "normalize": self.normalize,
                "random_state": self.random_state}

    def fit(self, x: np.ndarray) -> UMAPProjection:
        import umap

        xp = np.asarray(x, dtype=np.float32)
        xp = _l2_normalize(xp) if self.normalize else xp
        self.umap_ = umap.UMAP(n_components=self.n_components, n_neighbors=self.n_neighbors,
                               min_dist=self.min_dist, metric=self.metric,
                               random_state=self.random_state).fit(xp)
        self.embedding_ = np.asarray(self.umap_.embedding_, dtype=np.float32)
        self.interrupted_ = False
        return self

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).embedding_

    def transform(self, x: np.ndarray) -> np.ndarray:
        xp = np.atleast_2d(np.asarray(x, dtype=np.float32))
        return np.asarray(self.umap_.transform(_l2_normalize(xp) if self.normalize else xp),
                          dtype=np.float32)


# ---------------------------------------------------------------------------- quality
def quality(x: np.ndarray, y: np.ndarray, *, k: int = 10, sample: int = 1000,
            random_state: int = 0, normalize: bool = False) -> dict:
    """How well ``y`` (the map) keeps the neighbourhoods of ``x`` (the input space).

    On a random sample of ``sample`` points (all points if fewer; ``normalize``: their rows of
    x L2-normalised first): ``knn_preservation`` is
    the mean share of each point's ``k`` nearest neighbours in x that are among its k
    nearest in y; ``trustworthiness`` is scikit-learn's (1: no false neighbours in the map).
    """
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    n = len(x)
    idx = np.random.default_rng(random_state).choice(n, size=min(sample, n), replace=False)
    xs, ys = np.asarray(x[idx], dtype=np.float32), np.asarray(y[idx], dtype=np.float32)
    if normalize:  # (the sample only: not a copy of all of x)
        xs = _l2_normalize(xs)
    m = len(idx)
    kk = max(1, min(k, (m - 1) // 2))  # (trustworthiness needs k < m / 2)
    if m < 3:
        return {"knn_preservation": float("nan"), "trustworthiness": float("nan"), "k": kk, "sample": m}
    nx = NearestNeighbors(n_neighbors=kk + 1).fit(xs).kneighbors(xs, return_distance=False)[:, 1:]
    ny = NearestNeighbors(n_neighbors=kk + 1).fit(ys).kneighbors(ys, return_distance=False)[:, 1:]
    kept = np.mean([len(set(a) & set(b)) / kk for a, b in zip(nx, ny)])
    return {"knn_preservation": float(kept),
            "trustworthiness": float(trustworthiness(xs, ys, n_neighbors=kk)),
            "k": kk, "sample": m}


# ---------------------------------------------------------------------------- pipeline
@dataclass
class ProjectionResult:
    """``coords``: ndarray of shape (n, n_components) for ``vocab``'s words, in order."""

    vocab: Vocabulary
    coords: np.ndarray
    projection: Projection
    estimator: Any
    reused: bool = False


def make_estimator(method: str, **params: Any) -> Any:
    method = method.lower()
    if method in ("tsne", "t-sne", "barneshut", "bhtsne"):
        return BarnesHutTsne(**params)
    if method == "pca":
        return PCAProjection(**params)
    if method == "umap":
        return UMAPProjection(**params)
    raise ProjectionError(f"unknown projection method {method!r}: use 'tsne', 'pca' or 'umap'")


def project(data: Any, estimator: Any = None, *, method: str = "tsne", store: Any = None,
            session: str | None = None, iteration: int | None = None, reuse: bool = True,
            stream_every: int | None = 50, quality_sample: int = 1000,
            projection_id: str | None = None, **load: Any) -> ProjectionResult:
    """Load (see load_vocabulary, ``**load``), project, measure, and record in ``store``.

    With a store: the embedding set and the projection are saved; while it runs the
    projection's coordinates and progress are written every ``stream_every`` iterations (so
    a viewer can watch it converge); the same vectors with the same parameters return the
    stored result without recomputing (``reuse=False`` to force). ``projection_id`` names
    the record up front, so whoever stops a worker running this can still settle its record.
    """
    from embedviz.store import open_store

    vocab = data if isinstance(data, Vocabulary) and not load else load_vocabulary(data, **load)
    # (vectors read from a file here are ours: normalised in place, not copied; a million
    # 300-d vectors are 1.2 GB. A model's or an array's are the caller's.)
    owned = isinstance(data, (str, os.PathLike))
    est = estimator if estimator is not None else make_estimator(method)
    method = getattr(est, "method", method)
    params = est.params()
    store = open_store(store) if store is not None and not hasattr(store, "write") else store
    embedding_set = vocab.to_embedding_set(session, iteration)  # hashes the vectors once
    key = embedding_set.key
    if store is not None:
        store.put_embedding(embedding_set)
        if reuse:
            found = store.find_projection(key, method, params)
            if found is not None and found.coords is not None:
                log.info("embedviz: reusing stored projection %s", found.id)
                return ProjectionResult(vocab, found.coords, found, est, reused=True)
    record = Projection(key, method, params, state="running")
    if projection_id is not None:
        record.id = projection_id
    if store is not None:
        store.put_projection(record)
    user_callback = getattr(est, "callback", None)
    total = getattr(est, "max_iter", 1)

    def stream(it: int, error: float, embedding: np.ndarray) -> bool:
        stop = bool(user_callback(it, error, embedding)) if user_callback else False
        if store is not None and stream_every and (it % stream_every == 0 or stop):
            record.coords, record.iteration = np.asarray(embedding), it
            record.progress = min(1.0, it / total)
            record.quality = {"kl_divergence": error}
            store.put_projection(record)
        return stop

    if hasattr(est, "callback") and isinstance(est, BarnesHutTsne):
        est.callback = stream
        est._owned = owned
    try:
        coords = est.fit_transform(vocab.vectors)
        measured = quality(vocab.vectors, coords, sample=quality_sample,
                           normalize=bool(getattr(est, "normalize", False)))
    except BaseException as exc:  # (never left "running" in the store, Ctrl+C included)
        if store is not None:
            stopped = isinstance(exc, KeyboardInterrupt) and record.coords is not None
            record.state = "interrupted" if stopped else "failed"
            record.message = f"{type(exc).__name__}: {exc}"
            store.put_projection(record)
        raise
    finally:
        if isinstance(est, BarnesHutTsne):
            est.callback = user_callback
            est._owned = False
    record.quality = measured
    if hasattr(est, "kl_divergence_"):
        record.quality["kl_divergence"] = est.kl_divergence_
    record.coords = coords
    interrupted = bool(getattr(est, "interrupted_", False))
    record.state = "interrupted" if interrupted else "done"
    record.iteration = int(getattr(est, "n_iter_", 0))
    # (a map stopped early says how far it got, not 100%)
    record.progress = min(1.0, record.iteration / total) if interrupted else 1.0
    if store is not None:
        store.put_projection(record)
    log.info("embedviz: %s of %d points: kNN preservation %.3f, trustworthiness %.3f",
             method, len(vocab), record.quality["knn_preservation"], record.quality["trustworthiness"])
    return ProjectionResult(vocab, coords, record, est)

"""Nearest neighbours for t-SNE's affinities: faiss, chosen by size, checked by recall.

openTSNE searches with Annoy, which took 42 s of a 97 s t-SNE of 100,000 points here. faiss
(``faiss-cpu``) does the same search exactly (BLAS) while ``n * n * dim`` is small, and with an
inverted file (IVF: ``sqrt(n)`` k-means cells, the nearest ``nprobe`` of them scanned) above;
``nprobe`` is the smallest that finds ``MIN_RECALL`` of the exact neighbours of a sample of
points. Measured on 2 cores, 50 dimensions, k = 90: 20,000 points exact 0.9 s (Annoy 5.8 s);
100,000 points IVF 5.5 s at recall 0.99 (exact 17 s, HNSW 19 s, Annoy 42 s at recall 0.94).
pynndescent took 134 s at 20,000 (its JIT compile included) and is not used.

Vectors of more than ``PCA_DIMS`` dimensions are searched on their first ``PCA_DIMS``
principal components when that keeps the neighbours: the recall of the reduced search is
measured on a sample against the exact search in the full space, and the reduction used
only at ``MIN_RECALL`` or more. Distances are then recomputed in the full space for the
neighbours found, so the affinities do not depend on the reduction.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger("embedviz")

#: exact search while n * n * dim stays at or below this (20,000 points of 50 dimensions)
EXACT_WORK = 20_000 * 20_000 * 50
#: the share of a sample's exact neighbours an approximate search must find
MIN_RECALL = 0.9
#: vectors wider than this are searched on this many principal components (when it keeps them)
PCA_DIMS = 50
#: points whose neighbours are checked exactly (for the recall figures)
SAMPLE = 300
#: queries per batch (the progress bar's step, and the bound on the distance matrix's memory)
BATCH = 4096


def have_faiss() -> bool:
    quiet = logging.getLogger("faiss.loader")  # (it logs its CPU feature probing at INFO)
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _exact(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute force (faiss.knn reads ``base`` in place: an index would copy it)."""
    import faiss

    return faiss.knn(np.ascontiguousarray(queries), base, k)[1]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of each row of ``truth`` found in the same row of ``found``, on average."""
    return float(np.mean([len(np.intersect1d(a, b, assume_unique=True)) / truth.shape[1]
                          for a, b in zip(found, truth)]))


def _drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    """Each row's own index removed (searches ask for k + 1); where a duplicate vector came
    first and the row's own index is absent, the farthest is dropped instead."""
    n = idx.shape[0]
    own = idx == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True
    return idx[~own].reshape(n, k)


class NeighborSearch:
    """The k nearest neighbours of every row of ``x`` (euclidean), and of new points later.

    ``method``: "auto" (exact while n * n * dim <= EXACT_WORK, else IVF), "exact" or "ivf".
    ``reduce``: "auto" (PCA to PCA_DIMS when the recall check passes), True or False.
    After :meth:`build`: ``choice`` (a dict of what was chosen and measured, also logged).
    """

    def __init__(self, x: np.ndarray, k: int, *, method: str = "auto", reduce: Any = "auto",
                 n_jobs: int | None = None, random_state: int | None = None,
                 progress: bool = False) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.k = k
        self.method = method
        self.reduce = reduce
        self.n_jobs = n_jobs or os.cpu_count() or 1
        self.random_state = 0 if random_state is None else random_state
        self.progress = progress
        self.choice: dict = {}
        self._pca = None
        self._index: Any = None

    # ------------------------------------------------------------------ helpers
    def _space(self, x: np.ndarray) -> np.ndarray:
        if self._pca is None:
            return x
        out = np.empty((len(x), self._pca.n_components_), dtype=np.float32)
        for at in range(0, len(x), 65536):  # (a block at a time: no centred copy of all of x)
            out[at:at + 65536] = self._pca.transform(x[at:at + 65536])
        return out

    def _sample(self) -> np.ndarray:
        n = len(self.x)
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.choice(n, size=min(SAMPLE, n), replace=False))

    def _maybe_reduce(self, sample: np.ndarray, truth: np.ndarray) -> np.ndarray:
        n, dim = self.x.shape
        if self.reduce is False or dim <= PCA_DIMS or n <= PCA_DIMS:
            return self.x
        if self.reduce == "auto" and n * n * dim <= EXACT_WORK:
            return self.x  # (exact search in the full space is already cheap)
        from sklearn.decomposition import PCA

        fit_on = self.x if n <= 200_000 else self.x[np.random.default_rng(
            self.random_state).choice(n, 200_000, replace=False)]
        self._pca = PCA(n_components=PCA_DIMS, random_state=self.random_state,
                        svd_solver="randomized").fit(fit_on)
        reduced = self._space(self.x)
        recall = _recall(self._exact_sample(reduced, sample), truth)
        self.choice["pca_recall"] = round(recall, 4)
        if self.reduce == "auto" and recall < MIN_RECALL:
            log.info("embedviz: PCA to %d dimensions keeps %.1f%% of the neighbours (< %.0f%%): "
                     "searching all %d dimensions", PCA_DIMS, 100 * recall, 100 * MIN_RECALL, dim)
            self._pca = None
            return self.x
        self.choice["dims"] = PCA_DIMS
        log.info("embedviz: searching neighbours on %d principal components of %d dimensions "
                 "(they keep %.1f%% of a sample's neighbours)", PCA_DIMS, dim, 100 * recall)
        return reduced

    def _exact_sample(self, base: np.ndarray, sample: np.ndarray) -> np.ndarray:
        found = _exact(base, base[sample], self.k + 1)
        own = found == sample[:, None]
        own[~own.any(axis=1), -1] = True
        return found[~own].reshape(len(sample), self.k)

    def _batches(self, index: Any, base: np.ndarray, desc: str) -> np.ndarray:
        n = len(base)
        out = np.empty((n, self.k + 1), dtype=np.int32 if n < 2**31 else np.int64)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=desc, unit="pt", leave=False)
        try:
            for start in range(0, n, BATCH):
                stop = min(n, start + BATCH)
                out[start:stop] = index.search(base[start:stop], self.k + 1)[1]
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
        return out

    # ------------------------------------------------------------------ build
    def build(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances), each of shape (n, k), nearest first, no point its own."""
        import faiss

        faiss.omp_set_num_threads(self.n_jobs)
        n, dim = self.x.shape
        sample = self._sample()
        truth = self._exact_sample(self.x, sample)
        base = self._maybe_reduce(sample, truth)
        d = base.shape[1]
        method = self.method
        if method == "auto":
            method = "exact" if n * n * d <= EXACT_WORK else "ivf"
        if method == "exact" or n < 4 * (self.k + 1):
            index: Any = faiss.IndexFlatL2(d)
            index.add(base)
            method = "exact"
        else:
            nlist = max(1, int(np.sqrt(n)))
            quantizer = faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist)
            train = base if n <= 64 * nlist else base[np.random.default_rng(
                self.random_state).choice(n, 64 * nlist, replace=False)]
            index.train(train)
            index.add(base)
            for nprobe in (8, 16, 32, 64, 128, nlist):
                index.nprobe = min(nprobe, nlist)
                recall = _recall(_drop_self(index.search(base[sample], self.k + 1)[1], self.k),
                                 truth)
                if recall >= MIN_RECALL or nprobe >= nlist:
                    break
            self.choice.update(nlist=nlist, nprobe=int(index.nprobe))
        self._index = index
        found = self._batches(index, base, f"neighbours ({n} points)")
        missing = (found < 0).any(axis=1)  # (an IVF cell too small for k + 1 results)
        if missing.any():
            found[missing] = _exact(base, base[missing], self.k + 1)
        idx = _drop_self(found, self.k)
        del found
        # distances in the full space, nearest first (the reduction only found the candidates);
        # a block at a time, float64 as openTSNE's affinities want them
        dist = np.empty(idx.shape, dtype=np.float64)
        rows = max(64, (1 << 24) // (self.k * dim))  # (a block's differences: ~64 MB)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            diff = self.x[idx[start:stop]] - self.x[start:stop, None, :]
            block = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
            order = np.argsort(block, axis=1, kind="stable")
            idx[start:stop] = np.take_along_axis(idx[start:stop], order, axis=1)
            dist[start:stop] = np.take_along_axis(block, order, axis=1)
        self.choice["method"] = method
        self.choice["recall"] = round(_recall(idx[sample], truth), 4)
        log.info("embedviz: %d nearest neighbours of %d points of %d dimensions: %s%s "
                 "(recall %.1f%% on %d points checked exactly)", self.k, n, dim,
                 "exact search" if method == "exact" else
                 f"faiss IVF ({self.choice['nlist']} cells, {self.choice['nprobe']} searched)",
                 f" on {d} principal components" if d != dim else "",
                 100 * self.choice["recall"], len(sample))
        return idx, dist

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_index"] = None  # (faiss indexes do not pickle: an exact one is made again)
        return state

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed points of new ``queries`` (for placing points into a map)."""
        if self._index is None:
            import faiss

            base = self._space(self.x)
            self._index = faiss.IndexFlatL2(base.shape[1])
            self._index.add(base)
        q = np.ascontiguousarray(queries, dtype=np.float32)
        idx = self._index.search(self._space(q), k)[1]
        idx = np.where(idx < 0, 0, idx)
        diff = self.x[idx] - q[:, None, :]
        dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.argsort(dist, axis=1, kind="stable")
        return (np.take_along_axis(idx, order, axis=1),
                np.take_along_axis(dist, order, axis=1).astype(np.float64))


def opentsne_index(search: NeighborSearch) -> Any:
    """``search`` as an openTSNE ``KNNIndex`` (for ``PerplexityBasedNN(knn_index=...)``)."""
    from openTSNE.nearest_neighbors import KNNIndex

    class SearchIndex(KNNIndex):
        VALID_METRICS = ["euclidean"]

        def __init__(self, search: NeighborSearch) -> None:
            super().__init__(search.x, search.k, metric="euclidean", n_jobs=search.n_jobs,
                             random_state=search.random_state)
            self.search = search

        def build(self) -> tuple[np.ndarray, np.ndarray]:
            return self.search.build()

        def query(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return self.search.query(query, k)

        def __reduce__(self) -> tuple:  # (a class made here: pickled by what makes it)
            return opentsne_index, (self.search,)

    return SearchIndex(search)

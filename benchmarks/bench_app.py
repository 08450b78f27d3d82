"""The app's response times on large stores, and its memory with pages open.

  overview     a session of 100,000 iterations with 10 layers (parameters, gradients,
               updates and activations of each: 40 tensors with their statistics, score,
               learning rate, a validation metric): time from building the page's document
               to its last line read (what the server does before it sends the page)
  embeddings   a projected set of 20,000 words (64 dimensions): the same for the
               embeddings page
  live         a point written by another process, until an open page's periodic callback
               has streamed it (the callback runs every half second)
  memory       the server process's resident memory with 10 pages (documents) open

TensorBoard has no equivalent of the first two (it reads event files into memory up front
and samples 1,000 points per scalar); the figures stand against the issue's targets.

    python benchmarks/bench_app.py [--iterations 100000] [--words 20000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from bokeh.document import Document
from embedviz.server.app_doc import POLL_MS, build_document
from tqdm import tqdm

import embedviz
from embedviz.records import EmbeddingSet, Projection, Summary, Update

LAYERS = 10


def fill_training(path: str, n: int) -> str:
    """A session of ``n`` iterations, 10 layers; returns its id."""
    rng = np.random.default_rng(0)
    store = embedviz.open_store(path)
    s = store.create_session(name="long run")
    store.put_static(s.id, "0", {"model": {"type": "MLP", "n_params": 10 * 4160, "layers": [
        {"name": f"fc{i}", "type": "Linear", "params": {"weight": [64, 64], "bias": [64]},
         "n_params": 4160, "output_shapes": [[32, 64]]} for i in range(LAYERS)]}})
    batch = 2000
    for start in tqdm(range(0, n, batch), desc=f"filling {n:,} iterations", unit="batch"):
        ups = []
        for it in range(start, min(n, start + batch)):
            summaries = {}
            for i in range(LAYERS):
                m = float(abs(rng.normal(0.1, 0.01)))
                for kind, scale in (("param", 1.0), ("gradient", 1e-2), ("update", 1e-3)):
                    summaries[f"{kind}/fc{i}.weight"] = Summary.trusted(
                        None, count=4096, mean=0.0, stdev=m * scale, mean_magnitude=m * scale,
                        min=-m, max=m, nan_count=0, inf_count=0, zero_fraction=0.0)
                summaries[f"activation/fc{i}"] = Summary.trusted(
                    None, count=2048, mean=0.1, stdev=1.0, mean_magnitude=0.5, min=-3.0, max=3.0,
                    nan_count=0, inf_count=0, zero_fraction=0.3)
            ups.append(Update.trusted(s.id, "0", it, float(2.3 * np.exp(-it / n * 5) + rng.normal(0, 0.05)),
                                      it // 1000, {"lr/0": 0.1}, summaries))
        store.write(ups)
    for it in range(0, n, 1000):
        store.log_metric(s.id, "val_loss", float(2.3 * np.exp(-it / n * 4)), iteration=it)
    store.close()
    return s.id


def fill_words(path: str, n: int) -> None:
    rng = np.random.default_rng(1)
    store = embedviz.open_store(path)
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    e = EmbeddingSet("words", [f"w{i}" for i in range(n)], vectors,
                     metadata={"count": list(range(n, 0, -1))})
    store.put_embedding(e)
    store.put_projection(Projection(e.key, "tsne", {}, coords=rng.normal(size=(n, 2)).astype(np.float32),
                                    quality={"knn_preservation": 0.3}, state="done", progress=1.0))
    store.close()


def timed_page(path: str, page: str, session: str | None, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        store = embedviz.open_store(path, readonly=True)  # a fresh server's connection
        t0 = time.perf_counter()
        build_document(Document(), store, page=page, sessions=[session] if session else None)
        best = min(best, time.perf_counter() - t0)
        store.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--words", type=int, default=20_000)
    parser.add_argument("--keep", default=None, help="keep the stores in this folder (and reuse them)")
    args = parser.parse_args()
    folder = args.keep or tempfile.mkdtemp()
    os.makedirs(folder, exist_ok=True)
    train = os.path.join(folder, f"train_{args.iterations}.db")
    words = os.path.join(folder, f"words_{args.words}.db")
    if not os.path.exists(train):
        fill_training(train, args.iterations)
    if not os.path.exists(words):
        fill_words(words, args.words)
    session = embedviz.open_store(train, readonly=True).sessions()[0].id
    overview = timed_page(train, "overview", session)
    model = timed_page(train, "model", session)
    emb = timed_page(words, "embeddings", None)

    # live: one page open, another process writes, the next callback streams it
    store = embedviz.open_store(train)
    doc = Document()
    parts = build_document(doc, store, page="overview", sessions=[session])
    latencies = []
    for k in range(5):
        it = args.iterations + 10 * (k + 1)
        writer = embedviz.open_store(train)
        writer.write([Update(session, "0", it, score=0.1)])
        writer.close()
        t0 = time.perf_counter()
        parts["tick"]()  # (what the periodic callback runs)
        latencies.append(time.perf_counter() - t0)
    store.close()

    # memory: 10 pages open in one process
    import resource

    store = embedviz.open_store(train, readonly=True)
    docs = [build_document(Document(), store, page="overview", sessions=[session]) for _ in range(10)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del docs
    print(f"\noverview page, {args.iterations:,} iterations x {LAYERS} layers:  {overview:6.2f} s  (target <= 2 s)")
    print(f"model page, same session:                      {model:6.2f} s")
    print(f"embeddings page, {args.words:,} words:                 {emb:6.2f} s  (target <= 3 s)")
    print(f"live update: a callback streams a new point in {1000 * max(latencies):.0f} ms at most; "
          f"with the {POLL_MS / 1000:g} s callback period, <= {POLL_MS / 1000 + max(latencies):.1f} s (target <= 2 s)")
    print(f"server process with 10 overview pages open: {rss_mb:.0f} MB peak resident memory")


if __name__ == "__main__":
    main()

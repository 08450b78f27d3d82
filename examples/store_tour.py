"""A tour of the stats store: train softmax regression on scikit-learn's digits in plain
numpy, record what the training monitor records, then read it back as a dashboard would.

    python examples/store_tour.py runs.db
    embedviz sessions runs.db
    embedviz export runs.db -o runs.jsonl
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

import embedviz
from embedviz.records import Histogram, Summary, Update


def summarize(x: np.ndarray, bins: int = 20) -> Summary:
    finite = x[np.isfinite(x)]
    counts, edges = np.histogram(finite, bins=bins)
    return Summary(count=x.size, mean=finite.mean(), stdev=finite.std(),
                   mean_magnitude=np.abs(finite).mean(), min=finite.min(), max=finite.max(),
                   nan_count=int(np.isnan(x).sum()), inf_count=int(np.isinf(x).sum()),
                   zero_fraction=float((x == 0).mean()), histogram=Histogram(edges, counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="runs.db")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Y = np.eye(10)[y]
    rng = np.random.default_rng(0)
    W, b, lr = rng.normal(0, 0.01, (64, 10)), np.zeros(10), 0.5
    store = embedviz.open_store(args.store)
    session = store.create_session(name="digits-softmax", tags={"lr": lr})
    store.put_static(session.id, "0", {"model": "softmax regression", "params": {"W": [64, 10], "b": [10]},
                                       "optimizer": {"type": "SGD", "lr": lr}})
    it = 0
    for epoch in range(args.epochs):
        for batch in np.array_split(rng.permutation(len(X)), 18):
            t0 = time.perf_counter()
            logits = X[batch] @ W + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            loss = -np.log(p[np.arange(len(batch)), y[batch]]).mean()
            gW = X[batch].T @ (p - Y[batch]) / len(batch)
            gb = (p - Y[batch]).mean(0)
            uW, ub = -lr * gW, -lr * gb
            W, b = W + uW, b + ub
            store.write([Update(session.id, "0", it, score=loss, epoch=epoch,
                                scalars={"lr/0": lr, "timing/iteration_ms": 1000 * (time.perf_counter() - t0)},
                                summaries={"param/W": summarize(W), "param/b": summarize(b),
                                           "gradient/W": summarize(gW), "update/W": summarize(uW),
                                           "activation/logits": summarize(logits)})])
            it += 1
        acc = float((np.argmax(X @ W + b, 1) == y).mean())
        store.log_metric(session.id, "train_accuracy", acc, it)
    score = store.read_series(session.id, "score", max_points=50)
    ratio = (store.read_series(session.id, "update/W/mean_magnitude").values
             / store.read_series(session.id, "param/W/mean_magnitude").values)
    print(f"session {session.id}: {it} iterations in {args.store}")
    print(f"score {score.values[0]:.3f} -> {score.values[-1]:.3f}; accuracy "
          f"{store.read_series(session.id, 'metric/train_accuracy').values[-1]:.3f}")
    print(f"log10 update:param ratio of W: {np.log10(ratio[0]):.2f} at first, "
          f"{np.log10(ratio[-1]):.2f} at last (about -3 is healthy)")


if __name__ == "__main__":
    main()

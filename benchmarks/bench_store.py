"""Store write rate beside TensorBoard's SummaryWriter, and a downsampled read.

Writes the same content both ways: a 10-layer model (weight + bias per layer) with
summaries of 4 kinds (parameters, gradients and updates of 20 tensors, activations of 10
layers = 70 summaries), each 9 statistics and a 20-bin histogram, plus score, learning rate,
timing and memory. TensorBoard gets `add_scalar` per statistic and `add_histogram_raw` per
histogram (the histogram is precomputed for both, so only writing is timed); its time
includes the final flush. Then reads a 100,000-iteration series downsampled to 1,000 points.

    python benchmarks/bench_store.py [--updates 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from tqdm import tqdm

import embedviz
from embedviz.records import Histogram, Summary, Update

KINDS = ("param", "gradient", "update")


def realistic_updates(n: int, session: str) -> list[Update]:
    rng = np.random.default_rng(0)
    out = []
    for it in range(n):
        summaries = {}
        for layer in range(10):
            targets = [f"{k}/layer{layer}.{p}" for k in KINDS for p in ("weight", "bias")]
            for target in targets + [f"activation/layer{layer}"]:
                v = rng.normal(0, 0.1, 64)
                counts, edges = np.histogram(v, bins=20)
                summaries[target] = Summary(count=4096, mean=v.mean(), stdev=v.std(),
                                            mean_magnitude=np.abs(v).mean(), min=v.min(),
                                            max=v.max(), zero_fraction=0.0,
                                            histogram=Histogram(edges, counts))
        out.append(Update(session, "0", it, score=float(rng.random()), epoch=0,
                          scalars={"lr/0": 0.01, "timing/iteration_ms": 12.0,
                                   "timing/examples_per_s": 5000.0, "memory/rss_bytes": 1e9},
                          summaries=summaries))
    return out


def bench_ours(updates: list[Update], folder: str, batch: int) -> float:
    store = embedviz.open_store(os.path.join(folder, f"ours-{batch}.db"))
    store.create_session("bench")
    t0 = time.perf_counter()
    for i in tqdm(range(0, len(updates), batch), desc=f"embedviz (batch {batch})", leave=False):
        store.write(updates[i:i + batch])
    elapsed = time.perf_counter() - t0
    store.close()
    return len(updates) / elapsed


def bench_tensorboard(updates: list[Update], folder: str) -> float:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(folder, "tb"))
    t0 = time.perf_counter()
    for u in tqdm(updates, desc="tensorboard", leave=False):
        step = u.iteration
        writer.add_scalar("score", u.score, step)
        for key, value in u.scalars.items():
            writer.add_scalar(key, value, step)
        for target, s in u.summaries.items():
            for stat in ("count", "mean", "stdev", "mean_magnitude", "min", "max",
                         "nan_count", "inf_count", "zero_fraction"):
                writer.add_scalar(f"{target}/{stat}", getattr(s, stat), step)
            h = s.histogram
            writer.add_histogram_raw(target, min=s.min, max=s.max, num=s.count,
                                     sum=s.mean * s.count, sum_squares=(s.stdev**2 + s.mean**2) * s.count,
                                     bucket_limits=h.edges[1:].tolist(),
                                     bucket_counts=h.counts.tolist(), global_step=step)
    writer.flush()
    writer.close()
    return len(updates) / (time.perf_counter() - t0)


def bench_read(folder: str, n: int = 100_000) -> tuple[float, float, int]:
    path = os.path.join(folder, "long.db")
    store = embedviz.open_store(path)
    store.create_session("long")
    rng = np.random.default_rng(1)
    scores = np.cumsum(rng.normal(0, 1, n))
    one = Summary(count=10, mean=0, stdev=1, mean_magnitude=1, min=-1, max=1)
    for i in tqdm(range(0, n, 5000), desc="filling 100k iterations", leave=False):
        store.write([Update("long", "0", j, score=float(scores[j]),
                            summaries={"update/fc.weight": one}) for j in range(i, i + 5000)])
    store.close()
    timings = {}
    for key in ("score", "update/fc.weight/mean_magnitude"):
        reader = embedviz.open_store(path, readonly=True)  # a fresh dashboard connection
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            s = reader.read_series("long", key, max_points=1000)
            best = min(best, time.perf_counter() - t0)
        timings[key] = best
        if key == "score":
            npts = len(s)
        reader.close()
    return timings["score"] * 1000, timings["update/fc.weight/mean_magnitude"] * 1000, npts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=300)
    args = parser.parse_args()
    updates = realistic_updates(args.updates, "bench")
    with tempfile.TemporaryDirectory() as folder:
        ours_1 = bench_ours(updates, folder, 1)
        ours_10 = bench_ours(updates, folder, 10)
        tb = bench_tensorboard(updates, folder)
        read_ms, read_stat_ms, npts = bench_read(folder)
    print(f"\nwrite rate, {args.updates} updates of a 10-layer model "
          "(70 summaries x 9 statistics + 20-bin histogram each):")
    print(f"  {'embedviz SQLite, one transaction per update':<48} {ours_1:10.1f} updates/s")
    print(f"  {'embedviz SQLite, 10 updates per transaction':<48} {ours_10:10.1f} updates/s")
    print(f"  {'TensorBoard SummaryWriter (same content)':<48} {tb:10.1f} updates/s")
    print(f"  ratio embedviz (one per transaction) / TensorBoard: {ours_1 / tb:.1f}x "
          f"(target >= 1.0x: {'met' if ours_1 >= tb else 'MISSED'})")
    print("read of a 100,000-iteration series downsampled to 1,000 points "
          f"({npts} points kept for score, a random walk):")
    print(f"  {'score':<48} {read_ms:10.1f} ms")
    print(f"  {'update/fc.weight/mean_magnitude':<48} {read_stat_ms:10.1f} ms")
    print(f"  target <= 100 ms: {'met' if max(read_ms, read_stat_ms) <= 100 else 'MISSED'}")


if __name__ == "__main__":
    main()

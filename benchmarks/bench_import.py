"""Importing a TensorBoard logdir beside TensorBoard's own loading of it.

Writes a logdir with torch's SummaryWriter: ``--runs`` runs, together ``--scalars`` scalar
values (10 tags a run, ``loss`` among them) and ``--histograms`` histograms (5 tags a run,
of 10,000 normal values each). Then, each in a fresh process (so peak memory is its own):

- embedviz: ``embedviz.import_tensorboard(logdir, new SQLite file)``, health checks
  included, and again with nothing new (the incremental re-import), then once more into
  another new file without the checks;
- TensorBoard: ``EventAccumulator(run, size_guidance=0 for scalars, histograms, tensors)``
  ``.Reload()`` over each run (0 keeps every value, as an import does; TensorBoard's
  default keeps a sample of 1,000 scalars and 500 histograms a tag).

Prints wall time and peak resident memory of each, and checks that both read the same
number of values.

    python benchmarks/bench_import.py [--scalars 1000000] [--histograms 10000] [--runs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

SCALAR_TAGS = ("loss", "train/acc", "val/loss", "val/acc", "lr", "grad_norm", "throughput",
               "memory", "epoch_time", "weight_norm")
HISTOGRAM_TAGS = ("fc1.weight", "fc1.weight.grad", "fc2.weight", "fc2.weight.grad", "fc2.bias")


def write_logdir(folder: str, scalars: int, histograms: int, runs: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    steps = scalars // (runs * len(SCALAR_TAGS))
    hist_steps = histograms // (runs * len(HISTOGRAM_TAGS))
    every = max(steps // max(hist_steps, 1), 1)
    rng = np.random.default_rng(0)
    sample = rng.normal(0, 0.1, 10_000)
    with tqdm(total=runs * steps, desc="writing the logdir", unit="step") as bar:
        for r in range(runs):
            w = SummaryWriter(os.path.join(folder, f"run{r}"), max_queue=1000)
            done = 0
            for step in range(steps):
                for i, tag in enumerate(SCALAR_TAGS):
                    w.add_scalar(tag, 1.0 / (1 + step) + i, step)
                if step % every == 0 and done < hist_steps:
                    for tag in HISTOGRAM_TAGS:
                        w.add_histogram(tag, sample * (1 + step / steps), step)
                    done += 1
                bar.update(1)
            w.close()


def child(kind: str, logdir: str, db: str) -> None:
    t0 = time.perf_counter()
    values = {}
    if kind == "embedviz":
        import embedviz

        report = embedviz.import_tensorboard(logdir, db, progress=False)
        values = {"scalars": report.imported["scores"] + report.imported["metrics"],
                  "histograms": report.imported["histograms"]}
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = embedviz.import_tensorboard(logdir, db, progress=False)
        values["again"] = sum(again.imported.values())
        values["again_s"] = time.perf_counter() - t1
        values["seconds"] = first
        t2 = time.perf_counter()
        embedviz.import_tensorboard(logdir, db + ".nochecks.db", checks=False, progress=False)
        values["nochecks_s"] = time.perf_counter() - t2
    else:
        from tensorboard.backend.event_processing import event_accumulator as ea

        guidance = {ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.COMPRESSED_HISTOGRAMS: 0}
        scalars = histograms = 0
        for run in sorted(os.listdir(logdir)):
            acc = ea.EventAccumulator(os.path.join(logdir, run), size_guidance=guidance)
            acc.Reload()
            tags = acc.Tags()
            scalars += sum(len(acc.Scalars(t)) for t in tags["scalars"])
            histograms += sum(len(acc.Histograms(t)) for t in tags["histograms"])
        values = {"scalars": scalars, "histograms": histograms,
                  "seconds": time.perf_counter() - t0}
    values["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(values))


def measure(kind: str, logdir: str, db: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, logdir, db],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scalars", type=int, default=1_000_000)
    parser.add_argument("--histograms", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--logdir", default=None, help="reuse (or make) this logdir")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        logdir = args.logdir or os.path.join(tmp, "logs")
        if not os.path.isdir(logdir):
            write_logdir(logdir, args.scalars, args.histograms, args.runs)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(logdir) for f in fs)
        print(f"logdir: {args.scalars:,} scalars, {args.histograms:,} histograms in {args.runs} "
              f"runs, {size / 1e6:.0f} MB of event files")
        ours = measure("embedviz", logdir, os.path.join(tmp, "import.db"))
        theirs = measure("tensorboard", logdir, "")
    print(f"  {'':<44} {'seconds':>9} {'peak MB':>9} {'scalars':>11} {'histograms':>11}")
    print(f"  {'embedviz import (into SQLite, checks run)':<44} {ours['seconds']:9.1f} "
          f"{ours['peak_mb']:9.0f} {ours['scalars']:11,} {ours['histograms']:11,}")
    print(f"  {'TensorBoard EventAccumulator (in memory)':<44} {theirs['seconds']:9.1f} "
          f"{theirs['peak_mb']:9.0f} {theirs['scalars']:11,} {theirs['histograms']:11,}")
    print(f"  ratio embedviz / TensorBoard: time {ours['seconds'] / theirs['seconds']:.2f}x, "
          f"memory {ours['peak_mb'] / theirs['peak_mb']:.2f}x; the same values read: "
          f"{'yes' if (ours['scalars'], ours['histograms']) == (theirs['scalars'], theirs['histograms']) else 'NO'}")
    print(f"  embedviz import without the health checks: {ours['nochecks_s']:.1f} s "
          f"({ours['nochecks_s'] / theirs['seconds']:.2f}x TensorBoard's; peak memory above is of "
          "the two runs together)")
    print(f"  re-import with nothing new: {ours['again_s']:.2f} s, {ours['again']} records added")


if __name__ == "__main__":
    main()

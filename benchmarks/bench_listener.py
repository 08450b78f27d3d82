"""Training-loop overhead of StatsListener beside TensorBoard's usual recipe.

Reference loop: MLP 784-512-256-10, batch 64, SGD with momentum, CPU, one torch thread.
Three arms, each with its own model, run in interleaved chunks (so that machine noise hits
them alike); the median chunk rate of each arm is reported:
  none         the bare loop
  tensorboard  add_scalar(loss) every step; add_histogram of every parameter and gradient
               every 10 steps
  embedviz     StatsListener(frequency=10) into an SQLite store: parameters, gradients,
               updates and activations with histograms, score, learning rate, timing, memory

The listener's worker process is started before timing (it imports torch once, a few
seconds on the second core, at attach time); the time spent off the training thread is
reported beside.

    python benchmarks/bench_listener.py [--chunk 200] [--chunks 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from embedviz.monitor import StatsListener
from tqdm import tqdm

import embedviz


class Arm:
    def __init__(self, name: str, folder: str) -> None:
        torch.manual_seed(0)
        self.name = name
        self.model = torch.nn.Sequential(
            torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
            torch.nn.ReLU(), torch.nn.Linear(256, 10))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.data = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(32)]
        self.i = 0
        self.rates: list[float] = []
        self.writer = self.listener = self.handle = None
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(folder, "tb"))
        elif name == "embedviz":
            self.listener = StatsListener(embedviz.open_store(os.path.join(folder, "ev.db")),
                                          frequency=10)
            self.handle = self.listener.attach(self.model, self.opt)

    def steps(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = self.data[self.i % len(self.data)]
            self.opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.opt.step()
            if self.writer is not None:
                self.writer.add_scalar("loss", loss.item(), self.i)
                if self.i % 10 == 0:
                    for name, p in self.model.named_parameters():
                        self.writer.add_histogram(name, p, self.i)
                        self.writer.add_histogram(name + "/grad", p.grad, self.i)
            if self.listener is not None:
                self.listener.step(loss, batch_size=len(x))
            self.i += 1
        return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=200, help="steps per chunk")
    parser.add_argument("--chunks", type=int, default=10, help="chunks per arm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        arms = [Arm(name, folder) for name in ("none", "tensorboard", "embedviz")]
        ev = arms[2]
        for arm in arms:
            arm.steps(30)  # warm-up
        deadline = time.monotonic() + 60  # the listener's worker process imports torch once
        while ev.listener._writer._worker is None and time.monotonic() < deadline:
            ev.steps(10)
        before = (ev.listener._writer.dropped, ev.listener._writer.busy_seconds, ev.i)
        for c in tqdm(range(args.chunks), desc="chunks"):
            for arm in (arms if c % 2 == 0 else arms[::-1]):  # no arm always goes first
                arm.rates.append(arm.steps(args.chunk))
        dropped = ev.listener._writer.dropped - before[0]
        busy_ms = 1000 * (ev.listener._writer.busy_seconds - before[1]) / max(1, (ev.i - before[2]) // 10)
        ev.handle.remove()
        arms[1].writer.close()
        store = embedviz.open_store(os.path.join(folder, "ev.db"))
        n_updates = store.sessions()[0].workers[0].n_updates
    med = {a.name: statistics.median(a.rates) for a in arms}
    step_ms = {k: 1000.0 / v for k, v in med.items()}
    # overhead per chunk pair (same round), then its median and quartiles: robust to drift
    paired = {a.name: sorted(100 * (n / r - 1) for n, r in zip(arms[0].rates, a.rates)) for a in arms}
    print(f"\nMLP 784-512-256-10, batch 64, CPU, 1 torch thread; {args.chunks} interleaved chunks "
          f"of {args.chunk} steps per arm:")
    for a in arms:
        q = statistics.quantiles(paired[a.name], n=4) if len(a.rates) > 1 else [0, 0, 0]
        print(f"  {a.name:<12} {med[a.name]:8.1f} steps/s  {step_ms[a.name]:7.3f} ms/step  "
              f"overhead {q[1]:+7.2f}%  (quartiles {q[0]:+.1f}% .. {q[2]:+.1f}%)")
    print(f"  embedviz: {n_updates} reports written, {dropped} dropped while timed; the "
          f"background thread was busy {busy_ms:.1f} ms per report (mostly waiting for the worker)")
    ours, tb = statistics.median(paired["embedviz"]), statistics.median(paired["tensorboard"])
    print(f"  target: embedviz overhead <= 3% of the step: {'met' if ours <= 3 else 'MISSED'}; "
          f"<= 1/3 of TensorBoard's ({tb / 3:.2f}%): {'met' if ours <= tb / 3 else 'MISSED'}")


if __name__ == "__main__":
    main()

"""Training-loop overhead of StatsListener beside TensorBoard's usual recipe.

Reference loop: MLP 784-512-256-10, batch 64, SGD with momentum, CPU, one torch thread.
Three arms train one and the same model (so that no arm runs on luckier memory: with a model
each, arms differed by +-5% with nothing attached) in short interleaved chunks, so that machine
noise hits them alike, with a short untimed pause after each chunk so that what one arm left
running in the background does not land in the next arm's chunk: TensorBoard's event writer
is flushed inside its chunk; the listener's chunk runs on with bare steps, timed (its drain
tail), until its worker process has summarized every report of the chunk (it takes them a
few at a time: ~25 steps).

This VM's speed drifts by +-15% within seconds, so each round sandwiches the listener's
chunk between two chunks of the bare loop (bare, embedviz, bare, tensorboard; the next round
the other way round): its overhead is its time beyond theirs (their mean, step by step, for
as many steps: the bare chunks run 60 steps longer, which the drain tail is compared with)
against the time of their first chunk-length steps, which cancels drift that is linear over
the round. TensorBoard's chunk is compared with as many first steps of the bare chunk next
to it. TensorBoard's chunk is followed by untimed bare steps (WASH): a chunk right after it
ran slower, which in the bare chunk after it counted in the listener's favour. The overhead
is the median over rounds, with a 90% bootstrap interval of that median. 300 rounds (~6 min):
with 100, that interval was about +-1% wide, as wide as the margin to the 3% target, and A/A
runs (``--control``) gave medians from -1.1% to +0.6%:
  none         the bare loop
  tensorboard  add_scalar(loss) every step; add_histogram of every parameter and gradient
               every 10 steps
  embedviz     StatsListener(frequency=10) into an SQLite store: parameters, gradients,
               updates and activations with histograms, score, learning rate, timing, memory
               (its hooks are taken away between its chunks, as between its reports)

Every chunk holds whole cycles of the listener and starts mid-cycle, five iterations before a
report: the first iteration after the pause runs with cold caches in every arm, and it is a
quiet one in each (a report there would bear a cold start that training without pauses never
sees).

The listener's worker process is started before timing (it imports torch once, a few
seconds on the second core, at attach time).

A second, finer view of the same run: every iteration of every arm is timed, by its place in
the chunk. The mean time of the listener's k-th iteration against the bare loop's k-th,
summed by place in the reporting cycle (0 = the reported iteration), splits the listener's
whole overhead (in means: it adds up to the mean chunk time's) into the reported iteration
(the copies on the training thread), the four after it (the worker process summarizes on the
other vCPU meanwhile, a few reports at a time; but a worker that summarized and wrote nothing
left these four as slow as the real one: most of it is the first, the reported iteration's
aftermath on the training thread), the five before it and the drain tail. The SQLite
write, about once a second for every report since the last (0.3-0.5 ms of CPU per report in
the worker), falls in whichever chunk runs then.

``--control`` makes it an A/A test of the design: the listener stays attached but is never
armed nor called, so that its arm trains bare and its "overhead" is what the design alone
gives (its bias, and its noise on the day).

    python benchmarks/bench_listener.py [--chunk 50] [--rounds 300] [--sample-limit 4096]
                                        [--control]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import torch
from embedviz.monitor import StatsListener
from embedviz.monitor._report import DONE
from tqdm import tqdm

import embedviz

#: seconds between chunks (not timed): what one arm left running in the background must not
#: land in another arm's chunk
SETTLE = 0.05
#: untimed bare steps after TensorBoard's chunk: a chunk that follows it directly runs slower
#: (bare: +1.4% over 50 steps, against +0.5% after the listener's chunk, in a probe of rounds
#: of bare, bare, listener, TensorBoard, bare), which, in a bare chunk the listener's is
#: compared with, counted in the listener's favour
WASH = 50
#: at most this many steps in the listener's drain tail (see Arm.steps)
MAX_TAIL = 400
#: the bare loop's chunks run this many steps more than the others: what the listener's drain
#: tail is compared with (the same places after the pause: a chunk's steps run faster the
#: longer it goes, by ~1% from its 5th to its 50th step)
BARE_TAIL = 60


def _ci(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90% bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(reps))
    return meds[int(0.05 * reps)], meds[int(0.95 * reps)]


class Loop:
    """The reference training loop's state, shared by the arms: one model, one optimizer,
    the same batches, so that no arm runs on luckier memory than another."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
            torch.nn.ReLU(), torch.nn.Linear(256, 10))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.data = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(32)]
        self.batches = 0


class Arm:
    def __init__(self, name: str, folder: str, loop: Loop, sample_limit: int | None) -> None:
        self.name = name
        self.control = False  # (embedviz, --control: attached, never armed, no step() call)
        self.loop = loop
        self.model, self.opt, self.data = loop.model, loop.opt, loop.data
        self.i = 0
        self.rates: list[float] = []  # steps/s of each chunk (its drain tail included)
        self.tail_seconds: list[float] = []
        self.tail_steps: list[int] = []
        self.by_place: list[list[float]] = []  # seconds of each chunk's k-th iteration
        self.writer = self.listener = self.handle = None
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(folder, "tb"))
        elif name == "embedviz":
            self.listener = StatsListener(embedviz.open_store(os.path.join(folder, "ev.db")),
                                          frequency=10, sample_limit=sample_limit)
            self.handle = self.listener.attach(self.model, self.opt)
            self.listener._disarm()  # hooked only during this arm's own chunks

    def steps(self, n: int) -> float:
        """Train ``n`` steps (and, for the listener, its drain tail); returns the seconds."""
        listener = None if self.control else self.listener
        if listener is not None and listener._reporting():
            listener._arm()
        while len(self.by_place) < n:
            self.by_place.append([])
        t0 = t_prev = time.perf_counter()
        for k in range(n):
            loss = self._train_one()
            if self.writer is not None:
                self.writer.add_scalar("loss", loss.item(), self.i)
                if self.i % 10 == 0:
                    for name, p in self.model.named_parameters():
                        self.writer.add_histogram(name, p, self.i)
                        self.writer.add_histogram(name + "/grad", p.grad, self.i)
            if listener is not None:
                listener.step(loss, batch_size=len(self.data[0][0]))
            now = time.perf_counter()
            self.by_place[k].append(now - t_prev)
            t_prev = now
            self.i += 1
        if self.writer is not None:
            self.writer.flush()  # (TensorBoard's own background writing counts to its chunk)
        tail = 0
        if listener is not None:
            listener._disarm()
            # the drain tail: bare steps, timed, until the worker process has summarized every
            # report of this chunk (it takes them a few at a time, up to ~0.15 s late), so that
            # what that costs the training thread counts here, not in the next arm's chunk
            while tail < MAX_TAIL and _with_the_worker(listener):
                self._train_one()
                tail += 1
        if self.listener is not None:
            self.tail_seconds.append(time.perf_counter() - t_prev)
            self.tail_steps.append(tail)
        seconds = time.perf_counter() - t0
        self.rates.append((n + tail) / seconds)
        time.sleep(SETTLE)  # background work of this chunk ends before the next arm's begins
        return seconds

    def wash(self, n: int) -> None:
        """``n`` steps, not timed, then the pause."""
        for _ in range(n):
            self._train_one()
        time.sleep(SETTLE)

    def _train_one(self) -> torch.Tensor:
        x, y = self.data[self.loop.batches % len(self.data)]
        self.loop.batches += 1
        self.opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss


def _with_the_worker(listener: StatsListener) -> int:
    """Reports the listener handed to its worker process that it has not summarized yet."""
    done = listener._writer.state
    return sum(1 for slot, number in listener._pool._inflight if done[DONE + slot.index] < number)


def _cpu_seconds(pid: int | str, tid: int | None = None) -> float:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=50, help="steps per chunk (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=300,
                        help="rounds of four chunks: bare, embedviz, bare, tensorboard")
    parser.add_argument("--sample-limit", type=int, default=4096,
                        help="StatsListener's sample_limit (0: every element)")
    parser.add_argument("--control", action="store_true",
                        help="an A/A test of the design: the embedviz arm trains bare (its listener "
                        "attached but never armed), so its 'overhead' is the design's own bias "
                        "and noise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loop = Loop()
    with tempfile.TemporaryDirectory() as folder:
        arms = [Arm(name, folder, loop, args.sample_limit or None)
                for name in ("none", "tensorboard", "embedviz")]
        ev = arms[2]
        for arm in arms:
            arm.steps(30)  # warm-up
        deadline = time.monotonic() + 60  # the listener's worker process imports torch once
        while ev.listener._writer._worker is None and time.monotonic() < deadline:
            ev.steps(10)
        ev.steps(100 - ev.i % 100 + 5)  # chunks start mid-cycle (see above)
        ev.control = args.control
        for arm in arms:
            arm.by_place, arm.rates, arm.tail_seconds, arm.tail_steps = [], [], [], []
        writer = ev.listener._writer
        worker_pid = writer._worker.proc.pid if writer._worker else None
        before = (writer.dropped, ev.i, ev.listener._own_seconds,
                  _cpu_seconds(worker_pid) if worker_pid else 0.0,
                  _cpu_seconds("self", writer._thread.native_id))
        none, tb = arms[0], arms[1]
        paired: dict[str, list[float]] = {"none": [], "tensorboard": [], "embedviz": []}
        tails: list[float] = []  # each drain tail's time beyond the bare loop's
        for c in tqdm(range(args.rounds), desc="rounds", file=sys.stderr):
            order = [none, ev, none, tb] if c % 2 == 0 else [tb, none, ev, none]
            seconds = {}
            for arm in order:
                seconds[arm.name] = arm.steps(args.chunk + (BARE_TAIL if arm is none else 0))
                if arm is tb:
                    none.wash(WASH)
            # the bare loop's k-th step in this round: the mean of its two chunks', and in the
            # one beside TensorBoard's chunk
            bare = [statistics.fmean(b[-2:]) for b in none.by_place]
            beside = [b[-1 if c % 2 == 0 else -2] for b in none.by_place]
            n, tail = args.chunk, ev.tail_steps[-1]
            ref = sum(bare[:n + tail]) + max(n + tail - len(bare), 0) * statistics.fmean(bare[-10:])
            paired["none"].append(0.0)
            paired["tensorboard"].append(100 * (seconds["tensorboard"] / sum(beside[:n]) - 1))
            paired["embedviz"].append(100 * (seconds["embedviz"] - ref) / sum(bare[:n]))
            tails.append(ev.tail_seconds[-1] - (ref - sum(bare[:n])))
        reports = max(1, (ev.i - before[1]) // 10)
        dropped = writer.dropped - before[0]
        own_ms = 1000 * (ev.listener._own_seconds - before[2]) / reports
        worker_ms = 1000 * ((_cpu_seconds(worker_pid) if worker_pid else 0.0) - before[3]) / reports
        thread_ms = 1000 * (_cpu_seconds("self", writer._thread.native_id) - before[4]) / reports
        ev.handle.remove()
        arms[1].writer.close()
        store = embedviz.open_store(os.path.join(folder, "ev.db"))
        n_updates = store.sessions()[0].workers[0].n_updates
    med = {a.name: statistics.median(a.rates) for a in arms}
    step_ms = {k: 1000.0 / v for k, v in med.items()}
    # overhead per round (against the bare chunks around or beside it), then its median and
    # quartiles: robust to drift
    paired = {k: sorted(v) for k, v in paired.items()}
    print(f"\nMLP 784-512-256-10, batch 64, CPU, 1 torch thread; {args.rounds} rounds of chunks of "
          f"{args.chunk} steps (bare, embedviz, bare, tensorboard); embedviz "
          f"sample_limit={args.sample_limit or None}:")
    if args.control:
        print("  CONTROL RUN: the embedviz arm trained bare (listener attached, never armed): its "
              "'overhead' is the design's own bias and noise")
    for a in arms:
        q = statistics.quantiles(paired[a.name], n=4) if len(a.rates) > 1 else [0, 0, 0]
        lo, hi = _ci(paired[a.name]) if len(a.rates) > 1 else (0, 0)
        print(f"  {a.name:<12} {med[a.name]:8.1f} steps/s  {step_ms[a.name]:7.3f} ms/step  "
              f"overhead {q[1]:+7.2f}%  (90% interval of that median {lo:+.1f}% .. {hi:+.1f}%; "
              f"quartiles {q[0]:+.1f}% .. {q[2]:+.1f}%)")
    print(f"  embedviz: {n_updates} reports written, {dropped} dropped while timed; per report: "
          f"{own_ms:.2f} ms in the listener on the training thread, CPU {worker_ms:.1f} ms in the "
          f"worker process and {thread_ms:.1f} ms in the writer thread (clock ticks: coarse)")
    # the chunk's k-th iteration is at place (5 + k) % 10 of the reporting cycle (see above)
    diff = [0.0] * 10
    for k, (e, b) in enumerate(zip(ev.by_place, none.by_place)):
        diff[(5 + k) % 10] += statistics.fmean(e) - statistics.fmean(b)
    bare_chunk = sum(statistics.fmean(b) for b in none.by_place[:args.chunk])
    share = [100 * d / bare_chunk for d in diff]
    tail = 100 * statistics.fmean(tails) / bare_chunk
    per_report = 1000 * diff[0] / (args.chunk // 10)
    print(f"  embedviz against the bare loop, iteration by iteration (means): {sum(share) + tail:+.2f}%"
          f" in all: the reported iteration {share[0]:+.2f}% (+{per_report:.3f} ms each), the four "
          f"after it {sum(share[1:5]):+.2f}%, the five before it {sum(share[5:]):+.2f}%, the drain "
          f"tail {tail:+.2f}% ({statistics.fmean(ev.tail_steps):.1f} steps after each chunk)")
    print("    by place in the cycle (% of the step): "
          + "  ".join(f"{i}:{x:+.2f}" for i, x in enumerate(share)))
    ours, tb = statistics.median(paired["embedviz"]), statistics.median(paired["tensorboard"])
    lo, hi = _ci(paired["embedviz"])
    verdict = "met" if hi <= 3 else "MISSED" if lo > 3 else "met by the median" if ours <= 3 else "MISSED by the median"
    print(f"  target: embedviz overhead <= 3% of the step (sandwiched chunks, median {ours:+.2f}%, "
          f"90% interval {lo:+.1f}% .. {hi:+.1f}%): {verdict}; <= 1/3 of TensorBoard's "
          f"({tb / 3:.2f}%): {'met' if ours <= tb / 3 else 'MISSED'}")


if __name__ == "__main__":
    main()

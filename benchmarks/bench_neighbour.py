"""How much work on the other CPU slows the reference training loop on this machine.

The listener's worker process summarizes and writes each report on another CPU. Whether
that costs the training thread anything depends on what the two CPUs share: the training
loop (MLP 784-512-256-10, batch 64, one torch thread, pinned to CPU 0) is timed with CPU 1
idle and with CPU 1 running one of three neighbours, in alternation:
  alu     a pure integer loop (shares only the core, if the CPUs are hyperthreads of one)
  l2      copies within 1.6 MB (spills out of a 1 MB L2 into the shared L3)
  memory  copies of 64 MB (memory bandwidth)

    python benchmarks/bench_neighbour.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from bench_listener import Loop  # the reference loop (this folder is on the path)

NEIGHBOURS = {
    "alu": "x = 0\nwhile True:\n    x = (x * 3 + 1) & 0xFFFF",
    "l2": "import numpy as np\na = np.ones(200_000, np.float32); b = np.empty_like(a)\n"
          "while True:\n    np.copyto(b, a)",
    "memory": "import numpy as np\na = np.ones(8_000_000, np.float32); b = np.empty_like(a)\n"
              "while True:\n    np.copyto(b, a)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300, help="steps per timing")
    args = parser.parse_args()
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs Linux and two CPUs")
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, {cpus[0]})
    torch.set_num_threads(1)
    loop = Loop()

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            x, y = loop.data[i % len(loop.data)]
            loop.opt.zero_grad()
            torch.nn.functional.cross_entropy(loop.model(x), y).backward()
            loop.opt.step()
        return (time.perf_counter() - t0) / n

    run(200)
    times: dict[str, list[float]] = {k: [] for k in ["idle", *NEIGHBOURS]}
    for r in range(args.rounds):
        for name in times:
            proc = None
            if name != "idle":
                code = f"import os; os.sched_setaffinity(0, {{{cpus[1]}}})\n" + NEIGHBOURS[name]
                proc = subprocess.Popen([sys.executable, "-c", code])
                time.sleep(0.3)  # (started and busy)
            try:
                times[name].append(run(args.steps))
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait()
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    base = statistics.median(times["idle"])
    print(f"reference loop on CPU {cpus[0]}, neighbour on CPU {cpus[1]} (medians of {args.rounds}):")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:<7} {1000 * med:.3f} ms/step  {100 * (med / base - 1):+6.1f}%")


if __name__ == "__main__":
    main()

"""Does a chunk of bench_listener.py run slower after some arms than after others?

Rounds of bare, bare, embedviz (and, with ``--tensorboard``, tensorboard, bare) chunks of 50
steps, each after the same untimed pause as in bench_listener.py; prints medians over rounds
of each chunk's first 50 steps (the listener's drain tail not counted) against the second
bare chunk, which, like the listener's, follows a bare one. This found that a chunk right
after TensorBoard's ran slower, which bench_listener.py's comparisons counted in the
listener's favour until it took untimed steps after TensorBoard's chunk (its WASH).

    python benchmarks/probe_chunk_order.py [--tensorboard] [--rounds 150]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_listener import Arm, Loop  # noqa: E402

CHUNK = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensorboard", action="store_true", help="a TensorBoard chunk too")
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loop = Loop()
    with tempfile.TemporaryDirectory() as folder:
        none, ev, tb = (Arm(n, folder, loop, 4096) for n in ("none", "embedviz", "tensorboard"))
        for arm in (none, ev, tb):
            arm.steps(30)  # warm-up
        while ev.listener._writer._worker is None:  # (imports torch: seconds)
            ev.steps(10)
        ev.steps(100 - ev.i % 100 + 5)  # chunks start mid-cycle, as in bench_listener.py
        order = [("a", none), ("b", none), ("ev", ev)]
        if args.tensorboard:
            order += [("tb", tb), ("c", none)]
        rows = []
        for r in range(args.rounds):
            times = {}
            for name, arm in order:
                arm.steps(CHUNK)
                times[name] = sum(arm.by_place[k][-1] for k in range(CHUNK))
            if r >= 5:
                rows.append(times)
            print(f"\rround {r + 1}/{args.rounds}", end="", file=sys.stderr)
        ev.handle.remove()
        tb.writer.close()
    print(file=sys.stderr)

    def vs_b(name: str) -> float:
        return statistics.median(100 * (t[name] / t["b"] - 1) for t in rows)

    print(f"{len(rows)} rounds of {CHUNK}-step chunks, medians against the second bare chunk "
          "(which follows a bare one):")
    first = "the last bare chunk" if args.tensorboard else "embedviz"
    print(f"  the first bare chunk (after {first}) {vs_b('a'):+.2f}%")
    print(f"  embedviz after bare (its drain tail not counted) {vs_b('ev'):+.2f}%")
    if args.tensorboard:
        print(f"  bare right after tensorboard {vs_b('c'):+.2f}%")


if __name__ == "__main__":
    main()

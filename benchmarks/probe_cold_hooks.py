"""What does a forward hook cost when it runs once every 10 training steps?

The reference MLP of bench_listener.py trains (batch 64, SGD with momentum, one torch
thread); on every 10th step a global module forward hook is in place. Cycles take turns
with each kind of hook: none, one that does nothing, and one that copies (as StatsListener
does) the batch's first rows of each leaf module's output, up to 4096 values, into a buffer.
Prints, for each, the forward pass of the hooked step against the median of the quiet
steps of the same cycles (the 5th to the 9th), and the same hooks' cost in a tight loop of
forward passes (no training in between, so that their code stays warm).

This is where StatsListener's reported iteration goes: code that runs once per report runs
cold, after a training step has passed through the caches.

    python benchmarks/probe_cold_hooks.py [--cycles 1500]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch
from tqdm import tqdm

KINDS = ("none", "noop", "copy")
LIMIT = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1500, help="cycles of 10 steps per kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(32)]
    buf = torch.empty(LIMIT * len(model))
    dsts: dict[tuple[int, int, int], torch.Tensor] = {}

    def noop(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        return None

    def copy(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        if module is model:
            return
        n = output.shape[1]
        rows = min(max(LIMIT // n, 1), output.shape[0])
        key = (id(module), rows, n)
        dst = dsts.get(key)
        if dst is None:
            start = len(dsts) * LIMIT
            dst = dsts[key] = buf[start:start + rows * n].view(rows, n)
        with torch.no_grad():
            torch.narrow_copy(output, 0, 0, rows, out=dst)

    hooks = {"none": None, "noop": noop, "copy": copy}
    forward: dict[str, list[list[float]]] = {k: [[] for _ in range(10)] for k in KINDS}
    step = 0
    for cycle in tqdm(range(args.cycles * len(KINDS) + 30), desc="cycles", unit="cycle"):
        kind = KINDS[cycle % len(KINDS)]
        for place in range(10):
            hook = hooks[kind] if place == 0 else None
            handle = (torch.nn.modules.module.register_module_forward_hook(hook)
                      if hook is not None else None)
            x, y = data[step % len(data)]
            t0 = time.perf_counter()
            out = model(x)
            t1 = time.perf_counter()
            if handle is not None:
                handle.remove()
            loss = torch.nn.functional.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if cycle >= 30:  # (warm-up)
                forward[kind][place].append(t1 - t0)

    def tight(hook: object) -> float:
        handle = (torch.nn.modules.module.register_module_forward_hook(hook)  # type: ignore[arg-type]
                  if hook is not None else None)
        try:
            return timeit.timeit(lambda: model(data[0][0]), number=100) / 100
        finally:
            if handle is not None:
                handle.remove()

    # (the kinds in turn, the fastest of 30 turns each: this VM's speed drifts)
    turns = [{kind: tight(hooks[kind]) for kind in KINDS} for _ in range(30)]
    warm = {kind: min(turn[kind] for turn in turns) for kind in KINDS}
    print(f"MLP 784-512-256-10, batch 64, CPU, 1 torch thread; {args.cycles} cycles of 10 steps "
          "per kind, the hook in place on the first step of each:")
    for kind in KINDS:
        medians = [1e6 * statistics.median(v) for v in forward[kind]]
        quiet = statistics.median(medians[4:9])
        print(f"  {kind:5s} hooked forward {medians[0] - quiet:+6.1f} us over the quiet steps' "
              f"{quiet:.0f} us (the next step {medians[1] - quiet:+5.1f} us); "
              f"in a tight loop {1e6 * (warm[kind] - warm['none']):+6.1f} us")


if __name__ == "__main__":
    main()

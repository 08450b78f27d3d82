"""Training-loop overhead of StatsListener beside TensorBoard's usual recipe, whole process.

Reference loop: MLP 784-512-256-10, batch 64, SGD with momentum, CPU, one torch thread,
``--steps`` steps. Each arm runs in a fresh process, timed from the first step until
everything it recorded is written (``remove()``, the event writer's ``close()``):
  none         the bare loop
  tensorboard  add_scalar(loss) every step; add_histogram of every parameter and gradient
               every 10 steps
  embedviz     StatsListener(frequency=10) into an SQLite file (the default for this model:
               its worker process): parameters, gradients, updates and activations with
               histograms, score, learning rate, timing, memory
Runs are interleaved (none, embedviz, tensorboard; the next run in another order) so that
the machine's drift hits the arms alike; each run's overhead is against that run's bare
loop. ``--neighbours N`` runs N CPU-bound processes throughout (as DataLoader workers are:
one per spare core), to show what the listener costs a loaded machine.

Also printed: the worker process's CPU per report (the CPU of the arm's child processes,
read from the OS once they have exited, over the reports written) and the dropped reports.

    python benchmarks/bench_listener.py [--steps 6000] [--runs 3] [--neighbours 0]
                                        [--background auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ARMS = ("none", "embedviz", "tensorboard")
FREQUENCY = 10


def child(arm: str, steps: int, folder: str, background: str) -> None:
    """One arm, in this process; prints its figures as JSON."""
    import torch
    from embedviz.monitor import StatsListener

    import embedviz

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(32)]
    db = os.path.join(folder, f"{arm}.db")
    writer = listener = handle = None
    if arm == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(folder, "tb"))
    t0 = time.perf_counter()
    if arm == "embedviz":
        listener = StatsListener(db, FREQUENCY, session="bench", background=background)
        handle = listener.attach(model, opt)
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if writer is not None:
            writer.add_scalar("loss", loss.item(), i)
            if i % FREQUENCY == 0:
                for name, p in model.named_parameters():
                    writer.add_histogram(name, p, i)
                    writer.add_histogram(name + "/grad", p.grad, i)
        if listener is not None:
            listener.step(loss, batch_size=len(x))
    if handle is not None:
        handle.remove()
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds}
    if listener is not None:
        store = embedviz.open_store(db)
        info = store.session("bench").workers[0]
        children = os.times()
        out.update(written=info.n_updates, dropped=listener.dropped_reports,
                   background=store.static("bench")["listener"]["background"],
                   worker_cpu_ms=1000 * (children.children_user + children.children_system)
                   / max(info.n_updates, 1))
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=0,
                        help="CPU-bound processes running throughout (one per spare core)")
    parser.add_argument("--background", choices=("auto", "thread", "process"), default="auto",
                        help="StatsListener's background= (auto: the worker process here)")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.folder, args.background)
        return
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                  for _ in range(args.neighbours)]
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    try:
        for run in range(args.runs):
            order = ARMS if run % 2 == 0 else ARMS[::-1]
            for arm in order:
                with tempfile.TemporaryDirectory() as folder:
                    proc = subprocess.run([sys.executable, __file__, "--child", arm, "--steps",
                                           str(args.steps), "--folder", folder,
                                           "--background", args.background],
                                          capture_output=True, text=True, check=True)
                results[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"run {run + 1}/{args.runs} {arm:<12} {results[arm][-1]['seconds']:7.2f} s",
                      file=sys.stderr, flush=True)
    finally:
        for p in neighbours:
            p.kill()
            p.wait()
    overhead = {arm: [100 * (r["seconds"] / b["seconds"] - 1) for r, b in
                      zip(results[arm], results["none"])] for arm in ARMS}
    print(f"\nMLP 784-512-256-10, batch 64, CPU, 1 torch thread, {args.steps} steps per run, "
          f"whole process; {args.neighbours} CPU-bound neighbour(s); {args.runs} interleaved runs")
    print(f"  {'arm':<12} {'ms/step (median)':>16}   overhead of each run")
    for arm in ARMS:
        ms = 1000 * statistics.median(r["seconds"] for r in results[arm]) / args.steps
        runs = "  ".join(f"{x:+7.1f}%" for x in overhead[arm])
        print(f"  {arm:<12} {ms:16.3f}   {runs}")
    ev = results["embedviz"]
    cpu = ("worker CPU per report (its start-up included) "
           + ", ".join(f"{r['worker_cpu_ms']:.2f}" for r in ev) + " ms"
           if ev[0]["background"] == "ProcessSink" else "summarized on a thread of the training process")
    print(f"  embedviz ({ev[0]['background']}): {cpu}; dropped reports "
          + ", ".join(str(r["dropped"]) for r in ev) + " of "
          + ", ".join(str(r["written"] + r["dropped"]) for r in ev))
    ours, tb = statistics.median(overhead["embedviz"]), statistics.median(overhead["tensorboard"])
    target = 3.0 if args.neighbours == 0 else 8.0
    print(f"  target: embedviz overhead <= {target:g}% (median {ours:+.1f}%): "
          f"{'met' if ours <= target else 'MISSED'}"
          + (f"; <= 1/10 of TensorBoard's ({tb / 10:+.1f}%): {'met' if ours <= tb / 10 else 'MISSED'}"
             if args.neighbours else ""))


if __name__ == "__main__":
    main()

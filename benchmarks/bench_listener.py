"""Training-loop overhead of StatsListener beside TensorBoard's usual recipe, whole process.

Setups (``--setups``, all by default), each timed bare and with the listener:
  reference  MLP 784-512-256-10, batch 64, SGD with momentum, CPU, one torch thread; arms:
             none, embedviz (StatsListener(frequency=10) into an SQLite file: its worker
             process for this model), tensorboard (add_scalar(loss) every step,
             add_histogram of every parameter and gradient every 10 steps)
  compiled   the same MLP under torch.compile (``--backend``, inductor by default); the
             listener attached to the compiled model
  manual     the same MLP updated by hand (``p.data.add_(p.grad, alpha=-lr)``, as PyTorch's
             word_language_model example): attach(model) without an optimizer, step(lr=)
  tiny       a toy MLP 64-128-10, batch 32 (a step of about a millisecond or less): the
             listener's cost budget (3%) spaces its reports
Every arm runs in a fresh process after 5 warm-up steps (a compiled model compiles there),
timed from the first step until everything it recorded is written (``remove()``, the event
writer's ``close()``). Runs are interleaved (the next run in another order) so that the
machine's drift hits the arms alike; each run's overhead is against that run's bare loop.
``--neighbours N`` runs N CPU-bound processes throughout (as DataLoader workers are: one per
spare core), to show what the listener costs a loaded machine.

Also printed per setup: the worker process's CPU per report (the CPU of the arm's child
processes, read from the OS once they have exited, over the reports written), the dropped
reports and the spacing of reports in use at the end (``monitor/report_every``).

    python benchmarks/bench_listener.py [--steps 6000] [--runs 3] [--neighbours 0]
                                        [--background auto] [--setups reference,tiny]
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
SETUPS = ("reference", "compiled", "manual", "tiny")
FREQUENCY = 10
WARMUP = 5


def arms_of(setup: str) -> tuple[str, ...]:
    return ARMS if setup == "reference" else ARMS[:2]


def child(setup: str, arm: str, steps: int, folder: str, background: str, backend: str) -> None:
    """One arm of one setup, in this process; prints its figures as JSON."""
    import torch
    from embedviz.monitor import StatsListener

    import embedviz

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if setup == "tiny":
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        data = [(torch.randn(32, 64), torch.randint(0, 10, (32,))) for _ in range(32)]
    else:
        model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                                    torch.nn.ReLU(), torch.nn.Linear(256, 10))
        data = [(torch.randn(64, 784), torch.randint(0, 10, (64,))) for _ in range(32)]
    trained = model
    if setup == "compiled":
        trained = torch.compile(model, backend=backend)
    lr = 0.01
    opt = None if setup == "manual" else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    db = os.path.join(folder, f"{arm}.db")
    writer = listener = handle = None

    def one(i: int) -> torch.Tensor:
        x, y = data[i % len(data)]
        loss = torch.nn.functional.cross_entropy(trained(x), y)
        if opt is None:
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
        else:
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss

    for i in range(WARMUP):  # (a compiled model compiles here)
        one(i)
    if arm == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(folder, "tb"))
    t0 = time.perf_counter()
    if arm == "embedviz":
        listener = StatsListener(db, FREQUENCY, session="bench", background=background)
        handle = listener.attach(trained, opt)
    for i in range(steps):
        loss = one(i)
        if writer is not None:
            writer.add_scalar("loss", loss.item(), i)
            if i % FREQUENCY == 0:
                for name, p in model.named_parameters():
                    writer.add_histogram(name, p, i)
                    writer.add_histogram(name + "/grad", p.grad, i)
        if listener is not None:
            listener.step(loss, batch_size=len(data[0][0]), lr=lr if opt is None else None)
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
        every = store.read_series("bench", "monitor/report_every").values
        out.update(written=info.n_updates, dropped=listener.dropped_reports,
                   background=store.static("bench")["listener"]["background"],
                   every=int(every[-1]) if len(every) else FREQUENCY,
                   worker_cpu_ms=1000 * (children.children_user + children.children_system)
                   / max(info.n_updates, 1))
    print(json.dumps(out))


def run_setup(setup: str, args: argparse.Namespace) -> dict[str, list[dict]]:
    arms = arms_of(setup)
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for run in range(args.runs):
        order = arms if run % 2 == 0 else arms[::-1]
        for arm in order:
            with tempfile.TemporaryDirectory() as folder:
                proc = subprocess.run([sys.executable, __file__, "--child", arm, "--setups", setup,
                                       "--steps", str(args.steps), "--folder", folder,
                                       "--background", args.background, "--backend", args.backend],
                                      capture_output=True, text=True, check=True)
            results[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"{setup} run {run + 1}/{args.runs} {arm:<12} {results[arm][-1]['seconds']:7.2f} s",
                  file=sys.stderr, flush=True)
    return results


def report(setup: str, results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    arms = arms_of(setup)
    overhead = {arm: [100 * (r["seconds"] / b["seconds"] - 1) for r, b in
                      zip(results[arm], results["none"])] for arm in arms}
    print(f"\n{setup}: {args.steps} steps per run, CPU, 1 torch thread, whole process; "
          f"{args.neighbours} CPU-bound neighbour(s); {args.runs} interleaved runs")
    print(f"  {'arm':<12} {'ms/step (median)':>16}   overhead of each run")
    for arm in arms:
        ms = 1000 * statistics.median(r["seconds"] for r in results[arm]) / args.steps
        runs = "  ".join(f"{x:+7.1f}%" for x in overhead[arm])
        print(f"  {arm:<12} {ms:16.3f}   {runs}")
    ev = results["embedviz"]
    cpu = ("worker CPU per report (its start-up included) "
           + ", ".join(f"{r['worker_cpu_ms']:.2f}" for r in ev) + " ms"
           if ev[0]["background"] == "ProcessSink" else "summarized on a thread of the training process")
    print(f"  embedviz ({ev[0]['background']}): {cpu}; dropped reports "
          + ", ".join(str(r["dropped"]) for r in ev) + " of "
          + ", ".join(str(r["written"] + r["dropped"]) for r in ev)
          + "; reporting every " + ", ".join(str(r["every"]) for r in ev) + " iterations at the end")
    ours = statistics.median(overhead["embedviz"])
    target = 3.0 if args.neighbours == 0 else 8.0
    line = f"  target: embedviz overhead <= {target:g}% (median {ours:+.1f}%): {'met' if ours <= target else 'MISSED'}"
    if setup == "reference" and args.neighbours:
        tb = statistics.median(overhead["tensorboard"])
        line += f"; <= 1/10 of TensorBoard's ({tb / 10:+.1f}%): {'met' if ours <= tb / 10 else 'MISSED'}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=0,
                        help="CPU-bound processes running throughout (one per spare core)")
    parser.add_argument("--background", choices=("auto", "thread", "process"), default="auto",
                        help="StatsListener's background= (auto: the worker process here)")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help="comma-separated: " + ", ".join(SETUPS))
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend (compiled)")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    setups = [s for s in args.setups.split(",") if s]
    if args.child:
        child(setups[0], args.child, args.steps, args.folder, args.background, args.backend)
        return
    unknown = set(setups) - set(SETUPS)
    if unknown:
        parser.error(f"no setup {sorted(unknown)[0]!r}: the setups are {', '.join(SETUPS)}")
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                  for _ in range(args.neighbours)]
    try:
        results = {setup: run_setup(setup, args) for setup in setups}
    finally:
        for p in neighbours:
            p.kill()
            p.wait()
    for setup in setups:
        report(setup, results[setup], args)


if __name__ == "__main__":
    main()

"""The health checks against the zoo (examples/zoo.py): each planted fault against what was
found (check, layer, iteration lag), the healthy runs' false alarms (target: no warning or
error), whether any run gets contradictory advice (findings whose advice raises and lowers
the learning rate), and what the checks cost per report.

    python benchmarks/bench_health.py [--keep zoo.db [--recheck]]

The lag is in reports (the zoo reports every 5 iterations): from the planted iteration to
the iteration the finding says the fault began, and to the report that found it. A session
recorded without the listener's checks (the GAN: two workers) is judged as `embedviz doctor`
judges it, by replaying its stored series.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import embedviz
from embedviz.health import CHECKS, Checker, check_session
from embedviz.records import Update

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import zoo  # noqa: E402


def contradictions(found: list) -> str:
    """The checks whose advice moves the learning rate both ways on one run ("" if none):
    a consequence listed under its cause (or found after it) gives no advice of its own."""
    ways: dict[int, set[str]] = {}
    for x in found:
        if "caused_by" not in x.detail and CHECKS.get(x.check, CHECKS["nan"]).lr:
            ways.setdefault(CHECKS[x.check].lr, set()).add(x.check)
    if len(ways) < 2:
        return ""
    return f"raise: {', '.join(sorted(ways[1]))} / lower: {', '.join(sorted(ways[-1]))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="record into (and reuse) this store")
    parser.add_argument("--recheck", action="store_true",
                        help="judge the stored series with the checks as they are now (replayed), "
                             "not by the findings stored while recording")
    args = parser.parse_args()
    path = args.keep or os.path.join(tempfile.mkdtemp(), "zoo.db")
    fresh = not os.path.exists(path)
    ids = {}
    with embedviz.open_store(path) as store:
        known = {s.name: s.id for s in store.sessions()}
        for run in zoo.BROKEN + zoo.HEALTHY:
            ids[run.name] = known[run.name] if not fresh and run.name in known else zoo.train(store, run)
            print(f"recorded {run.name}", file=sys.stderr, flush=True)
    store = embedviz.open_store(path, readonly=True)
    findings = {name: ([] if args.recheck else [x for _, x in store.findings(sid)])
                or check_session(store, sid) for name, sid in ids.items()}
    f = zoo.FREQUENCY
    print(f"\n{'planted fault':<20} {'check':<20} {'layer':<9} {'found':<6} {'began at':>9} "
          f"{'lag (reports)':>14} {'found after':>12}  other warnings/errors")
    for run in zoo.BROKEN:
        check, layer, it = run.planted
        if check == "overfitting":
            val = store.read_series(ids[run.name], "metric/val_loss")
            it = int(val.iterations[np.nanargmin(val.values)])
        found = findings[run.name]
        hit = next((x for x in found if x.check == check and x.layer == layer), None)
        others = sorted({x.check for x in found if x is not hit and x.severity != "info"})
        if hit is None:
            print(f"{run.name:<20} {check:<20} {layer or '-':<9} {'NO':<6}")
            continue
        print(f"{run.name:<20} {check:<20} {layer or '-':<9} {'yes':<6} {hit.iteration:>9} "
              f"{(hit.iteration - it) / f:>14.0f} {(hit.detail['found_at'] - hit.iteration) / f:>12.0f}"
              f"  {', '.join(others) or '-'}")
    print(f"\n{'healthy run':<30} {'warnings':>9} {'errors':>7} {'info':>5}  loud findings; info")
    alarms = 0
    for run in zoo.HEALTHY:
        found = findings[run.name]
        count = {s: sum(x.severity == s for x in found) for s in ("warning", "error", "info")}
        alarms += count["warning"] + count["error"]
        loud = sorted({f"{x.check}" + (f" [{x.worker}]" if run.gan else "") for x in found
                       if x.severity != "info"})
        info = sorted({x.check for x in found if x.severity == "info"})
        print(f"{run.name:<30} {count['warning']:>9} {count['error']:>7} {count['info']:>5}  "
              f"{', '.join(loud) or '-'}; {', '.join(info) or '-'}")
    print(f"false alarms: {alarms} warnings and errors on {len(zoo.HEALTHY)} healthy runs "
          f"(target 0: {'met' if alarms == 0 else 'MISSED'})")
    mixed = {name: c for name, found in findings.items() if (c := contradictions(found))}
    print(f"contradictory advice (the learning rate raised and lowered on one run): "
          f"{len(mixed)} of {len(findings)} runs" + "".join(f"\n  {n}: {c}" for n, c in mixed.items()))

    # cost: the checks alone, replayed over each session's stored records
    per = []
    for name, sid in ids.items():
        records = list(store.records(sid))
        n = sum(isinstance(r, Update) for r in records)
        layers = len({k.split('/')[1] for r in records if isinstance(r, Update) for k in r.summaries})
        Checker(10).feed(records)  # (warm)
        t0 = time.perf_counter()
        Checker(10).feed(records)
        per.append(((time.perf_counter() - t0) / n * 1000, name, layers))
    per.sort()
    ms = np.array([p[0] for p in per])
    print(f"\nthe checks' cost per report: median {np.median(ms):.2f} ms, "
          f"from {per[0][0]:.2f} ms ({per[0][1]}, {per[0][2]} tensors) "
          f"to {per[-1][0]:.2f} ms ({per[-1][1]}, {per[-1][2]} tensors)")
    store.close()


if __name__ == "__main__":
    main()

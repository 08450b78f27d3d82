"""The ``embedviz`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from embedviz.errors import EmbedvizError
from embedviz.store import open_store


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_sessions(args: argparse.Namespace) -> int:
    with open_store(args.store, readonly=True) as store:
        sessions = store.sessions()
        if not sessions:
            print(f"{args.store}: no sessions yet")
            return 0
        print(f"{'session':<28} {'name':<16} {'worker':<10} {'iterations':>17} {'updates':>8}  last update")
        for s in sessions:
            rows = s.workers or [None]
            for i, w in enumerate(rows):
                head = f"{s.id:<28} {(s.name or '-')[:16]:<16}" if i == 0 else " " * 45
                if w is None:
                    print(f"{head} {'-':<10} {'-':>17} {0:>8}  -")
                    continue
                its = ("-" if w.first_iteration is None
                       else f"{w.first_iteration}..{w.last_iteration}")
                print(f"{head} {w.worker[:10]:<10} {its:>17} {w.n_updates:>8}  {_when(w.last_update)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with open_store(args.store, readonly=True) as store:
        n = store.export_jsonl(args.output, session=args.session)
    print(f"wrote {n} records to {args.output}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    with open_store(args.store) as store:
        report = store.import_jsonl(args.file, skip_bad=args.skip_bad)
    parts = ", ".join(f"{n} {k}" for k, n in sorted(report.imported.items())) or "nothing"
    print(f"imported {parts} into {args.store}; {report.skipped_existing} already present")
    for line, reason in report.bad_lines:
        print(f"skipped line {line}: {reason}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from embedviz.demo import run

    with open_store(args.store) as store:
        run(store)
    print(f"\nlist them: embedviz sessions {args.store}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedviz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small net and a word2vec model, record both")
    p.add_argument("--store", default="runs.db", help="store path or URL (default runs.db)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("sessions", help="list sessions, workers, iteration ranges, last update")
    p.add_argument("store", help="store path or URL (e.g. runs.db)")
    p.set_defaults(func=cmd_sessions)
    p = sub.add_parser("export", help="write every record as JSON lines")
    p.add_argument("store")
    p.add_argument("--session", help="only this session")
    p.add_argument("-o", "--output", required=True, help="the .jsonl file to write")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="merge a JSONL export into a store")
    p.add_argument("file", help="a .jsonl file from `embedviz export`")
    p.add_argument("store", help="store path or URL (created if missing)")
    p.add_argument("--skip-bad", action="store_true",
                   help="import every good line and report the bad ones")
    p.set_defaults(func=cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (EmbedvizError, OSError) as exc:
        print(f"embedviz {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

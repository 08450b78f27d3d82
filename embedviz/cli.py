"""The ``embedviz`` command line."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

from embedviz.errors import EmbedvizError, UnknownSessionError
from embedviz.store import SessionInfo, SQLiteStore, Store, backend_failure, open_store
from embedviz.store.base import check_output_path

#: t-SNE's early exaggeration phase: openTSNE's 250 iterations, at most a third of the run
EARLY_ITERATIONS = 250


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """Print ``rows`` under ``header``, each column as wide as its widest cell (nothing cut)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header))
    for r in rows:
        print(line(r))


def cmd_sessions(args: argparse.Namespace) -> int:
    with open_store(args.store, readonly=True) as store:
        sessions = store.sessions()
    if not sessions:
        print(f"{args.store}: no sessions yet")
        return 0
    rows: list[tuple[str, ...]] = []
    for s in sessions:
        for i, w in enumerate(list(s.workers) or [None]):
            head = (s.id, s.name or "-") if i == 0 else ("", "")
            if w is None:
                rows.append((*head, "-", "-", "0", "-"))
                continue
            its = "-" if w.first_iteration is None else f"{w.first_iteration}..{w.last_iteration}"
            rows.append((*head, w.worker, its, str(w.n_updates), _when(w.last_update)))
    _table(("session", "name", "worker", "iterations", "updates", "last update"), rows, right=(3, 4))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    output = check_output_path(args.output)  # (before any work)
    with open_store(args.store, readonly=True) as store:
        # (the session is checked first, and the file written whole or not at all: an
        # existing one is replaced only once every record is written)
        n = store.export_jsonl(output, session=args.session)
    print(f"wrote {n} records to {args.output}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    if os.path.isdir(args.file):
        return _import_tensorboard(args)
    if not os.path.exists(args.file):
        raise EmbedvizError(f"{args.file}: no such file or folder: pass a TensorBoard logdir "
                            "or a .jsonl file from `embedviz export`")
    if "tfevents" in os.path.basename(args.file):
        raise EmbedvizError(f"{args.file} is a TensorBoard event file: pass its folder (or the "
                            "logdir above it), e.g. `embedviz import "
                            f"{os.path.dirname(args.file) or '.'} {args.store}`")
    if args.score is not None:
        raise EmbedvizError(f"--score is for a TensorBoard logdir, and {args.file} is a file: "
                            "drop --score, or pass the logdir")
    store = open_store(args.store)
    try:
        report = store.import_jsonl(args.file, skip_bad=args.skip_bad)
    except BaseException:
        _remove_if_new(store)  # (an import that fails leaves no new empty store behind)
        raise
    finally:
        store.close()
    parts = ", ".join(f"{n} {k}" for k, n in sorted(report.imported.items())) or "nothing"
    print(f"imported {parts} into {args.store}; {report.skipped_existing} already present")
    for line, reason in report.bad_lines:
        print(f"skipped line {line}: {reason}", file=sys.stderr)
    return 0


def _import_tensorboard(args: argparse.Namespace) -> int:
    from embedviz.tbimport import TensorBoardImporter

    store = open_store(args.store)
    try:
        with TensorBoardImporter(args.file, store, score=args.score) as imp:
            report = imp.poll(progress=True, require=True)
    except BaseException:
        _remove_if_new(store)
        raise
    finally:
        store.close()
    runs = (f" ({len(report.sessions)} run(s): {', '.join(report.sessions[:5])}"
            f"{', ...' if len(report.sessions) > 5 else ''})" if report.sessions else "")
    print(f"imported {report.summary()} from {args.file} into {args.store}{runs}")
    for line in report.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in report.problems:
        print(f"problem: {line}", file=sys.stderr)
    if report.sessions:
        print(f"see them: embedviz serve {args.store}   (embedviz doctor {args.store}: findings)")
    return 1 if report.problems else 0


def _remove_if_new(store: Store) -> None:
    """Remove the file of an SQLite store this process has just created, if it is still
    empty."""
    if not isinstance(store, SQLiteStore) or not store.created:
        return
    try:
        if store.sessions() or store.embeddings():
            return
    except Exception:  # (unreadable: leave it as it is)
        return
    store.close()
    for end in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{store.path}{end}")
        except OSError:
            pass


def _pick_session(store: str, every: Sequence[SessionInfo], wanted: str) -> SessionInfo:
    """The session ``wanted`` names: its id, or the name of one session."""
    for s in every:
        if s.id == wanted:
            return s
    named = [s for s in every if s.name == wanted]
    if len(named) == 1:
        return named[0]
    if named:
        raise UnknownSessionError(f"{len(named)} sessions are named {wanted!r}: pass the id of "
                                  "one: " + ", ".join(s.id for s in named))
    shown = [f"{s.name} [{s.id}]" if s.name else s.id for s in every[-20:]]
    more = (f" and {len(every) - 20} older (`embedviz sessions {store}` lists them)"
            if len(every) > 20 else "")
    raise UnknownSessionError(f"no session named {wanted!r} in {store}, and none with that id: "
                              "pass a session's name or id; known sessions: "
                              + (", ".join(shown) + more if shown else "none"))


def _labels(sessions: Sequence[SessionInfo]) -> dict[str, str]:
    """How to name each session to a person: its name, with its id where another session
    has the same name; its id when it has no name."""
    names = Counter(s.name for s in sessions if s.name)
    return {s.id: s.id if not s.name else s.name if names[s.name] == 1 else f"{s.name} [{s.id}]"
            for s in sessions}


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from embedviz.health import SEVERITY_RANK, not_run, replay_session
    from embedviz.store import codec

    with open_store(args.store, readonly=True) as store:
        every = store.sessions()
        sessions = [_pick_session(args.store, every, args.session)] if args.session else every
        found = []
        #: per session, the checks that could not run on any of its workers, and why
        unjudged: dict[str, dict[str, str]] = {}
        for s in sessions:
            stored = [] if args.recheck else [f for _, f in store.findings(s.id)]
            if stored:
                found += stored
                kept = (s.info.get("health") or {}).get("not_run") if isinstance(s.info, dict) else None
                if isinstance(kept, dict) and kept:
                    unjudged[s.id] = kept
                continue
            # (a session recorded without the checks, or --recheck: compute them from its
            # series, every worker beside the others)
            checker, replayed = replay_session(store, s.id)
            found += replayed
            if (s.info or {}).get("source") != "tensorboard":
                continue  # (a listener's session: what it did not record, its pages explain)
            gaps = [not_run(checker, s.id, w.worker) for w in s.workers]
            common = {k: v for k, v in gaps[0].items() if all(k in g for g in gaps)} if gaps else {}
            if common:
                unjudged[s.id] = common
    #: the sessions of more than one worker: their findings name the worker (as do those of a
    #: worker not named "0", the default)
    several = {s.id for s in sessions if len(s.workers) > 1}
    found.sort(key=lambda f: (SEVERITY_RANK[f.severity], f.session, f.iteration, f.worker))
    if args.json:
        print(json.dumps(codec.to_jsonable([f.to_dict() for f in found]), indent=1,
                         allow_nan=False, ensure_ascii=False))
    elif not found:
        print(f"{args.store}: no findings in {len(sessions)} session(s)"
              + (": but some checks could not run (below)" if unjudged else
                 ": nothing to worry about"))
    else:
        label = _labels(every)
        width = max(len(label.get(f.session, f.session)) for f in found)
        for f in found:
            value = f.detail.get("value")
            shown = f"{value:.3g}" if isinstance(value, float) else value
            worker = f"[worker {f.worker}]  " if f.session in several or f.worker != "0" else ""
            print(f"{f.severity.upper():<8}{f.check:<22}{label.get(f.session, f.session):<{width}}  "
                  f"{worker}{f.layer or '-'}  iteration {f.iteration}"
                  + (f"  value {shown} (healthy: {f.detail['band']})" if "band" in f.detail else ""))
            print(f"        {worker.rstrip() + ' ' if worker else ''}{f.message}")
    if unjudged:
        label = _labels(every)
        out = sys.stderr if args.json else sys.stdout
        for sid, checks in unjudged.items():
            if "nan" in checks:  # (nothing to judge at all: say it once)
                print(f"{label.get(sid, sid)}: no check could run: {checks['nan']}", file=out)
                continue
            print(f"{label.get(sid, sid)}: {len(checks)} check(s) could not run for want of "
                  "data:", file=out)
            by_reason: dict[str, list[str]] = {}
            for name, why in checks.items():
                by_reason.setdefault(why, []).append(name)
            for why, names in by_reason.items():
                print(f"        {', '.join(names)}: {why}", file=out)
    # (exit 1 on an error only: warnings and information leave a healthy run's status 0)
    return 1 if any(f.severity == "error" for f in found) else 0


def _beside(store: str, name: str) -> str:
    """A file in the store's folder (the current folder for a URL or an in-memory store)."""
    import os

    path = store.split("://", 1)[-1].partition("?")[0]
    if "://" in store and not store.startswith("sqlite://"):
        return name  # (a server's URL: postgresql://, http://)
    if store.startswith("sqlite://"):
        path = path[1:] if path.startswith("/") else path
    folder = os.path.dirname(path) if path and path != ":memory:" else ""
    return os.path.join(folder, name)


def cmd_demo(args: argparse.Namespace) -> int:
    from embedviz.demo import run

    with open_store(args.store) as store:
        try:
            run(store, html=args.html or _beside(args.store, "vocab.html"), again=args.again)
        except KeyboardInterrupt:
            print(f"\nembedviz demo: interrupted; `embedviz demo --store {args.store}` completes it",
                  file=sys.stderr)
            return 130  # (128 + SIGINT, as a shell reports it)
    if args.no_serve:
        print(f"\nlook at it: embedviz serve {args.store}")
        return 0
    return _serve(args.store, port=args.port, host="127.0.0.1", origins=[], lang=None, show=False)


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    if args.token_file is not None:  # (checked before a store is made)
        from embedviz.store.remote import read_token_file

        read_token_file(args.token_file)
    path, _, query = args.store.partition("?")
    if "://" not in args.store and path != ":memory:" and not os.path.exists(path):
        if "readonly" in query or os.path.exists(args.store):
            raise EmbedvizError(f"no store at {path}: record one first (`embedviz demo`, or a "
                                "StatsListener in your training) or check the path")
        # (as TensorBoard does on an empty logdir: the pages fill when a training records)
        print(f"embedviz: {os.path.abspath(path)} is a new, empty store: its pages fill as "
              "soon as a training records into it", flush=True)
    with open_store(args.store) as store:  # (a store that cannot be opened: one line, exit 2)
        if args.token_file is not None and getattr(store, "readonly", False):
            raise EmbedvizError(f"{store.label} is open read-only, so it cannot take posts: "
                                "drop readonly=1 to take them, or --token-file to only read")
        label = store.label
    if args.tensorboard is not None and os.path.exists(args.tensorboard) \
            and not os.path.isdir(args.tensorboard):
        raise EmbedvizError(f"--tensorboard {args.tensorboard} is a file: pass the folder you "
                            "give `tensorboard --logdir`")
    return _serve(args.store, port=args.port, host=args.host, origins=args.allow_websocket_origin,
                  lang=args.lang, show=args.show, token_file=args.token_file, label=label,
                  tensorboard=args.tensorboard)


def _serve(store: str, *, port: int, host: str, origins: list[str], lang: str | None,
           show: bool, token_file: str | None = None, label: str | None = None,
           tensorboard: str | None = None) -> int:
    from embedviz.server import make_server

    try:
        server = make_server(store, port=port, host=host, allow_websocket_origin=origins,
                             lang=lang, token_file=token_file)
        server.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise EmbedvizError(f"port {port} is in use (another embedviz serve?): pick another "
                            "with --port, e.g. --port 5007") from None
    url = f"http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{server.port}/"
    print(f"embedviz: serving {label or store} at {url}  (Ctrl+C stops it)", flush=True)
    if token_file is not None:
        print(f"embedviz: trainings post to {url}ingest with the token in {token_file} "
              f"(open_store('{url.rstrip('/')}', token=...), or EMBEDVIZ_TOKEN_FILE)", flush=True)
        if os.stat(token_file).st_mode & 0o077:
            print(f"embedviz: warning: other users can read {token_file}: chmod 600 it",
                  file=sys.stderr, flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print("embedviz: warning: the token travels in clear text over http: on a shared "
                  "network, put the server behind TLS (a reverse proxy) and post to https://",
                  file=sys.stderr, flush=True)
    follower = None
    if tensorboard is not None:
        from embedviz.tbimport import Follower

        print(f"embedviz: following {tensorboard} (imported into {label or store} every 5 s"
              f"{'' if os.path.isdir(tensorboard) else '; it does not exist yet: waiting for it'})",
              flush=True)
        follower = Follower(tensorboard, store,
                            say=lambda line: print(line, file=sys.stderr, flush=True)).start()
    if show:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        if follower is not None:
            follower.close()
        server.stop()
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from embedviz.store.remote import read_token_file, sync

    if args.token_file is None and not (os.environ.get("EMBEDVIZ_TOKEN")
                                        or os.environ.get("EMBEDVIZ_TOKEN_FILE")):
        raise EmbedvizError("embedviz sync needs the server's token: pass --token-file FILE "
                            "(the file given to `embedviz serve --token-file`), or set "
                            "EMBEDVIZ_TOKEN_FILE")
    token = None if args.token_file is None else read_token_file(args.token_file)
    last = [0.0]

    def progress(done: int, total: int) -> None:  # (a long spool: a line every 2 s)
        if time.monotonic() - last[0] >= 2.0 or done == total:
            last[0] = time.monotonic()
            print(f"embedviz sync: {done} of {total} records sent", file=sys.stderr, flush=True)

    report = sync(args.spool, args.to, token, progress=progress)
    for folder in report.busy:
        print(f"embedviz sync: skipped {folder}: a running process is sending it",
              file=sys.stderr)
    if not report.synced and not report.busy:
        print(f"{args.spool}: nothing to send (no spool there)")
        return 0
    print(f"synced {report.written + report.duplicates + report.rejected} records from "
          f"{len(report.synced)} spool(s): {report.written} stored, {report.duplicates} "
          f"already stored, {report.rejected} rejected by the server")
    return 0


def cmd_tsne(args: argparse.Namespace) -> int:
    import logging

    from embedviz.plot import plot_vocab
    from embedviz.projection import BarnesHutTsne

    check_output_path(args.output)  # (before the projection, not after it)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("embedviz").setLevel(logging.INFO)
    early = (min(EARLY_ITERATIONS, max(args.max_iter, 0) // 3) if args.early_iter is None
             else args.early_iter)
    if early > args.max_iter:
        raise EmbedvizError(f"--early-iter {early} is more than --max-iter {args.max_iter}: the "
                            "early exaggeration iterations are the first of --max-iter")
    tsne = BarnesHutTsne(perplexity=args.perplexity, max_iter=args.max_iter,
                         stop_lying_iteration=early,
                         learning_rate=args.learning_rate if args.learning_rate else "auto",
                         theta=args.theta, normalize=not args.no_normalize, use_pca=args.use_pca,
                         metric=args.metric, random_state=args.seed,
                         until="max_iter" if args.fixed else "converged")
    store = open_store(args.store) if args.store else None
    if args.top < 0:
        raise EmbedvizError(f"--top {args.top}: give a number of words, or 0 for every word")
    plot_vocab(args.vectors, tsne, top_n=args.top or None, color_by=args.color_by, output=args.output,
               store=store, labels=args.labels, binary=args.binary, allow_pickle=args.allow_pickle,
               include=args.include or (), exclude=args.exclude or ())
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedviz", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="train a small net and a word2vec model, record both")
    p.add_argument("--store", default="runs.db", help="store path or URL (default runs.db)")
    p.add_argument("--html", default=None,
                   help="t-SNE page of the word2vec vocabulary (default: vocab.html beside the store)")
    p.add_argument("--no-serve", action="store_true", help="record, then exit (do not serve the app)")
    p.add_argument("--again", action="store_true",
                   help="record a new set of the demo's sessions even if the store holds one")
    p.add_argument("--port", type=int, default=5006)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("serve", help="serve the app (training pages and embedding explorer)")
    p.add_argument("store", nargs="?", default="runs.db", help="store path or URL (default runs.db)")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; another needs --allow-websocket-origin)")
    p.add_argument("--allow-websocket-origin", action="append", default=[], metavar="HOST:PORT",
                   help="an exact origin browsers may use (repeatable)")
    p.add_argument("--lang", choices=["en", "ja"], default=None,
                   help="page language (default: the browser's)")
    p.add_argument("--show", action="store_true", help="open it in a browser")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="take posts of training machines at /ingest with the token in FILE "
                   "(without it, posts are refused)")
    p.add_argument("--tensorboard", default=None, metavar="LOGDIR",
                   help="import a TensorBoard logdir into the store, and what its trainings "
                   "append, every 5 s")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("sync", help="send a spool left behind by a training that ended while "
                       "the server could not be reached")
    p.add_argument("spool", help="the spool folder a training named (or a folder of several, "
                   "e.g. ~/.cache/embedviz/spool)")
    p.add_argument("--to", default=None, metavar="URL",
                   help="the server, http://HOST:PORT (default: the one each spool was meant for)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="the server's token (default: $EMBEDVIZ_TOKEN, or the file "
                   "$EMBEDVIZ_TOKEN_FILE)")
    p.set_defaults(func=cmd_sync)
    p = sub.add_parser("tsne", help="project word vectors with t-SNE into a standalone HTML plot")
    p.add_argument("vectors", help="word2vec .vec/.txt/.bin, projector tensors.tsv, or .npy (with --labels)")
    p.add_argument("-o", "--output", default="vocab.html", help="the HTML file to write")
    p.add_argument("--top", type=int, default=1000,
                   help="the N most frequent words (default 1000; 0: every word)")
    p.add_argument("--perplexity", type=float, default=30.0)
    p.add_argument("--max-iter", type=int, default=750,
                   help="iterations in all, early exaggeration included (default 750)")
    p.add_argument("--early-iter", type=int, default=None, metavar="N",
                   help="iterations of early exaggeration (stop_lying_iteration), the first of "
                   f"--max-iter (default: {EARLY_ITERATIONS}, or a third of --max-iter when that "
                   "is fewer)")
    p.add_argument("--fixed", action="store_true",
                   help="run all --max-iter iterations (default: stop when the map has converged)")
    p.add_argument("--learning-rate", type=float, default=None, help="default: n/12 (openTSNE's auto)")
    p.add_argument("--theta", type=float, default=0.5)
    p.add_argument("--metric", default="euclidean")
    p.add_argument("--use-pca", action="store_true", help="reduce to 50 dimensions first")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise the vectors")
    p.add_argument("--color-by", default=None, help="a metadata column, or 'cluster'")
    p.add_argument("--labels", default=None, help="labels file (one a line) for .npy input")
    p.add_argument("--include", nargs="*", help="words to keep beyond --top")
    p.add_argument("--exclude", nargs="*", help="words to leave out")
    p.add_argument("--binary", action="store_true", default=None, help="word2vec binary format")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read a pickled gensim .model/.kv (runs code from the file: trusted files only)")
    p.add_argument("--store", default=None, help="record (and reuse) the projection in this store")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_tsne)
    p = sub.add_parser("sessions", help="list sessions, workers, iteration ranges, last update")
    p.add_argument("store", help="store path or URL (e.g. runs.db)")
    p.set_defaults(func=cmd_sessions)
    p = sub.add_parser("doctor", help="the health findings of a store's sessions, worst first, "
                       "with advice (exit 1 if one is an error)")
    p.add_argument("store", nargs="?", default="runs.db", help="store path or URL (default runs.db)")
    p.add_argument("--session", metavar="NAME_OR_ID", help="only this session (its name or id)")
    p.add_argument("--json", action="store_true", help="a JSON list of findings (the export format)")
    p.add_argument("--recheck", action="store_true",
                   help="judge the stored series with this version's checks, not the findings "
                        "stored while the sessions ran")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("export", help="write every record as JSON lines")
    p.add_argument("store")
    p.add_argument("--session", help="only this session")
    p.add_argument("-o", "--output", required=True, help="the .jsonl file to write")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="import a TensorBoard logdir, or merge a JSONL export, "
                       "into a store (again: only what is new)")
    p.add_argument("file", metavar="LOGDIR_OR_FILE",
                   help="a TensorBoard logdir (what you pass to tensorboard --logdir), or a "
                   ".jsonl file from `embedviz export`")
    p.add_argument("store", nargs="?", default="runs.db",
                   help="store path or URL (created if missing; default runs.db)")
    p.add_argument("--skip-bad", action="store_true",
                   help="JSONL: import every good line and report the bad ones")
    p.add_argument("--score", metavar="TAG", default=None,
                   help="TensorBoard: the scalar tag that is the training loss (default: the "
                   "first of loss, train_loss, Loss/train, ... met)")
    p.set_defaults(func=cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # (so that a reader gone away shows here, not at exit)
        return code
    except BrokenPipeError:
        return _reader_gone()
    except KeyboardInterrupt:  # (what was written is kept: each command writes whole batches)
        print(f"embedviz {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        why = backend_failure(exc)  # (a store damaged or a server gone after it was opened)
        if args.debug or (why is None and not isinstance(exc, (EmbedvizError, OSError))):
            raise
        why = why or str(exc)
        print(f"embedviz {args.command}: error: {why} (--debug shows where)", file=sys.stderr)
        return 2


def _reader_gone() -> int:
    """Our output's reader has exited (``| head``): what is left has nowhere to go. Point
    stdout at the null device, or Python complains again when it flushes it at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # (a stdout without a file descriptor: nothing to flush)
        pass
    return 141  # (128 + SIGPIPE: what a shell reports for a writer whose reader left)


if __name__ == "__main__":
    sys.exit(main())

"""embedviz.server: the Bokeh server app over one stats store.

``embedviz serve runs.db`` (or ``bokeh serve server/app --args runs.db`` from a checkout)
serves it; ``embedviz.show(store)`` embeds it in a Jupyter notebook. Each server owns one
:class:`AppState` (its store, the read layer every tab shares, the projection jobs), kept
on the Bokeh server context: opened when the server loads, closed when it stops, so two
servers in one process never share or close each other's store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from embedviz.errors import EmbedvizError

APP_DIR = Path(__file__).parent / "app"


class AppState:
    """What one app server owns: its store, the read layer over it (``provider``) and
    the pool that runs projections from the embeddings page (``jobs``; None for a store
    opened read-only) and the thread that writes what the ingest endpoint is posted
    (:meth:`ingest_writer`). ``close()`` is idempotent."""

    def __init__(self, target: Any, *, lang: str | None = None, jobs: bool = True) -> None:
        from embedviz.server.provider import Provider

        from embedviz.store import open_store

        self.store = open_store(target)
        self.own_store = self.store is not target
        self.provider = Provider(self.store)
        self.lang = lang
        self.jobs: Any = None
        if jobs and not getattr(self.store, "readonly", False):
            from embedviz.server.jobs import Jobs

            self.jobs = Jobs(self.store)
        self._writer: Any = None
        self._closed = False

    def ingest_writer(self) -> Any:
        """The executor that parses and writes posts to /ingest: one thread, so posts are
        written one at a time, in order, off the event loop (made at the first post)."""
        if self._closed:
            raise RuntimeError("the app's state is closed")
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(1, thread_name_prefix="embedviz-ingest")
        return self._writer

    def __enter__(self) -> AppState:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.jobs is not None:
            self.jobs.close()
        if self._writer is not None:  # (the post being written lands before the store closes)
            self._writer.shutdown(wait=True, cancel_futures=True)
        if self.own_store:
            self.store.close()


def state_of(doc: Any) -> AppState:
    """The AppState of the server serving ``doc`` (set by the app's on_server_loaded)."""
    ctx = getattr(doc, "session_context", None)
    state = getattr(getattr(ctx, "server_context", None), "embedviz", None)
    if state is None:
        raise EmbedvizError("the embedviz app runs inside its server: start it with "
                            "`embedviz serve STORE` or `bokeh serve server/app --args STORE`")
    return state


def app_settings(argv: list[str]) -> dict:
    """The app's options from ``--args``: ``STORE [--lang en|ja]``."""
    import argparse

    p = argparse.ArgumentParser(prog="embedviz app", add_help=False)
    p.add_argument("store", nargs="?", default="runs.db")
    p.add_argument("--lang", default=None)
    args, _ = p.parse_known_args(argv)
    return {"store": args.store, "lang": args.lang}


def make_server(store: str = "runs.db", *, port: int = 5006, host: str = "127.0.0.1",
                allow_websocket_origin: list[str] | None = None, lang: str | None = None,
                token_file: str | os.PathLike | None = None) -> Any:
    """A Bokeh server (not started) that serves the app at ``/`` and the ingest endpoint
    at ``/ingest`` (embedviz.server.ingest: it takes posts with the token held in
    ``token_file``; without one it refuses them, saying how to enable it). Binds 127.0.0.1;
    another ``host`` needs the exact origins the browser will use in
    ``allow_websocket_origin``."""
    from bokeh.application import Application
    from bokeh.application.handlers import DirectoryHandler
    from bokeh.server.server import Server
    from embedviz.server.ingest import Ingest, IngestHandler

    from embedviz.store.remote import read_token_file

    token = None if token_file is None else read_token_file(token_file)
    origins = list(allow_websocket_origin or [])
    if any(o.strip() in ("*", "") for o in origins):
        raise EmbedvizError("--allow-websocket-origin must name exact origins (host:port), "
                            "not '*': any web page could otherwise drive the app")
    if host not in ("127.0.0.1", "localhost", "::1") and not origins:
        raise EmbedvizError(f"serving on {host} needs --allow-websocket-origin with the exact "
                            f"address browsers will use (e.g. {host}:{port}); the default "
                            "127.0.0.1 needs none")
    if not origins:
        origins = [f"localhost:{port}", f"127.0.0.1:{port}"]
    argv = [os.fspath(store)] + (["--lang", lang] if lang else [])
    app = Application(DirectoryHandler(filename=str(APP_DIR), argv=argv))
    return Server({"/": app}, port=port, address=host, allow_websocket_origin=origins,
                  check_unused_sessions_milliseconds=10_000,
                  unused_session_lifetime_milliseconds=30_000,
                  extra_patterns=[(r"/ingest", IngestHandler, {"ingest": Ingest(token)})])


def show(store: Any = "runs.db", *, port: int | None = None, lang: str | None = None,
         height: int = 900) -> Any:
    """Embed the app in a Jupyter notebook, as ``%tensorboard`` does: the notebook's kernel
    serves it on 127.0.0.1 (a free port unless ``port`` is given) and the cell shows it in
    an iframe. ``store``: a path or URL (or an open store: its URL). Returns the server:
    ``.stop()`` ends it, as restarting the kernel does."""
    try:
        from IPython.display import IFrame, display
    except ImportError:
        raise EmbedvizError("embedviz.show embeds the app in a Jupyter notebook and needs "
                            "IPython (pip install ipykernel); elsewhere run `embedviz serve "
                            "STORE`") from None
    target = getattr(store, "url", None) or os.fspath(store)
    if port is None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    server = make_server(target, port=port, lang=lang)
    server.start()  # (on the kernel's running event loop)
    display(IFrame(f"http://localhost:{port}/", width="100%", height=height))
    return server


__all__ = ["APP_DIR", "AppState", "app_settings", "make_server", "show", "state_of"]

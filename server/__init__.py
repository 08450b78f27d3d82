"""embedviz.server: the Bokeh server app over one stats store.

``embedviz serve runs.db`` (or ``bokeh serve server/app --args runs.db`` from a checkout)
serves it; ``embedviz.show(store)`` embeds it in a Jupyter notebook. The store is opened
once per server process and shared by every page; pages only read it, and the embeddings
page's projection form writes its results.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from embedviz.errors import EmbedvizError

APP_DIR = Path(__file__).parent / "app"

_lock = threading.Lock()
_shared: dict[str, Any] = {}


def open_shared(target: str) -> Any:
    """The server process's one store for ``target`` (opened on first use)."""
    from embedviz.store import open_store

    with _lock:
        store = _shared.get(target)
        if store is None:
            store = _shared[target] = open_store(target)
        return store


def close_shared() -> None:
    """Close every shared store (the server is unloading); idempotent."""
    with _lock:
        stores = list(_shared.values())
        _shared.clear()
    for s in stores:
        s.close()


def app_settings(argv: list[str]) -> dict:
    """The app's options from ``--args``: ``STORE [--lang en|ja]``."""
    import argparse

    p = argparse.ArgumentParser(prog="embedviz app", add_help=False)
    p.add_argument("store", nargs="?", default="runs.db")
    p.add_argument("--lang", default=None)
    args, _ = p.parse_known_args(argv)
    return {"store": args.store, "lang": args.lang}


def make_server(store: str = "runs.db", *, port: int = 5006, host: str = "127.0.0.1",
                allow_websocket_origin: list[str] | None = None, lang: str | None = None) -> Any:
    """A Bokeh server (not started) that serves the app at ``/``. Binds 127.0.0.1; another
    ``host`` needs the exact origins the browser will use in ``allow_websocket_origin``."""
    from bokeh.application import Application
    from bokeh.application.handlers import DirectoryHandler
    from bokeh.server.server import Server

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
                  unused_session_lifetime_milliseconds=30_000)


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


__all__ = ["APP_DIR", "app_settings", "close_shared", "make_server", "open_shared", "show"]

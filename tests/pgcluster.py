"""A throw-away PostgreSQL cluster for tests and benchmarks: ``initdb`` into a temporary
folder, ``pg_ctl`` on a free port and a Unix socket in that folder, removed on close.

As root (CI), the server runs as the ``postgres`` user (PostgreSQL refuses root). With
``EMBEDVIZ_TEST_POSTGRES_URL`` set, that server is used instead and nothing is started.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``Cluster()`` starts one; ``url(schema)`` names a store in it (a fresh schema each
    call unless ``schema`` is given); ``close()`` stops it and removes its files."""

    def __init__(self) -> None:
        self.external = os.environ.get("EMBEDVIZ_TEST_POSTGRES_URL")
        self.folder: str | None = None
        if self.external:
            return
        bins = [b for b in PG_BINS if os.path.exists(os.path.join(b, "initdb"))]
        initdb = shutil.which("initdb") or (os.path.join(bins[0], "initdb") if bins else None)
        if initdb is None:
            raise RuntimeError("no PostgreSQL server here (initdb not found): apt-get install "
                               "postgresql, or set EMBEDVIZ_TEST_POSTGRES_URL")
        self.bin = os.path.dirname(initdb)
        self.folder = tempfile.mkdtemp(prefix="embedviz-pg-")
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
            shutil.chown(self.folder, "postgres", "postgres")
        self.data = os.path.join(self.folder, "data")
        self._run(["initdb", "-D", self.data, "-U", "embedviz", "--auth=trust",
                   "--no-instructions", "-E", "UTF8", "--locale=C"])
        opts = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        self._start = ["pg_ctl", "-D", self.data, "-o", opts, "-l",
                       os.path.join(self.folder, "log"), "-w", "-t", "60", "start"]
        self._run(self._start)

    def _run(self, cmd: list[str]) -> None:
        cmd = self._as + [os.path.join(self.bin, cmd[0])] + cmd[1:]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/")
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr or done.stdout}")

    def url(self, schema: str | None = None) -> str:
        schema = schema or "t_" + uuid.uuid4().hex[:12]
        if self.external:
            sep = "&" if "?" in self.external else "?"
            return f"{self.external}{sep}schema={schema}"
        return (f"postgresql://embedviz@127.0.0.1:{self.port}/postgres?schema={schema}")

    def restart(self) -> None:
        """Stop the server (every connection cut, as a restart by its admin) and start it."""
        self._run(["pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        self._run(self._start)  # (its output to the log: a pipe held open would hang us)

    def close(self) -> None:
        if self.folder is None:
            return
        folder, self.folder = self.folder, None
        try:
            self._run(["pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)

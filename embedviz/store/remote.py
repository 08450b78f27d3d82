"""The remote router: a store that posts what it is given to a running ``embedviz serve``.

``open_store("http://host:5006", token=...)`` returns a :class:`RemoteStore` (the seeds'
RemoteUIStatsStorageRouter, MLflow's tracking client). It only takes writes: ``write()``
checks the records, turns each into an export-format line carrying a sequence number, puts
the lines on a bounded queue and returns, never waiting on the network. A sender thread
posts the queue in batches (gzip JSON lines) to the server's ``POST /ingest``. While the
server cannot be reached, batches go to a spool on local disk, bounded (at the bound the
oldest reports are dropped and counted), sent oldest first once the server answers again
(W&B's offline mode and ``wandb sync`` in one); ``embedviz sync SPOOL`` sends a spool left
behind by a process that ended offline.

Every line carries ``"seq": "<stream>:<n>"`` (a random stream per RemoteStore, n counting
up), and the server stores each (session, worker, seq) once (:meth:`Store.write_once`), so
a retry never stores a record twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import http.client
import itertools
import json
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from embedviz.errors import EmbedvizError, InvalidRecordError, StoreError, StoreOpenError
from embedviz.records import Record, Session
from embedviz.store import codec
from embedviz.store.base import Store, check_records

log = logging.getLogger("embedviz.remote")

#: what one post may hold at most, compressed and decompressed (the server's limit: a record
#: longer than this cannot be sent)
MAX_POST_BYTES = 16 * 2**20
#: the most records one post may hold (the server's limit)
MAX_POST_RECORDS = 10_000
#: what the sender puts in one post: a few MB, so that a retry resends little
POST_BYTES = 2 * 2**20
POST_RECORDS = 2_000
#: the spool's bound (per RemoteStore) and the queue's, in bytes of JSON lines
SPOOL_BYTES = 512 * 2**20
QUEUE_BYTES = 64 * 2**20
#: seconds before a retry: doubling from BACKOFF up to MAX_BACKOFF, each with jitter
BACKOFF, MAX_BACKOFF = 0.5, 30.0
#: while the server is away, what arrives goes to the spool at least this often
SPILL_SECONDS = 1.0
#: a token: 16 to 4096 printable ASCII characters without spaces (it travels in a header)
_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")
#: lines never dropped at a bound: without its session a session's reports are refused
_KEPT = (b'{"type":"session"', b'{"type":"static"')
_SEGMENT = re.compile(r"[0-9]{12}\.jsonl")
MAKE_TOKEN = "python -c \"import secrets; print(secrets.token_urlsafe(32))\" > FILE"
READ_ONLY = ("a remote store only takes writes: open the server's store (its path or "
             "postgresql:// URL) to read, or open the app")


# ---------------------------------------------------------------------- token and URL
def check_token(token: Any, where: str = "the token") -> str:
    """``token`` if it is one (16 to 4096 printable ASCII characters, no spaces); raises
    StoreOpenError naming the way out (never the token)."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise StoreOpenError(
            f"{where} is not a token (not shown here): a token is 16 to 4096 printable ASCII "
            f"characters without spaces; make one with `{MAKE_TOKEN}` and give FILE to "
            "`embedviz serve --token-file FILE` and to the trainings (EMBEDVIZ_TOKEN_FILE=FILE)")
    return token


def read_token_file(path: str | os.PathLike) -> str:
    """The token held in file ``path`` (surrounding white space ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise StoreOpenError(f"cannot read the token file {os.fspath(path)}: {why}: name the "
                             f"file that holds the server's token (make one with "
                             f"`{MAKE_TOKEN}`)") from None
    return check_token(text.strip(), f"the token in {os.fspath(path)}")


def resolve_token(token: str | None = None) -> str:
    """``token``, else ``$EMBEDVIZ_TOKEN``, else the content of ``$EMBEDVIZ_TOKEN_FILE``."""
    if token is not None:
        return check_token(token, "token=")
    if os.environ.get("EMBEDVIZ_TOKEN"):
        return check_token(os.environ["EMBEDVIZ_TOKEN"].strip(), "$EMBEDVIZ_TOKEN")
    if os.environ.get("EMBEDVIZ_TOKEN_FILE"):
        return read_token_file(os.environ["EMBEDVIZ_TOKEN_FILE"])
    raise StoreOpenError("a remote store needs the server's token: pass token=..., or set "
                         "EMBEDVIZ_TOKEN, or EMBEDVIZ_TOKEN_FILE to the file given to "
                         "`embedviz serve --token-file FILE`")


def server_url(url: Any) -> str:
    """``url`` as the server's address ``http(s)://host:port[/prefix]``, checked."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreOpenError(f"{url!r} is not a server's address: write http://HOST:PORT, the "
                             "address `embedviz serve` prints")
    if parts.username is not None or parts.password is not None:
        # (the URL is the store's url: it is logged and passed around; never echo it here)
        raise StoreOpenError("a server's address holds no user name, password or token: "
                             "write http://HOST:PORT and pass the token as token=, "
                             "EMBEDVIZ_TOKEN or EMBEDVIZ_TOKEN_FILE")
    if parts.query or parts.fragment:
        raise StoreOpenError(f"{parts.scheme}://{parts.netloc}{parts.path}: a server's address "
                             "takes no ?query or #fragment (a token goes in token=, "
                             "EMBEDVIZ_TOKEN or EMBEDVIZ_TOKEN_FILE)")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise StoreOpenError(f"{url!r}: the port is not a number from 0 to 65535") from None
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def default_spool_root() -> Path:
    """``$XDG_CACHE_HOME/embedviz/spool`` (``~/.cache/embedviz/spool``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "embedviz" / "spool"


# ---------------------------------------------------------------------- the spool
class SpoolBusyError(StoreError):
    """A spool folder is in use by a running process (its RemoteStore, or a sync)."""


class Spool:
    """A folder of segment files of export lines (with their seq), sent oldest first and
    bounded in bytes: at the bound the oldest lines are dropped (``dropped`` counts them),
    sessions and static info excepted. The folder is made at the first :meth:`append`; a
    lock file held while it is open keeps a ``sync`` from sending it meanwhile. Thread-safe;
    ``close()`` is idempotent and removes the folder when nothing waits in it."""

    def __init__(self, folder: str | os.PathLike, limit: int = SPOOL_BYTES,
                 target: str = "") -> None:
        self.folder, self.limit, self.target = Path(folder), int(limit), target
        self.dropped = 0
        self._segments: dict[Path, tuple[int, int]] = {}  # oldest first: (records, bytes)
        self._next = 0
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._closed = False

    @classmethod
    def existing(cls, folder: str | os.PathLike) -> Spool:
        """The spool left in ``folder``, locked (SpoolBusyError: a live process has it)."""
        spool = cls(folder, limit=2**62)
        spool._take_lock()
        try:
            for p in spool.folder.glob(".*.jsonl.tmp"):  # (a segment cut short by a kill)
                p.unlink()
            names = sorted(p.name for p in spool.folder.iterdir() if _SEGMENT.fullmatch(p.name))
            for name in names:
                path = spool.folder / name
                data = path.read_bytes()
                spool._segments[path] = (data.count(b"\n"), len(data))
            spool._next = int(names[-1][:12]) + 1 if names else 0
            target = spool.folder / "target"
            spool.target = target.read_text(encoding="utf-8").strip() if target.exists() else ""
        except BaseException:
            spool.close()
            raise
        return spool

    @property
    def records(self) -> int:
        return sum(n for n, _ in self._segments.values())

    @property
    def size(self) -> int:
        return sum(b for _, b in self._segments.values())

    def __len__(self) -> int:
        return len(self._segments)

    def _take_lock(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusyError(f"the spool {self.folder} is in use by a running process (a "
                                 "training still sending it, or another sync): it sends its "
                                 "spool itself; sync it once that process has ended") from None
        self._fd = fd
        if self.target:
            (self.folder / "target").write_text(self.target + "\n", encoding="utf-8")

    def append(self, lines: list[bytes]) -> None:
        """Add ``lines`` as the newest segment, dropping the oldest lines beyond the bound."""
        if not lines:
            return
        with self._lock:
            if self._closed:
                raise StoreError(f"the spool {self.folder} is closed")
            if self._fd is None:
                self._take_lock()
            size = sum(len(line) + 1 for line in lines)
            lines = self._make_room(lines, size)
            path = self.folder / f"{self._next:012d}.jsonl"
            self._next += 1
            self._write(path, lines)

    def _write(self, path: Path, lines: list[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        tmp = path.with_name(f".{path.name}.tmp")
        # (renamed into place: a killed process leaves whole lines; this user's alone)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        self._segments[path] = (len(lines), len(data))

    def _make_room(self, lines: list[bytes], size: int) -> list[bytes]:
        for path in list(self._segments):
            if self.size + size <= self.limit:
                return lines
            kept = [line for line in self._read(path) if line.startswith(_KEPT)]
            self.dropped += self._segments[path][0] - len(kept)
            if kept:
                self._write(path, kept)
            else:
                path.unlink(missing_ok=True)
                del self._segments[path]
        room = self.limit - self.size
        if size > room:  # (the new lines alone pass the bound: their oldest go)
            out, used = [], 0
            for line in reversed(lines):
                if line.startswith(_KEPT) or used + len(line) + 1 <= room:
                    out.append(line)
                    used += len(line) + 1
                else:
                    self.dropped += 1
            lines = out[::-1]
        return lines

    def _read(self, path: Path) -> list[bytes]:
        return [line for line in path.read_bytes().split(b"\n") if line]

    def oldest(self) -> tuple[Path, list[bytes]] | None:
        """The oldest segment and its lines (None: nothing waits)."""
        with self._lock:
            for path in self._segments:
                return path, self._read(path)
            return None

    def done(self, path: Path, rest: list[bytes]) -> None:
        """Segment ``path`` was sent but for ``rest`` (its lines that still wait)."""
        with self._lock:
            if path not in self._segments:
                return
            if rest:
                self._write(path, rest)
            else:
                path.unlink(missing_ok=True)
                del self._segments[path]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd is None:
                return
            if not self._segments:  # (nothing waits: no folder left behind)
                for name in ("target", "lock"):
                    with contextlib.suppress(OSError):
                        (self.folder / name).unlink()
                with contextlib.suppress(OSError):
                    self.folder.rmdir()
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------------- posting
class _Poster:
    """One keep-alive HTTP(S) connection to the server's ``/ingest``."""

    def __init__(self, url: str, token: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.https = parts.hostname or "", parts.port, parts.scheme == "https"
        self.path = parts.path.rstrip("/") + "/ingest"
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}", "Content-Encoding": "gzip",
                         "Content-Type": "application/x-ndjson"}
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def post(self, lines: Sequence[bytes]) -> tuple[int, dict, float | None]:
        """(status, the reply's JSON, Retry-After seconds); raises OSError or HTTPException
        when no answer came."""
        body = gzip.compress(b"".join(line + b"\n" for line in lines), compresslevel=1, mtime=0)
        for attempt in (0, 1):
            with self._lock:
                fresh = self._conn is None
                if self._conn is None:
                    self._conn = (http.client.HTTPSConnection(
                        self.host, self.port, timeout=self.timeout,
                        context=ssl.create_default_context()) if self.https else
                        http.client.HTTPConnection(self.host, self.port, timeout=self.timeout))
                conn = self._conn
            try:
                conn.request("POST", self.path, body=body, headers=self._headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if fresh or attempt:
                    raise
                continue  # (a kept-alive connection the server had closed: once more, anew)
            if resp.will_close:
                self.close()
            try:
                reply = json.loads(data)
                reply = reply if isinstance(reply, dict) else {"error": str(reply)}
            except ValueError:
                reply = {"error": data[:300].decode("utf-8", "replace").strip() or resp.reason}
            try:
                after: float | None = float(resp.getheader("Retry-After") or "")
            except ValueError:
                after = None
            return resp.status, reply, after
        raise AssertionError("unreachable")

    def abort(self) -> None:
        """End a post in progress (from another thread): it raises OSError."""
        conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def chunks(lines: Sequence[bytes], records: int = POST_RECORDS,
           size: int = POST_BYTES) -> Iterator[list[bytes]]:
    """``lines`` in runs of at most ``records`` lines and ``size`` bytes (a longer line
    alone)."""
    out: list[bytes] = []
    used = 0
    for line in lines:
        if out and (len(out) >= records or used + len(line) + 1 > size):
            yield out
            out, used = [], 0
        out.append(line)
        used += len(line) + 1
    if out:
        yield out


@dataclass
class Courier:
    """Delivers lines to a server's ``/ingest`` and counts what became of them: ``written``
    (stored), ``duplicates`` (stored before: a retry), ``rejected`` (refused as bad by the
    server: logged once, never retried). ``error``: why the last :meth:`deliver` stopped."""

    url: str
    token: str = field(repr=False)
    timeout: float = 10.0
    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    error: str = ""
    retry_after: float | None = None
    #: the server refused the token, or takes no posts: retrying soon will not help
    refused: bool = False
    warn: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        self._poster = _Poster(self.url, self.token, self.timeout)
        self._warned: set[str] = set()

    @property
    def sent(self) -> int:
        return self.written + self.duplicates

    def deliver(self, lines: Sequence[bytes]) -> list[bytes]:
        """Post ``lines`` in order. Returns the lines the server could not take now (it could
        not be reached, was busy or failed, or refused the token), from the first of them;
        the others were stored, found stored already, or rejected."""
        self.error, self.retry_after, self.refused = "", None, False
        todo = deque(chunks(lines))
        while todo:
            chunk = todo.popleft()
            try:
                status, reply, after = self._poster.post(chunk)
            except (OSError, http.client.HTTPException) as exc:
                self.error = f"cannot reach {self.url}: {exc or type(exc).__name__}"
                return _flat(chunk, todo)
            reason = str(reply.get("error") or reply)[:500]
            if status == 200:
                written = _count(reply.get("written"), len(chunk))
                self.written += written
                self.duplicates += len(chunk) - written
            elif status == 413 and len(chunk) > 1:  # (too large: in halves)
                todo.appendleft(chunk[len(chunk) // 2:])
                todo.appendleft(chunk[:len(chunk) // 2])
            elif status in (400, 413, 415, 422):
                bad = {n for n in reply.get("lines") or () if isinstance(n, int)
                       and 1 <= n <= len(chunk)}
                if not bad or len(bad) >= len(chunk):
                    bad = set(range(1, len(chunk) + 1))
                else:  # (the server named the bad lines: the others go again)
                    todo.appendleft([line for i, line in enumerate(chunk, 1) if i not in bad])
                self.rejected += len(bad)
                self._warn(f"rejected:{status}", f"the server at {self.url} rejected {len(bad)} "
                           f"record(s) ({status}): {reason}; they are not sent again")
            elif status in (408, 429) or status >= 500:
                self.error = f"the server at {self.url} could not take the post ({status}): {reason}"
                self.retry_after = after
                return _flat(chunk, todo)
            else:  # (a wrong token, no ingest there, a redirect: kept until that is fixed)
                self.refused = True
                self.error = f"the server at {self.url} refused the post ({status}): {reason}"
                self._warn(f"refused:{status}", self.error + "; the records wait in the spool")
                return _flat(chunk, todo)
        return []

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            log.debug("embedviz remote: %s", message)
            return
        self._warned.add(kind)
        if self.warn is not None:
            self.warn(kind, message)
        else:
            log.warning("embedviz remote: %s", message)

    def abort(self) -> None:
        self._poster.abort()

    def close(self) -> None:
        self._poster.close()


def _sync_warning(kind: str, message: str) -> None:
    """(A refusal ends `embedviz sync` with an error saying the same: not said twice.)"""
    if not kind.startswith("refused"):
        log.warning("embedviz sync: %s", message)


def _flat(first: list[bytes], rest: Iterable[list[bytes]]) -> list[bytes]:
    return first + [line for c in rest for line in c]


def _count(value: Any, most: int) -> int:
    return min(max(value, 0), most) if isinstance(value, int) and not isinstance(value, bool) else most


# ---------------------------------------------------------------------- the store
#: remote stores not closed yet: closed at interpreter exit (what waits is sent, or spooled)
#: by close_at_exit, which ``import embedviz`` registers (before any listener's sink, so it
#: runs after them: atexit runs the last registered first, and a sink flushes into its store)
_OPEN: weakref.WeakSet = weakref.WeakSet()


def close_at_exit() -> None:
    for store in list(_OPEN):
        if store._pid == os.getpid():
            store.close()


class RemoteStore(Store):
    """A store that posts the records written to it to ``embedviz serve`` at ``url``
    (module doc). Only writes: every read raises an EmbedvizError naming the way out.

    ``token``: the server's token (default ``$EMBEDVIZ_TOKEN``, else the file
    ``$EMBEDVIZ_TOKEN_FILE``); it is never put in :attr:`url` or logged. ``spool``: the
    folder under which this store's spool folder (:attr:`spool_path`) is made while the
    server cannot be reached (default ``~/.cache/embedviz/spool``); ``spool_bytes``,
    ``queue_bytes``: their bounds. ``timeout``: seconds a post may take; ``close_timeout``:
    what :meth:`close` waits for the last records to be delivered.

    Counters: ``sent`` (acknowledged by the server: ``written`` and ``duplicates``),
    ``spooled`` (went to the spool), ``dropped`` (lost at a bound), ``rejected`` (refused
    by the server as bad); ``waiting``: queued or spooled now.
    """

    readonly = False

    def __init__(self, url: str, token: str | None = None, *,
                 spool: str | os.PathLike | None = None, spool_bytes: int = SPOOL_BYTES,
                 queue_bytes: int = QUEUE_BYTES, timeout: float = 10.0,
                 close_timeout: float = 10.0) -> None:
        self.url = server_url(url)
        for name, n in (("spool_bytes", spool_bytes), ("queue_bytes", queue_bytes)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 2**16:
                raise StoreOpenError(f"{name} must be a number of bytes >= 65536 (got {n!r})")
        for name, t in (("timeout", timeout), ("close_timeout", close_timeout)):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
                raise StoreOpenError(f"{name} must be a number of seconds > 0 (got {t!r})")
        #: this object's stream: its records' seqs are "<stream>:<n>"
        self.stream = secrets.token_hex(8)
        root = Path(spool).expanduser() if spool is not None else default_spool_root()
        self.spool = Spool(root / self.stream, spool_bytes, self.url)
        self.queue_bytes, self.close_timeout = queue_bytes, float(close_timeout)
        self._courier = Courier(self.url, resolve_token(token), float(timeout), warn=self._warn)
        self.spooled = 0
        self._dropped = 0  # (at the queue's bound; the spool counts its own)
        self._seq = itertools.count()
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = 0.0
        self._next_try = 0.0  # (monotonic) no post before: the server did not answer
        self._failures = 0
        self._oldest = 0.0  # when the oldest line queued was queued
        self._warned: set[str] = set()
        self._pid = os.getpid()
        _OPEN.add(self)

    # ---------------------------------------------------------------- counters
    @property
    def sent(self) -> int:
        return self._courier.sent

    @property
    def written(self) -> int:
        return self._courier.written

    @property
    def duplicates(self) -> int:
        return self._courier.duplicates

    @property
    def rejected(self) -> int:
        return self._courier.rejected

    @property
    def dropped(self) -> int:
        return self._dropped + self.spool.dropped

    @property
    def waiting(self) -> int:
        """Records queued or in the spool, not delivered yet."""
        return len(self._queue) + self.spool.records

    @property
    def spool_path(self) -> str:
        """This store's spool folder (it exists while records wait in it)."""
        return str(self.spool.folder)

    def counts(self) -> dict[str, int]:
        return {"sent": self.sent, "written": self.written, "duplicates": self.duplicates,
                "spooled": self.spooled, "dropped": self.dropped, "rejected": self.rejected,
                "waiting": self.waiting}

    # ---------------------------------------------------------------- writing
    def write(self, records: Iterable[Record]) -> None:
        """Queue a batch of records for the server (checked here as far as possible without
        reading: the server checks that their sessions exist). Never waits on the network."""
        batch = _checked(records)
        self._put([self._line(r, f"{self.stream}:{next(self._seq)}") for r in batch])

    def write_once(self, records: Iterable[Record], seqs: Sequence[str | None]) -> int:
        """Queue records with the receipts' ``seqs`` of :meth:`Store.write_once` (None: no
        receipt); the server skips those it stored before. Returns the number queued (what
        the server made of them shows in the counters later)."""
        batch = _checked(records)
        seqs = list(seqs)
        if len(seqs) != len(batch) or not all(s is None or (isinstance(s, str) and 0 < len(s) <= 200)
                                              for s in seqs):
            raise InvalidRecordError(f"write_once needs one seq (a string of 1 to 200 characters,"
                                     f" or None) per record (got {len(seqs)} for {len(batch)})")
        self._put([self._line(r, s) for r, s in zip(batch, seqs)])
        return len(batch)

    def create_session(self, session_id: str | None = None, *, name: str | None = None,
                       tags: dict | None = None, info: dict | None = None) -> Session:
        """Queue a session (the server keeps one stored already, its name and tags
        updated); returns it."""
        session = (Session(name=name, tags=tags or {}, info=info or {}) if session_id is None
                   else Session(id=session_id, name=name, tags=tags or {}, info=info or {}))
        self.write([session])
        return session

    def _line(self, record: Record, seq: str | None) -> bytes:
        d = record.to_dict()
        if seq is not None:
            d["seq"] = seq
        line = codec.dumps(d).encode("utf-8", "surrogatepass")
        if len(line) + 1 > MAX_POST_BYTES:
            raise InvalidRecordError(
                f"this {d['type']} record is {len(line) / 2**20:.1f} MB as JSON, beyond the "
                f"{MAX_POST_BYTES // 2**20} MB a post to the server may hold: store it "
                "straight into the server's store (open_store with its path or URL), or make "
                "it smaller (fewer rows or dimensions)")
        return line

    def _put(self, lines: list[bytes]) -> None:
        size = sum(len(line) for line in lines)
        with self._cond:
            if self._closing:
                raise StoreError(f"this remote store ({self.url}) is closed: open a new one")
            while self._queue and self._queued + size > self.queue_bytes:
                if not self._drop_oldest():
                    break  # (only sessions and static info queued: they pass the bound)
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.extend(lines)
            self._queued += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="embedviz-remote")
                self._thread.start()
            self._cond.notify()

    def _drop_oldest(self) -> bool:
        """(With the lock.) Drop the oldest line queued, sessions and static info kept;
        False if there is none to drop."""
        for i, line in enumerate(self._queue):
            if not line.startswith(_KEPT):
                del self._queue[i]
                self._queued -= len(line)
                self._dropped += 1
                self._warn("queue", f"the queue for {self.url} is full ({self.queue_bytes // 2**20}"
                           " MB): dropping the oldest records")
                return True
        return False

    def _take(self, everything: bool = False) -> list[bytes]:
        """(With the lock.) A post's worth of the queue (``everything``: all of it)."""
        out: list[bytes] = []
        used = 0
        while self._queue:
            line = self._queue[0]
            if out and not everything and (len(out) >= POST_RECORDS
                                           or used + len(line) + 1 > POST_BYTES):
                break
            out.append(self._queue.popleft())
            used += len(line) + 1
            self._queued -= len(line)
        self._oldest = time.monotonic()
        return out

    # ---------------------------------------------------------------- the sender thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while (wait := self._wait()) is not None and wait > 0:
                    self._cond.wait(wait)
                if wait is None:
                    return
                closing, deadline = self._closing, self._deadline
                now = time.monotonic()
                if closing and now >= deadline:  # (time is up: what is left goes to the spool)
                    self._spill(self._take(everything=True))
                    return
                online = now >= self._next_try
                batch = self._take(everything=not online)
            try:
                if online and len(self.spool) and not self._send_spool():
                    online = False
                if not batch:
                    continue
                rest = self._courier.deliver(batch) if online else batch
                if online:
                    self._answered(not rest)
                self._spill(rest)
            except Exception as exc:  # (a bug must not stop the sending: the batch is kept)
                self._warn(f"bug:{type(exc).__name__}", "the sender failed; retrying", exc)
                self._answered(False)
                self._spill(batch)

    def _wait(self) -> float | None:
        """(With the lock.) Seconds to wait before there is work (0: now; None: the store
        is closing and nothing is left: the thread ends)."""
        now = time.monotonic()
        pending = bool(self._queue) or bool(len(self.spool))
        if self._closing:
            if not pending:
                return None
            return max(0.0, min(self._next_try, self._deadline) - now)
        if now >= self._next_try:
            return 0.0 if self._queue or len(self.spool) else 3600.0
        if self._queue:  # (the server is away: the queue goes to the spool every second)
            return max(0.0, min(self._next_try, self._oldest + SPILL_SECONDS) - now)
        return self._next_try - now

    def _send_spool(self) -> bool:
        """Send the spool, oldest segment first; False when the server stopped taking it."""
        while (got := self.spool.oldest()) is not None:
            path, lines = got
            rest = self._courier.deliver(lines)
            self.spool.done(path, rest)
            self._answered(not rest)
            if rest:
                return False
        return True

    def _answered(self, ok: bool) -> None:
        """After a delivery: ``ok`` resets the backoff, else the next try waits (doubling
        from BACKOFF, with jitter; at most a second while closing)."""
        with self._cond:
            if ok:
                self._failures, self._next_try = 0, 0.0
                return
            self._failures += 1
            delay = min(MAX_BACKOFF, BACKOFF * 2 ** min(self._failures - 1, 16))
            delay *= random.uniform(0.5, 1.0)
            if self._courier.retry_after:
                delay = max(delay, min(self._courier.retry_after, MAX_BACKOFF))
            if self._closing:
                delay = min(delay, 1.0)
                if self._failures >= 3:  # (closing: the server is away; do not wait it out)
                    self._deadline = min(self._deadline, time.monotonic())
            self._next_try = time.monotonic() + delay
            why = self._courier.error or "it did not answer"
        self._warn("offline", f"{why}; records wait in the spool {self.spool_path} and are sent "
                   "once the server answers")

    def _spill(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            self.spool.append(lines)
            self.spooled += len(lines)
        except (OSError, StoreError) as exc:
            self._dropped += len(lines)
            self._warn("spool", f"cannot write the spool {self.spool_path} ({exc}): "
                       f"{len(lines)} record(s) are lost; pass spool= a writable folder")

    def _warn(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("embedviz remote: %s", message, exc_info=exc)

    # ---------------------------------------------------------------- closing
    def close(self, timeout: float | None = None) -> None:
        """Deliver what waits, for at most ``timeout`` seconds (default ``close_timeout``;
        less when the server does not answer); what is left stays in the spool, and a
        warning says how to send it (``embedviz sync``). Idempotent."""
        timeout = self.close_timeout if timeout is None else float(timeout)
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout
            thread = self._thread
            self._cond.notify_all()
        _OPEN.discard(self)
        if thread is not None:
            thread.join(timeout + 0.5)
            if thread.is_alive():  # (stuck in a post: end it; the thread spools its batch)
                self._courier.abort()
                thread.join(5.0)
        with self._cond:
            left = self._take(everything=True)
        self._spill(left)  # (a thread stuck beyond all that: what it had not taken)
        self._courier.close()
        waiting = self.spool.records
        self.spool.close()
        if waiting:
            log.warning("embedviz remote: %d record(s) could not be delivered to %s; they wait "
                        "in %s: `embedviz sync %s --to %s` sends them", waiting, self.url,
                        self.spool_path, self.spool_path, self.url)
        if self.dropped or self.rejected:
            log.warning("embedviz remote: %d record(s) were dropped at a bound and %d rejected "
                        "by the server", self.dropped, self.rejected)

    # ---------------------------------------------------------------- reads: none
    def _write(self, records: list[Record],
               receipts: list[tuple[str, str, str] | None] | None = None) -> int:
        seqs = [None if q is None else q[2] for q in receipts] if receipts else None
        self._put([self._line(r, f"{self.stream}:{next(self._seq)}" if seqs is None else seqs[i])
                   for i, r in enumerate(records)])
        return len(records)

    def _session_ids(self, ids: set[str]) -> set[str]:
        _read_only()

    def _session(self, session_id: str) -> Any:
        _read_only()

    def _sessions(self) -> Any:
        _read_only()

    def _worker_names(self, session: str) -> Any:
        _read_only()

    def _static(self, session: str, worker: str) -> Any:
        _read_only()

    def _series_keys(self, session: str, worker: str) -> Any:
        _read_only()

    def _read_series(self, *args: Any) -> Any:
        _read_only()

    def _changes(self) -> int:
        _read_only()

    def _read_histograms(self, *args: Any) -> Any:
        _read_only()

    def _findings(self, session: str | None, since: int) -> Any:
        _read_only()

    def _has_embedding(self, key: str) -> bool:
        _read_only()

    def _embeddings(self, session: str | None) -> Any:
        _read_only()

    def _embedding(self, key: str) -> Any:
        _read_only()

    def _projections(self, embedding: str | None) -> Any:
        _read_only()

    def _projection(self, projection_id: str) -> Any:
        _read_only()

    def _iter_records(self, session: str | None) -> Any:
        _read_only()

    def _iteration_index(self, session: str, worker: str) -> Any:
        _read_only()


def _read_only() -> NoReturn:
    raise StoreError(READ_ONLY)


def _checked(records: Iterable[Record]) -> list[Record]:
    """The records, checked as :meth:`Store.write` checks them before it reads the store."""
    batch = list(records)
    check_records(batch)
    return batch


# ---------------------------------------------------------------------- sync
@dataclass
class SyncReport:
    """What :func:`sync` did: records ``written``, ``duplicates`` (stored before),
    ``rejected``; spool folders ``synced`` and ``busy`` (in use by a live process, left)."""

    written: int = 0
    duplicates: int = 0
    rejected: int = 0
    total: int = 0
    synced: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)


def spool_folders(path: str | os.PathLike) -> list[Path]:
    """The spool folders at ``path``: itself if it is one, else those under it."""
    root = Path(path)
    if not root.is_dir():
        raise EmbedvizError(f"no spool at {root}: name the folder a closing training printed "
                            f"(`embedviz sync FOLDER --to URL`), or {default_spool_root()}")

    def is_spool(p: Path) -> bool:
        return (p / "lock").exists() or (p / "target").exists() or any(
            _SEGMENT.fullmatch(c.name) for c in p.iterdir())

    if is_spool(root):
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_dir() and is_spool(p))


def sync(path: str | os.PathLike, url: str | None = None, token: str | None = None, *,
         timeout: float = 30.0, attempts: int = 4,
         progress: Callable[[int, int], None] | None = None) -> SyncReport:
    """Send the spool(s) at ``path`` (a spool folder, or a folder holding several) to the
    server at ``url`` (default: the one each spool was meant for), oldest first, removing
    what was delivered. ``progress(done, total)`` is called as records go. A server that
    cannot be reached is tried ``attempts`` times (with backoff), then EmbedvizError: what
    was not sent stays. Exactly once: the server skips records it stored before."""
    folders = spool_folders(path)
    report = SyncReport()
    spools: list[Spool] = []
    try:
        for folder in folders:
            try:
                spools.append(Spool.existing(folder))
            except SpoolBusyError:
                report.busy.append(str(folder))
        report.total = sum(s.records for s in spools)
        done = 0
        couriers: dict[str, Courier] = {}
        for spool in spools:
            target = server_url(url) if url else spool.target
            if not target:
                raise EmbedvizError(f"the spool {spool.folder} does not say which server it was "
                                    "meant for: pass --to URL")
            if target not in couriers:
                couriers[target] = Courier(target, resolve_token(token), timeout,
                                           warn=_sync_warning)
            courier = couriers[target]
            while (got := spool.oldest()) is not None:
                seg, lines = got
                for attempt in range(attempts):
                    rest = courier.deliver(lines)
                    sent = len(lines) - len(rest)
                    done += sent
                    spool.done(seg, rest)
                    if progress is not None and sent:
                        progress(done, report.total)
                    if not rest:
                        break
                    if courier.refused:
                        raise EmbedvizError(f"{courier.error}: pass the server's token "
                                            "(--token-file FILE, or EMBEDVIZ_TOKEN); "
                                            f"{spool.records} record(s) still wait in "
                                            f"{spool.folder}")
                    lines = rest
                    if attempt + 1 < attempts:
                        time.sleep(min(MAX_BACKOFF, BACKOFF * 4 ** attempt)
                                   * random.uniform(0.5, 1.0))
                else:
                    raise EmbedvizError(f"{courier.error}; {spool.records} record(s) still "
                                        f"wait in {spool.folder}: run `embedviz sync` again "
                                        "once the server answers")
            report.synced.append(str(spool.folder))
        for c in couriers.values():
            report.written += c.written
            report.duplicates += c.duplicates
            report.rejected += c.rejected
            c.close()
    finally:
        for spool in spools:
            spool.close()
    return report


__all__ = ["MAX_POST_BYTES", "MAX_POST_RECORDS", "Courier", "RemoteStore", "Spool",
           "SpoolBusyError", "SyncReport", "check_token", "default_spool_root",
           "read_token_file", "resolve_token", "server_url", "spool_folders", "sync"]

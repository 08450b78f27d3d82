"""The ingest endpoint: ``POST /ingest`` on ``embedviz serve``, where the remote stores of
training machines (embedviz.store.remote) post their records.

A Tornado handler beside the Bokeh app, on the same port. ``embedviz serve STORE
--token-file FILE`` enables it; there is no default token. Every post needs
``Authorization: Bearer <token>`` (compared in constant time) and a Content-Length; its body
is the export format's JSON lines (``Content-Encoding: gzip`` accepted), each line with an
optional ``"seq"`` (the receipt of :meth:`Store.write_once`). A post is stored whole (one
``write_once``) or not at all; anything malformed gets a 4xx with a JSON reason naming its
lines (``{"error": ..., "line": n, "lines": [...]}``), never a 5xx. The reply to a good
post: ``{"written": n, "duplicates": m}``. Parsing and writing run on the app's one writer
thread, off the event loop; bodies held at once are bounded (beyond: 429, retry).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tornado.ioloop import IOLoop
from tornado.web import RequestHandler, stream_request_body

from embedviz.errors import InvalidRecordError, UnknownSessionError
from embedviz.records import EmbeddingSet, Projection, Record, Session, Update, record_from_dict
from embedviz.store import codec
from embedviz.store.remote import MAKE_TOKEN, MAX_POST_BYTES, MAX_POST_RECORDS

log = logging.getLogger("embedviz.server")

#: a \u escape of a NUL or a surrogate (a pair is fine; the strings are then checked)
_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
DISABLED = ("this server takes no posts: it was started without a token; restart it as "
            "`embedviz serve STORE --token-file FILE` (FILE holds a secret of at least 16 "
            f"characters: `{MAKE_TOKEN}`), and give the trainings the same token")


@dataclass(frozen=True)
class Limits:
    """What one post may hold. ``body_bytes``: compressed and decompressed; ``bins``: per
    histogram (the listener's most); ``depth``: JSON nesting of a line; ``containers`` and
    ``values``: JSON objects and arrays, and commas, in a post (they bound the memory its
    parsed form takes); ``held_bytes``: bodies held at once by the server (more: 429)."""

    body_bytes: int = MAX_POST_BYTES
    records: int = MAX_POST_RECORDS
    bins: int = 10_000
    depth: int = 32
    containers: int = 200_000
    values: int = 1_000_000
    held_bytes: int = 128 * 2**20


class Rejected(Exception):
    """A post refused: ``status`` (4xx), ``reason``, the 1-based ``lines`` at fault."""

    def __init__(self, status: int, reason: str, lines: Sequence[int] = ()) -> None:
        super().__init__(reason)
        self.status, self.reason, self.lines = status, reason, list(lines)

    def reply(self) -> dict:
        return {"error": self.reason, "line": self.lines[0] if self.lines else None,
                "lines": self.lines}


class Ingest:
    """The endpoint's settings: ``token`` (None: posts are refused, saying how to enable
    them), ``limits``, and the path of the app whose store takes the posts. ``held``: the
    bytes of bodies held now (touched on the event loop only)."""

    def __init__(self, token: str | None, limits: Limits | None = None,
                 app_path: str = "/") -> None:
        self.token = None if token is None else token.encode("ascii")
        self.limits = limits or Limits()
        self.app_path = app_path
        self.held = 0


# ---------------------------------------------------------------------- parsing
def decode_body(body: bytes, encoding: str, limits: Limits) -> str:
    """The post's text: gunzipped (``encoding`` "gzip") within the limit, UTF-8."""
    enc = encoding.strip().lower()
    mb = limits.body_bytes / 2**20
    if enc == "gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = d.decompress(body, limits.body_bytes + 1)  # (a gzip bomb stops here)
        except zlib.error as exc:
            raise Rejected(400, f"the body is not gzip data ({exc}): send it gzip-compressed, "
                           "or without Content-Encoding") from None
        if len(raw) > limits.body_bytes:
            raise Rejected(413, f"the body decompresses to more than {mb:g} MB: send fewer "
                           "records per post")
        if not d.eof:
            raise Rejected(400, "the gzip data ends early: the body was cut short")
        if d.unused_data:
            raise Rejected(400, "data follows the end of the gzip data: send one gzip stream")
        body = raw
    elif body[:2] == b"\x1f\x8b":
        raise Rejected(400, "the body is gzip data: send it with `Content-Encoding: gzip`")
    elif enc not in ("", "identity"):
        raise Rejected(415, f"Content-Encoding {encoding[:40]!r} is not taken: send gzip, or "
                       "no Content-Encoding")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise Rejected(400, f"line {line} is not UTF-8 (byte {exc.start} of the body): send "
                       "the export format's UTF-8 JSON lines", [line]) from None


def parse_post(text: str, limits: Limits) -> tuple[list[Record], list[str | None], list[int]]:
    """The records of a post's JSON lines, their seqs and line numbers; Rejected (naming
    every bad line, the first one's reason) if any line is not a good record."""
    if text.count("{") + text.count("[") > limits.containers or text.count(",") > limits.values:
        raise Rejected(413, f"the post holds more than {limits.containers} JSON objects and "
                       f"arrays or {limits.values} values: send fewer records per post")
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if len(lines) > limits.records:
        raise Rejected(413, f"the post holds {len(lines)} records: at most {limits.records} "
                       "are taken in one post")
    records: list[Record] = []
    seqs: list[str | None] = []
    numbers: list[int] = []
    bad: list[tuple[int, str]] = []
    for n, line in lines:
        try:
            record, seq = _parse_line(line, limits)
        except Rejected as exc:
            bad.append((n, exc.reason))
            continue
        records.append(record)
        seqs.append(seq)
        numbers.append(n)
    if bad:
        more = f" ({len(bad) - 1} more bad line(s))" if len(bad) > 1 else ""
        raise Rejected(400, f"line {bad[0][0]}: {bad[0][1]}{more}; nothing of this post was "
                       "stored", [n for n, _ in bad])
    return records, seqs, numbers


def _parse_line(line: str, limits: Limits) -> tuple[Record, str | None]:
    try:
        obj = codec.loads(line)
    except RecursionError:
        raise Rejected(400, f"JSON nested deeper than {limits.depth} levels") from None
    except Exception as exc:  # (the codec's $array and $float forms raise several kinds)
        raise Rejected(400, f"not a line of the export format ({type(exc).__name__}: "
                       f"{str(exc)[:200]}): send one JSON object a line, as `embedviz export` "
                       "writes them") from None
    if not isinstance(obj, dict):
        raise Rejected(400, f"a line must be a JSON object (got a {type(obj).__name__})")
    seq = obj.pop("seq", None)
    if seq is not None and (not isinstance(seq, str) or not 0 < len(seq) <= 200):
        raise Rejected(400, f"seq must be a string of 1 to 200 characters or absent (got a "
                       f"{type(seq).__name__})")
    if seq is None:  # (an export's line, posted as is: the same line twice is stored once)
        seq = "line:" + hashlib.sha256(line.strip().encode("utf-8", "surrogatepass")).hexdigest()[:40]
    why = _scan(obj, line, limits.depth)
    if why:
        raise Rejected(400, why)
    try:
        record = record_from_dict(obj)
    except Exception as exc:  # (the records' own checks; a few raise other than InvalidRecordError)
        raise Rejected(400, str(exc)[:500] or type(exc).__name__) from None
    if isinstance(record, Update):
        for key, s in record.summaries.items():
            if s.histogram is not None and len(s.histogram.counts) > limits.bins:
                raise Rejected(400, f"summaries[{key!r}] has a histogram of "
                               f"{len(s.histogram.counts)} bins: at most {limits.bins} are taken")
    return record, seq


def _scan(obj: Any, line: str, depth: int) -> str:
    """Why the parsed line cannot be stored as it is ("" if it can): nested too deeply, or a
    string (or key) with a NUL or a lone surrogate, which the stores cannot hold."""
    # (strict JSON of strict UTF-8 holds those only as \\u escapes: the strings are looked
    # at only where the line has such an escape)
    strings = _SUSPECT.search(line) is not None
    stack = [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if strings and isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return "a string holds a lone surrogate (\\ud800-\\udfff): send valid Unicode"
            if "\x00" in value:
                return "a string holds a NUL character (\\u0000), which the stores cannot hold"
        elif isinstance(value, (dict, list)):
            if level > depth:
                return f"JSON nested deeper than {depth} levels"
            items = value.values() if isinstance(value, dict) else value
            if strings and isinstance(value, dict):
                stack.extend((k, level) for k in value)
            stack.extend((v, level + 1) for v in items if strings or isinstance(
                v, (dict, list, np.ndarray)))
        elif isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
            return f"an $array of dtype {value.dtype} is not taken: send numbers"
    return ""


def store_post(store: Any, records: list[Record], seqs: list[str | None],
               numbers: list[int]) -> dict:
    """Write a parsed post in one ``write_once``; the reply. Rejected if the store refuses
    its records (unknown sessions: 422, naming their lines); other errors pass up."""
    try:
        written = store.write_once(records, seqs)
    except UnknownSessionError as exc:
        raise Rejected(422, f"{exc}; nothing of this post was stored (a session's record must "
                       "come first, in this post or an earlier one)",
                       _unknown(store, records, numbers)) from None
    except InvalidRecordError as exc:
        raise Rejected(400, f"{exc}; nothing of this post was stored") from None
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        # (data the records' checks let through but the store cannot hold)
        raise Rejected(400, f"the store cannot hold a record of this post ({type(exc).__name__}:"
                       f" {str(exc)[:300]}); nothing of it was stored") from None
    return {"written": int(written), "duplicates": len(records) - int(written)}


def _unknown(store: Any, records: list[Record], numbers: list[int]) -> list[int]:
    """The lines of records whose session (or embedding set) is neither in the post nor in
    the store."""
    created = {r.id for r in records if isinstance(r, Session)}
    wanted = {r.session for r in records if not isinstance(r, (Session, Projection))
              and r.session is not None} - created
    try:
        missing = wanted - store._session_ids(wanted)
    except Exception:
        missing = wanted
    keys = {r.key for r in records if isinstance(r, EmbeddingSet)}
    known: dict[str, bool] = {}
    out = []
    for r, n in zip(records, numbers):
        if isinstance(r, Projection):
            if r.embedding not in keys and r.embedding not in known:
                try:
                    known[r.embedding] = bool(store._has_embedding(r.embedding))
                except Exception:
                    known[r.embedding] = False
            if r.embedding not in keys and not known[r.embedding]:
                out.append(n)
        elif not isinstance(r, Session) and r.session in missing:
            out.append(n)
    return out


def handle_post(store: Any, body: bytes, encoding: str, limits: Limits) -> dict:
    """A post's body to the store (on the writer thread): the reply, or Rejected."""
    records, seqs, numbers = parse_post(decode_body(body, encoding, limits), limits)
    return store_post(store, records, seqs, numbers)


# ---------------------------------------------------------------------- the handler
@stream_request_body
class IngestHandler(RequestHandler):
    """``POST /ingest`` (module doc). Auth and sizes are checked before the body is read."""

    def initialize(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self._chunks: list[bytes] = []
        self._held = 0

    def _request_summary(self) -> str:
        """The access log's line: the path without its query (a token put there by mistake
        must not land in the log)."""
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def check_xsrf_cookie(self) -> None:
        """(A token authenticates a post, not a cookie: no page can send it.)"""

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        ingest, limits = self.ingest, self.ingest.limits
        if ingest.token is None:
            return self._reply(403, {"error": DISABLED})
        scheme, _, given = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            self.set_header("WWW-Authenticate", 'Bearer realm="embedviz"')
            return self._reply(401, {"error": "no token: send the server's token as "
                                     "`Authorization: Bearer TOKEN` (open_store(URL, token=...),"
                                     " or EMBEDVIZ_TOKEN_FILE, does)"})
        if not hmac.compare_digest(given.strip().encode("latin-1", "replace"), ingest.token):
            self.set_header("WWW-Authenticate", 'Bearer realm="embedviz", error="invalid_token"')
            return self._reply(401, {"error": "wrong token: pass the token in the file given to "
                                     "`embedviz serve --token-file`"})
        length = self.request.headers.get("Content-Length")
        if length is None:
            return self._reply(411, {"error": "send a Content-Length (a body in one piece, not "
                                     "chunked)"})
        if not (length.strip().isascii() and length.strip().isdigit()):  # (prepare runs
            # before Tornado reads the body and checks it)
            return self._reply(400, {"error": f"Content-Length {length[:40]!r} is not a "
                                     "number of bytes"})
        size = int(length)
        if size > limits.body_bytes:
            return self._reply(413, {"error": f"the body is {size} bytes: at most "
                                     f"{limits.body_bytes} are taken in one post; send fewer "
                                     "records per post"})
        if ingest.held + size > limits.held_bytes:
            self.set_header("Retry-After", "1")
            return self._reply(429, {"error": "the server is busy writing other posts: retry "
                                     "in a second"})
        ingest.held += size
        self._held = size

    def data_received(self, chunk: bytes) -> None:
        if not self._finished:
            self._chunks.append(chunk)

    async def post(self) -> None:
        body, self._chunks = b"".join(self._chunks), []
        state = self._state()
        if state is None:
            self.set_header("Retry-After", "1")
            return self._reply(503, {"error": "the server is starting: retry in a second"})
        if getattr(state.store, "readonly", False):
            return self._reply(403, {"error": "the server's store is read-only (opened with "
                                     "?readonly=1): serve it writable to take posts"})
        encoding = self.request.headers.get("Content-Encoding", "")
        try:
            reply = await IOLoop.current().run_in_executor(
                state.ingest_writer(), handle_post, state.store, body, encoding,
                self.ingest.limits)
        except Rejected as exc:
            return self._reply(exc.status, exc.reply())
        except Exception as exc:  # (the store failed, not the post: the client retries)
            log.exception("embedviz ingest: the store could not take a post")
            self.set_header("Retry-After", "2")
            return self._reply(503, {"error": f"the store failed ({type(exc).__name__}); the "
                                     "post was not stored: retry later (the server's log says "
                                     "why)"})
        finally:
            self._release()
        self._reply(200, reply)

    def get(self) -> None:
        self.set_header("Allow", "POST")
        self._reply(405, {"error": "POST the export format's JSON lines here, with the "
                          "server's token (open_store('http://HOST:PORT', token=...) does)"})

    def _state(self) -> Any:
        apps = getattr(self.application, "applications", {})
        ctx = apps.get(self.ingest.app_path)
        return getattr(getattr(ctx, "server_context", None), "embedviz", None)

    def _reply(self, status: int, payload: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload, ensure_ascii=False))

    def _release(self) -> None:
        self.ingest.held -= self._held
        self._held = 0

    def on_finish(self) -> None:
        self._release()

    def on_connection_close(self) -> None:
        self._chunks = []
        self._release()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": self._reason or "error"}))


__all__ = ["DISABLED", "Ingest", "IngestHandler", "Limits", "Rejected", "decode_body",
           "handle_post", "parse_post", "store_post"]

"""The export format, JSON lines: reading a file into a store (:func:`import_jsonl`) and one
line into a record (:func:`parse_line`, which the server's ingest endpoint shares).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from embedviz.errors import ImportFormatError
from embedviz.records import (
    RECORD_TYPES,
    EmbeddingSet,
    Finding,
    Metric,
    Projection,
    Record,
    Session,
    Static,
    Update,
    record_from_dict,
)
from embedviz.store import codec
from embedviz.store.base import ImportReport, Store, _fingerprint

_TYPE_NAMES = {cls: name for name, cls in RECORD_TYPES.items()}


def parse_line(raw: bytes) -> Record:
    """One line of an export as its record; raises ValueError naming what is wrong."""
    try:
        data = codec.loads(raw.decode("utf-8"))
        if isinstance(data, dict):
            data.pop("seq", None)  # (a spool's line: the export format and its sequence)
        return record_from_dict(data)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if isinstance(exc, UnicodeDecodeError):
            reason = f"not UTF-8 ({exc}): is this a file from `embedviz export`?"
        elif isinstance(exc, RecursionError):
            reason = "JSON nested too deeply"
        else:
            reason = str(exc) or type(exc).__name__
        if not raw.endswith(b"\n"):  # what a killed exporter leaves behind
            reason = "truncated last line: " + reason
        raise ValueError(reason) from None


def import_jsonl(store: Store, source: str | os.PathLike, *, skip_bad: bool = False) -> ImportReport:
    """:meth:`Store.import_jsonl` (its docstring says what it does)."""
    report = ImportReport()
    parsed: list[tuple[int, Record]] = []

    def bad(lineno: int, reason: str, what: str) -> None:
        if not skip_bad:
            raise ImportFormatError(
                f"{source}: line {lineno} is {what} ({reason}); nothing was imported. Fix "
                "or delete that line, or pass --skip-bad to import every other line",
                line=lineno, path=str(source)) from None
        report.bad_lines.append((lineno, reason))

    with open(source, "rb") as f:  # (decoded a line at a time: a bad byte names its line)
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                parsed.append((lineno, parse_line(raw)))
            except ValueError as exc:
                bad(lineno, str(exc), "malformed")
    parsed = linked(store, parsed, bad)
    report.bad_lines.sort()
    _import(store, [r for _, r in parsed], report)
    return report



def linked(store: Store, parsed: list[tuple[int, Record]],
           bad: Callable[[int, str, str], None]) -> list[tuple[int, Record]]:
    """The parsed lines whose session (and, for a projection, embedding set) is in the
    file or in the store; ``bad(lineno, reason, what)`` is told of the others."""
    in_file = {r.id for _, r in parsed if isinstance(r, Session)}
    wanted = {r.session for _, r in parsed if not isinstance(r, (Session, Projection))
              and r.session is not None}
    known = in_file | store._session_ids(wanted - in_file)
    kept: list[tuple[int, Record]] = []
    for lineno, r in parsed:
        if not isinstance(r, (Session, Projection)) and r.session is not None \
                and r.session not in known:
            bad(lineno, f"its session {r.session!r} is neither in this file nor in the "
                "store: import the export that holds the session first, or export the "
                "session whole", "of an unknown session")
            continue
        kept.append((lineno, r))
    keys = {r.key for _, r in kept if isinstance(r, EmbeddingSet)}
    out = []
    for lineno, r in kept:
        if isinstance(r, Projection) and r.embedding not in keys:
            if not store._has_embedding(r.embedding):
                bad(lineno, f"its embedding set {r.embedding!r} is neither in this file "
                    "nor in the store: export the projection with its embedding set",
                    "of an unknown embedding set")
                continue
            keys.add(r.embedding)
        out.append((lineno, r))
    return out



def _import(store: Store, parsed: list[Record], report: ImportReport) -> None:
    present: dict[tuple[str, str], set[tuple]] = {}
    known = store._session_ids({r.id for r in parsed if isinstance(r, Session)}
                              | {r.session for r in parsed if hasattr(r, "session")
                                 and isinstance(r.session, str)})
    sessions: set[str] = set()
    embeddings: set[str] = set()
    projections: dict[str, str | None] = {}  # id -> as stored (or imported), None: absent
    statics: dict[tuple[str, str], str | None] = {}
    batch: list[Record] = []
    for record in parsed:
        kind = _TYPE_NAMES[type(record)]
        if isinstance(record, Session):
            # (a session already stored is merged into: its name and tags are kept)
            new = record.id not in known and record.id not in sessions
            sessions.add(record.id)
        elif isinstance(record, (Update, Metric, Finding)):
            k = (record.session, record.worker)
            if k not in present:
                present[k] = (store._iteration_index(*k) if record.session in known else set())
            fp = _fingerprint(record)
            new = fp not in present[k]
            present[k].add(fp)
        elif isinstance(record, EmbeddingSet):
            new = record.key not in embeddings and not store._has_embedding(record.key)
            embeddings.add(record.key)
        elif isinstance(record, Projection):
            if record.id not in projections:
                stored = store._projection(record.id)
                projections[record.id] = None if stored is None else codec.dumps(stored.to_dict())
            text = codec.dumps(record.to_dict())
            new = projections[record.id] != text
            projections[record.id] = text
        elif isinstance(record, Static):
            k = (record.session, record.worker)
            if k not in statics:
                info = store._static(*k) if record.session in known else None
                statics[k] = None if info is None else codec.dumps(info)
            text = codec.dumps(record.info)
            new = statics[k] != text
            statics[k] = text
        else:
            new = True
        if not new:
            report.skipped_existing += 1
            continue
        batch.append(record)
        report.imported[kind] = report.imported.get(kind, 0) + 1
    store.write(batch)  # (one transaction: the file lands whole or not at all)


"""TensorBoard logs into a store: ``embedviz import LOGDIR`` and :func:`import_tensorboard`.

Every folder of a logdir that holds event files (``*tfevents*``) is a run, and a run is a
session (``tb-`` and a hash of its first event file's name, so a moved logdir imports into
the same sessions; named by its path, its hparams its tags). What maps to what:

- a scalar tag: a metric (``metric/<tag>``), wall times kept; the training loss (the first
  tag met of :data:`SCORE_TAGS`, or ``score=``) is the session's score instead;
- a histogram: the summary and histogram of a tensor (``param/<tag>``; ``gradient/`` when a
  part of the tag says grad, ``activation/`` or ``update/`` likewise). Count, mean, stdev,
  min and max come from the proto's num, sum, sum of squares, min and max; the mean
  magnitude and the share of zeros are absent (NaN): TensorBoard does not keep them;
  TensorFlow 2's histograms (bucket triples) give count, min and max only;
- the hparams plugin's session start info: the session's tags;
- a folder of event files directly inside a run's (``add_hparams`` writes one, and
  ``add_scalars("Loss", {"train": ...})`` one a line, ``Loss_train``): part of that run, its
  lines the run's metrics ``Loss/train``, its hparams the run's tags;
- ``projector_config.pbtxt``: each tensor an embedding set of the run, named by its tag and
  dated by the step of its name (``tag:00042``), so the snapshot slider walks them.

Event files are the ``tensorboard`` package's: its Event protos and plugin protos decode
them (no TensorFlow needed), its CRC-32C checks them. The framing (TFRecord: length, its
checksum, the data, its checksum) is read here, because TensorBoard's own reader cannot
start at an offset and stops silently at a damaged record: here a damaged record is named
(file, record number, byte) and everything before it imported.

Import is incremental: each file's offset, record count and tag plugins are kept in its
session's info and written in the same transaction as the records they cover, so importing
again (or :class:`TensorBoardImporter`'s ``poll`` every few seconds, as ``embedviz serve
--tensorboard`` does) reads only what was appended, and an import that stops part way goes
on from where its last batch landed.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedviz.errors import EmbedvizError
from embedviz.records import (
    FLOAT_STATS,
    EmbeddingSet,
    Finding,
    Histogram,
    Metric,
    Projection,
    Record,
    Session,
    Static,
    Summary,
    Update,
)

#: scalar tags taken as the training loss (lower case), in the order they are preferred
SCORE_TAGS = ("loss", "train_loss", "train/loss", "loss/train", "training_loss", "training/loss",
              "loss/training", "train_loss_step", "train/loss_step", "epoch_loss", "batch_loss")
#: seconds after which a file that ends in a partial first record is no writer's
STALE = 60
#: records written in one transaction (it ends at a change of step)
BATCH = 20_000
#: tag parts that say which tensor of a layer a histogram is of (the rest: a parameter)
_KIND_WORDS = {"grad": "gradient", "grads": "gradient", "gradient": "gradient",
               "gradients": "gradient", "activation": "activation", "activations": "activation",
               "update": "update", "updates": "update"}
_STEP_NAME = re.compile(r"^(.*):(\d+)$")
_WORKER = "0"


class TensorBoardError(EmbedvizError):
    """A logdir that cannot be imported (none there, no event files)."""


@dataclass
class TensorBoardReport:
    """What an import did: ``imported`` counts by kind (scores, metrics, histograms,
    embeddings, findings, hparams), ``sessions`` the names of runs that got something new,
    ``ignored`` the summaries of plugins embedviz does not show (images, text, graphs),
    ``problems`` damaged or cut files (file, record and byte named), ``notes`` the rest."""

    imported: Counter = field(default_factory=Counter)
    sessions: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{n:,} {k}" for k, n in sorted(self.imported.items()) if n]
        return ", ".join(parts) or "nothing new"


class _Damage(Exception):
    def __init__(self, index: int, offset: int, why: str, partial: bool) -> None:
        super().__init__(why)
        self.index, self.offset, self.why, self.partial = index, offset, why, partial


def _records(path: str, offset: int, index: int) -> Iterator[tuple[int, int, bytes]]:
    """(record number from 1, byte where it ends, its data) of the records of event file
    ``path`` from byte ``offset`` (record ``index`` + 1 on); raises :class:`_Damage` at a
    record that is cut short (``partial``: a writer may still be writing it) or damaged."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= offset:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            pos = offset
            while pos < size:
                index += 1
                if pos + 12 > size:
                    raise _Damage(index, pos, "its header is cut short", True)
                head = mm[pos:pos + 8]
                (length,) = struct.unpack("<Q", head)
                (crc,) = struct.unpack_from("<I", mm, pos + 8)
                if masked_crc32c(head) != crc:
                    raise _Damage(index, pos, "its header's checksum does not match", False)
                end = pos + 12 + length + 4
                if end > size:
                    raise _Damage(index, pos, f"it is cut short ({size - pos} of {end - pos} "
                                  "bytes)", True)
                data = mm[pos + 12:pos + 12 + length]
                (crc,) = struct.unpack_from("<I", mm, pos + 12 + length)
                if masked_crc32c(data) != crc:
                    raise _Damage(index, pos, "its data's checksum does not match", False)
                yield index, end, data
                pos = end


def _kind(tag: str) -> str:
    """A histogram tag as a tensor key, ``<kind>/<name>``: ``fc1.weight.grad`` ->
    ``gradient/fc1.weight``, ``fc1.weight`` -> ``param/fc1.weight``; the parts of a tag are
    joined by dots, as PyTorch names a module's tensors (Keras' ``dense/kernel/histogram``
    -> ``param/dense.kernel``: layer ``dense``, tensor ``kernel``)."""
    parts = [p for p in re.split(r"[/.]", tag) if p]
    if len(parts) > 1 and parts[-1].lower() == "histogram":
        parts = parts[:-1]
    for i, part in enumerate(parts):
        kind = _KIND_WORDS.get(part.lower())
        if kind is not None and len(parts) > 1:
            return f"{kind}/{'.'.join(parts[:i] + parts[i + 1:])}"
    return f"param/{'.'.join(parts) or tag}"


def _histo_summary(h: Any) -> Summary:
    """A HistogramProto (``add_histogram``'s): bucket ``i`` holds the values in
    (``bucket_limit[i-1]``, ``bucket_limit[i]``], the first from -inf; the outer edges are
    narrowed to min and max where those are finite."""
    limits = np.asarray(h.bucket_limit, dtype=np.float64)
    counts = np.asarray(h.bucket, dtype=np.float64)
    num = float(h.num)
    mean = h.sum / num if num > 0 else math.nan
    with np.errstate(all="ignore"):
        var = h.sum_squares / num - mean * mean if num > 0 else math.nan
    stdev = math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan
    lo = float(h.min) if num > 0 else math.nan
    hi = float(h.max) if num > 0 else math.nan
    histogram = None
    full = np.flatnonzero(counts > 0) if len(counts) == len(limits) else np.empty(0, int)
    if len(full):
        i, j = int(full[0]), int(full[-1])
        left = float(limits[i - 1]) if i > 0 else -math.inf
        if math.isfinite(lo):
            left = max(left, lo)
        right = float(limits[j])
        if math.isfinite(hi):
            right = min(right, hi)
        inner = [float(x) for x in limits[i:j]]
        if not math.isfinite(left) or abs(left) > 1e300:
            first = inner[0] if inner else right
            left = first - (abs(first) or 1.0)
        if not math.isfinite(right) or abs(right) > 1e300:
            last = inner[-1] if inner else left
            right = last + (abs(last) or 1.0)
        histogram = Histogram(_increasing([left, *inner, right]), counts[i:j + 1].astype(np.int64))
    held = int(counts.sum())
    missing = max(int(num) - held, 0)  # (values no bucket holds: NaN or Inf, numpy drops them)
    nan_count = missing if missing and math.isnan(h.sum) else 0
    inf_count = missing if missing and not nan_count and not math.isfinite(h.sum) else 0
    return Summary(count=int(num), mean=mean, stdev=stdev, mean_magnitude=math.nan,
                   min=lo, max=hi, nan_count=nan_count, inf_count=inf_count,
                   zero_fraction=math.nan, histogram=histogram)


def _tensor_summary(a: np.ndarray) -> Summary | None:
    """TensorFlow 2's histogram: rows of (left edge, right edge, count)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        return None
    if not len(a):
        return Summary(count=0, mean=math.nan, stdev=math.nan, mean_magnitude=math.nan,
                       min=math.nan, max=math.nan, zero_fraction=math.nan)
    counts = np.rint(a[:, 2]).astype(np.int64)
    edges = _increasing([float(a[0, 0]), *(float(x) for x in a[:, 1])])
    return Summary(count=int(counts.sum()), mean=math.nan, stdev=math.nan,
                   mean_magnitude=math.nan, min=float(a[0, 0]), max=float(a[-1, 1]),
                   zero_fraction=math.nan, histogram=Histogram(edges, counts))


def _increasing(edges: list[float]) -> np.ndarray:
    """Bucket edges as the store keeps them (strictly increasing): one bucket of equal
    values is drawn as numpy draws a constant array's, v - 0.5 to v + 0.5; an empty
    bucket between equal edges as narrow as a float can be."""
    if len(edges) == 2 and not edges[1] - edges[0] > 1e-9 * max(abs(edges[0]), 1e-300):
        return np.array([edges[0] - 0.5, edges[0] + 0.5])
    for k in range(1, len(edges)):
        if not edges[k] > edges[k - 1]:
            edges[k] = float(np.nextafter(edges[k - 1], math.inf))
    return np.array(edges)


def _hparams(content: bytes) -> dict[str, Any]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    if data.WhichOneof("data") != "session_start_info":
        return {}
    out: dict[str, Any] = {}
    for key, v in data.session_start_info.hparams.items():
        which = v.WhichOneof("kind")
        number = v.number_value
        if which == "number_value" and number.is_integer() and abs(number) < 2**53:
            number = int(number)  # (a Python int logged as a double: shown as it was given)
        out[key] = (number if which == "number_value" else v.string_value
                    if which == "string_value" else v.bool_value if which == "bool_value"
                    else None)
    return out


def _pca(es: EmbeddingSet) -> list[Record]:
    """The set's PCA map (the projector's first view), so that it shows on import; t-SNE
    is a click away in the app."""
    from embedviz.projection import PCAProjection, quality

    if es.n < 3:
        return []
    est = PCAProjection().fit(es.vectors)
    coords = est.embedding_
    return [Projection(es.key, est.method, est.params(), coords, state="done", progress=1.0,
                       quality=quality(es.vectors, coords, normalize=True),
                       message="PCA on import")]


def _session_id(first_file: str) -> str:
    return "tb-" + hashlib.blake2b(first_file.encode("utf-8", "surrogatepass"),
                                   digest_size=8).hexdigest()


def _metric_name(tag: str) -> str:
    return tag.strip() or "(empty tag)"


class _Run:
    """One run folder being imported: its session, its files' places, the records read."""

    def __init__(self, importer: TensorBoardImporter, folder: str, rel: str,
                 files: list[str], projector: bool) -> None:
        self.imp, self.folder, self.rel, self.files = importer, folder, rel, files
        self.projector = projector  # (a projector_config.pbtxt beside its event files)
        self.id = _session_id(files[0]) if files else None
        self.name = rel
        self.session: Session | None = None
        self.state: dict[str, Any] = {"files": {}, "projector": []}
        self.batch: list[Record] = []
        self.written: tuple | None = None  # (the state and tags as stored)
        #: the statistics some histogram of the run had (the rest: NaN, absent)
        self.present: set[str] = set()
        self.checked = False  # (updates or metrics read: the checks have something new)
        self.group: dict[str, Any] | None = None  # (the update of the step being read)
        #: updates and metrics written but not yet fed to the session's checker (when it has
        #: one: a new session, or one this importer replayed before), and what it found
        self.new_timed: list[Record] = []
        self.found: list[Finding] = []
        self.sub = ""
        self.fname = ""
        self.said_back = False
        self.loaded = False  # (its session was in the store before this import)
        self.metrics_read = False
        self.said_no_score = False

    def load(self, store: Any) -> None:
        if self.id is None:
            return
        if self.imp._known(self.id):
            s = store.session(self.id)
            self.session = Session(s.id, s.name, s.created, dict(s.tags), dict(s.info))
            self.state = dict(self.session.info.get("tensorboard") or self.state)
            self.state.setdefault("files", {})
            self.state.setdefault("projector", [])
            self.written = (_copy(self.state), dict(self.session.tags))
            self.loaded = True
            kept = self.session.info.get("absent_stats")
            if isinstance(kept, list):
                self.present = {k for k in FLOAT_STATS if k not in kept}

    def ensure_session(self, created: float) -> Session:
        if self.session is None:
            assert self.id is not None
            self.session = Session(self.id, self.name, created, {},
                                   {"source": "tensorboard", "run": self.rel})
            # (the worker's static info says where its series came from: the pages explain
            # the charts TensorBoard's data cannot fill)
            self.batch.insert(0, Static(self.id, _WORKER, {"source": "tensorboard",
                                                            "run": self.rel}, created))
        return self.session

    # ------------------------------------------------------------- events
    def events(self, fname: str, report: TensorBoardReport, bar: Any) -> None:
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto import event_pb2

        path = os.path.join(self.folder, fname)
        self.sub = os.path.dirname(fname)  # (a file of a folder inside the run's: its name)
        self.fname = fname
        st = self.state["files"].setdefault(fname, {"offset": 0, "records": 0, "plugins": {}})
        size = os.path.getsize(path)
        if size < st["offset"]:
            report.problems.append(f"{path}: the file is shorter ({size:,} bytes) than what was "
                                   f"imported of it ({st['offset']:,}): it was replaced, and is "
                                   "not read again (import it into a new store to read it whole)")
            return
        start, records0 = st["offset"], st["records"]
        done, last = start, records0
        try:
            for index, end, data in _records(path, start, records0):
                try:
                    event = event_pb2.Event.FromString(data)
                except DecodeError as exc:
                    raise _Damage(index, done, f"it is not an event ({exc})", False) from None
                if len(self.batch) >= BATCH and (self.group is None
                                                 or self.group["step"] != event.step):
                    self.flush_group()
                    st["offset"], st["records"] = done, last
                    self.write(report)
                    if self.imp.stopping.is_set():  # (the rest next time)
                        break
                self.event(event, st["plugins"], report)
                bar.update(end - done)
                done, last = end, index
        except _Damage as d:
            where = f"{path}: record {d.index:,} (byte {d.offset:,})"
            if d.partial and d.index == 1 and time.time() - os.path.getmtime(path) > STALE:
                report.problems.append(f"{where} is cut short ({d.why}) and the file has not "
                                       f"changed for {STALE} s: this is not a TensorBoard event "
                                       "file, or it was cut before its first record; nothing of "
                                       "it was imported")
            elif d.partial:
                report.notes.append(f"{where} is incomplete ({d.why}): the {d.index - 1:,} "
                                    "records before it are imported; a training still writing "
                                    "it completes it, and the next import reads it")
            elif d.index == 1:
                report.problems.append(f"{where} is damaged ({d.why}): this is not a "
                                       "TensorBoard event file, or its start is damaged; nothing "
                                       "of it was imported")
            else:
                report.problems.append(f"{where} is damaged ({d.why}): the {d.index - 1:,} "
                                       "records before it are imported; what follows it cannot "
                                       "be read")
        except OSError as exc:
            report.problems.append(f"{path}: cannot be read ({exc.strerror or exc}): skipped")
        self.flush_group()
        st["offset"], st["records"] = done, last
        self.write(report)

    def event(self, event: Any, plugins: dict, report: TensorBoardReport) -> None:
        what = event.WhichOneof("what")
        if what != "summary":
            if what in ("graph_def", "meta_graph_def", "tagged_run_metadata"):
                report.ignored["graph"] += 1
            elif what == "file_version" and self.session is None:
                self.ensure_session(event.wall_time)
            return
        self.ensure_session(event.wall_time)
        step, wall = int(event.step), float(event.wall_time)
        for v in event.summary.value:
            tag = v.tag
            if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
                plugins[tag] = v.metadata.plugin_data.plugin_name
            plugin = plugins.get(tag, "")
            which = v.WhichOneof("value")
            if plugin == "hparams":
                tags = _hparams(v.metadata.plugin_data.content)
                if tags:
                    assert self.session is not None
                    self.session.tags.update(tags)
                    report.imported["hparams"] += len(tags)
            elif which == "simple_value":
                self.scalar(tag, step, wall, float(v.simple_value))
            elif which == "histo":
                self.histogram(tag, step, wall, _histo_summary(v.histo))
            elif which == "tensor" and plugin in ("scalars", "histograms"):
                from tensorboard.util import tensor_util

                a = tensor_util.make_ndarray(v.tensor)
                if plugin == "scalars" and a.size == 1:
                    self.scalar(tag, step, wall, float(a.reshape(-1)[0]))
                elif plugin == "histograms" and (sm := _tensor_summary(a)) is not None:
                    self.histogram(tag, step, wall, sm)
                else:
                    report.ignored[plugin] += 1
            else:
                report.ignored[plugin or which or "empty"] += 1

    def _group(self, step: int, wall: float) -> dict[str, Any]:
        if self.group is not None and self.group["step"] != step:
            self.flush_group()
        if self.group is None:
            self.group = {"step": step, "wall": wall, "score": None, "epoch": None,
                          "summaries": {}}
        return self.group

    def scalar(self, tag: str, step: int, wall: float, value: float) -> None:
        stem = tag.replace("/", "_") + "_"
        if self.sub and self.sub.startswith(stem) and len(self.sub) > len(stem):
            tag = f"{tag}/{self.sub[len(stem):]}"  # (add_scalars("Loss", {"train": ...}))
        score = self.state.get("score")
        if "score" not in self.state:  # (chosen once, kept in the store: every import alike)
            if self.imp.score is not None and not self.loaded:  # (a run new to the store)
                score = self.state["score"] = self.imp.score
            elif tag.lower() in SCORE_TAGS:
                score = self.state["score"] = tag
        if tag == score:
            last = self.state.get("last_step")
            if last is not None and step < last and not self.said_back:
                self.said_back = True
                self.imp.report.notes.append(
                    f"{self.name}: the loss's step goes back from {last:,} to {step:,} in "
                    f"{self.fname} (a training resumed or restarted in the same folder): both "
                    f"are kept; TensorBoard drops the earlier points from step {step:,} on")
            self.state["last_step"] = step
            g = self._group(step, wall)
            if g["score"] is not None:  # (the same step logged again: an update of its own)
                self.flush_group()
                g = self._group(step, wall)
            g["score"], g["wall"] = value, wall
            self.imp.report.imported["scores"] += 1
            return
        if tag == "epoch" and value >= 0 and value == int(value) and self.group is not None \
                and self.group["step"] == step:
            self.group["epoch"] = int(value)
        self.add(Metric(self.id, _metric_name(tag), value, step, _WORKER, wall))  # type: ignore[arg-type]
        self.imp.report.imported["metrics"] += 1
        self.metrics_read = True

    def histogram(self, tag: str, step: int, wall: float, sm: Summary) -> None:
        for stat in FLOAT_STATS:
            if stat not in self.present and math.isfinite(getattr(sm, stat)):
                self.present.add(stat)
        g = self._group(step, wall)
        key = _kind(tag)
        if key in g["summaries"]:
            self.flush_group()
            g = self._group(step, wall)
        g["summaries"][key] = sm
        self.imp.report.imported["histograms"] += 1

    def flush_group(self) -> None:
        g, self.group = self.group, None
        if g is None or (g["score"] is None and not g["summaries"]):
            return
        self.add(Update(self.id, _WORKER, g["step"], score=g["score"], epoch=g["epoch"],  # type: ignore[arg-type]
                        wall_time=g["wall"], summaries=g["summaries"]))

    def add(self, r: Record) -> None:
        self.batch.append(r)
        self.checked = True
        if self.id in self.imp.checkers:
            self.new_timed.append(r)

    def write(self, report: TensorBoardReport) -> None:
        """The records read and the places they end, in one transaction (nothing when
        nothing changed)."""
        if self.session is None:
            self.batch = []
            return
        state = _copy(self.state)
        absent = [k for k in FLOAT_STATS if k not in self.present]
        if not self.batch and self.written == (state, self.session.tags) \
                and self.session.info.get("absent_stats", absent) == absent:
            return
        self.session.info["tensorboard"] = state
        self.session.info["absent_stats"] = absent  # (the app charts no all-NaN column)
        self.imp.store.write([self.session, *self.batch])
        self.written = (state, dict(self.session.tags))
        if self.batch and self.name not in report.sessions:
            report.sessions.append(self.name)
        self.batch = []
        self.feed()

    def feed(self) -> None:
        """The checker fed what was written, a batch at a time (a batch ends at a change of
        step: each update before the metrics of its step, as a listener writes them)."""
        checker = self.imp.checkers.get(self.id) if self.id is not None else None
        if checker is not None and self.new_timed:
            timed = sorted(self.new_timed, key=lambda r: (r.iteration, isinstance(r, Metric)))  # type: ignore[union-attr]
            self.found += checker.feed(timed)
        self.new_timed = []


def _copy(state: dict) -> dict:
    return {"files": {k: {"offset": v["offset"], "records": v["records"],
                          "plugins": dict(v["plugins"])} for k, v in state["files"].items()},
            "projector": list(state["projector"]),
            **{k: state[k] for k in ("score", "last_step") if k in state}}


def _run_name(logdir: str, folder: str) -> str:
    base = os.path.basename(os.path.abspath(logdir)) or os.path.abspath(logdir)
    rel = os.path.relpath(folder, logdir)
    return base if rel == "." else "/".join([base, *Path(rel).parts])


class TensorBoardImporter:
    """Imports a logdir into a store, again and again: each :meth:`poll` reads what was
    appended since the last (as kept in the store), checks the sessions that grew
    (``checks``: the health checks, findings stored as a listener stores them; a session
    is replayed whole the first time, fed only its new records after) and returns a
    :class:`TensorBoardReport`. ``store``: a Store, or what :func:`embedviz.open_store`
    takes (then this importer opens it and :meth:`close` closes it). ``score``: the scalar
    tag that is the training loss (default: the first of :data:`SCORE_TAGS` met)."""

    def __init__(self, logdir: str | os.PathLike, store: Any, *, score: str | None = None,
                 checks: bool = True) -> None:
        from embedviz.store import Store, open_store

        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise TensorBoardError("reading TensorBoard logs needs the tensorboard package "
                                   "(no TensorFlow): pip install 'embedviz[tensorboard]'") from None
        self.logdir = os.fspath(logdir)
        self.score = score
        self.checks = checks
        self._own = not isinstance(store, Store)
        self.store = open_store(store) if self._own else store
        self.checkers: dict[str, Any] = {}
        self.report = TensorBoardReport()
        #: set (from another thread) to end a poll after the batch being written
        self.stopping = threading.Event()
        self._ids: set[str] = set()

    def close(self) -> None:
        if self._own and self.store is not None:
            self.store.close()
        self.store = None

    def __enter__(self) -> TensorBoardImporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _known(self, session_id: str) -> bool:
        return session_id in self._ids

    def runs(self, require: bool = True) -> list[tuple[str, str, list[str], bool]]:
        """(folder, name, event files, has a projector config) of each run, in path order.
        A folder with event files directly inside a run's folder is part of that run
        (``add_hparams`` and ``add_scalars`` write there): its files are the run's, named
        by their path below the run's folder. ``require``: a missing logdir is an error
        (else: nothing yet)."""
        if not os.path.isdir(self.logdir):
            if not require:
                return []
            raise TensorBoardError(f"{self.logdir}: no such folder: pass the folder you give "
                                   "`tensorboard --logdir`")
        out: list[tuple[str, str, list[str], bool]] = []
        at: dict[str, int] = {}
        for folder, dirs, files in os.walk(self.logdir):
            dirs.sort()
            events = sorted(f for f in files if "tfevents" in f)
            projector = "projector_config.pbtxt" in files
            parent = os.path.dirname(folder)
            if events and parent in at and folder != self.logdir and out[at[parent]][2]:
                run = out[at[parent]]
                run[2].extend(os.path.join(os.path.basename(folder), f) for f in events)
                if not projector:
                    continue
                events = []
            if events or projector:
                at[folder] = len(out)
                out.append((folder, _run_name(self.logdir, folder), events, projector))
        return out

    def poll(self, *, progress: bool = False, require: bool = False) -> TensorBoardReport:
        """Import what is new; ``require``: a logdir without event files is an error (else
        nothing to do yet: a training that has not begun)."""

        if self.store is None:
            raise TensorBoardError("this importer is closed: make a new one")
        report = self.report = TensorBoardReport()
        store: Any = self.store
        yielding = getattr(store, "yield_gil", None)
        if yielding is not None:  # (no training thread beside an import to hand the GIL to)
            store.yield_gil = False
        try:
            return self._poll(report, progress, require)
        finally:
            if yielding is not None:
                store.yield_gil = yielding

    def _poll(self, report: TensorBoardReport, progress: bool, require: bool) -> TensorBoardReport:
        from tqdm.auto import tqdm

        found = self.runs(require)
        if require and not found:
            raise TensorBoardError(f"{self.logdir}: no TensorBoard event files (*tfevents*) nor "
                                   "projector_config.pbtxt in it or its folders: pass the folder "
                                   "you give `tensorboard --logdir`")
        runs: list[_Run] = []
        ids = {_session_id(events[0]) for _, _, events, _ in found if events}
        self._ids = self.store._session_ids(ids) if ids else set()
        seen: dict[str, str] = {}
        for folder, name, events, projector in found:
            run = _Run(self, folder, name, events, projector)
            if run.id is not None and run.id in seen:
                report.problems.append(f"{folder}: holds the event file {events[0]} as "
                                       f"{seen[run.id]} does (a copy?): skipped")
                continue
            if run.id is not None:
                seen[run.id] = folder
                if self.checks and run.id not in self._ids:
                    # (a new session: checked as it is read, nothing to replay)
                    from embedviz.health import Checker

                    self.checkers[run.id] = Checker()
            run.load(self.store)
            runs.append(run)
        todo = 0
        for run in runs:
            for f in run.files:
                try:
                    size = os.path.getsize(os.path.join(run.folder, f))
                except OSError:
                    continue
                todo += max(size - run.state["files"].get(f, {}).get("offset", 0), 0)
        with tqdm(total=todo, unit="B", unit_scale=True, desc="reading event files",
                  disable=True if not progress or not todo else None,  # (None: a terminal's)
                  file=sys.stderr) as bar:
            for run in runs:
                for f in run.files:
                    if not self.stopping.is_set():
                        run.events(f, report, bar)
                if run.projector:
                    self.projector(run, report)
        for run in runs:
            if run.session is None:
                continue
            if run.metrics_read and "score" not in run.state and not run.said_no_score:
                run.said_no_score = True
                report.notes.append(
                    f"{run.name}: no scalar tag is a training loss embedviz knows ("
                    f"{', '.join(SCORE_TAGS[:4])}, ...): every scalar is a metric and the loss's "
                    "checks cannot run; pass --score TAG (score= in Python) to pick one")
            if self.score is not None and run.state.get("score") != self.score \
                    and run.written is not None and run.loaded:
                was = run.state.get("score")
                report.notes.append(
                    f"{run.name}: its score is {was!r} since its first import, not "
                    f"{self.score!r} (its points are stored as they were read): import into a "
                    f"new store to score it by {self.score!r}")
        if self.checks and not self.stopping.is_set():
            for run in runs:
                if run.id is not None and run.checked:
                    self.check(run, report)
        if report.ignored:
            report.notes.append("not shown by embedviz, left out: " + ", ".join(
                f"{n:,} {k or 'other'}" for k, n in sorted(report.ignored.items())))
        return report

    def projector(self, run: _Run, report: TensorBoardReport) -> None:
        """The run's projector tensors as embedding sets (each once)."""
        from google.protobuf import text_format
        from tensorboard.plugins.projector import projector_config_pb2

        from embedviz.vocab import read_projector_tsv

        path = os.path.join(run.folder, "projector_config.pbtxt")
        try:
            with open(path, encoding="utf-8") as f:
                config = text_format.Parse(f.read(), projector_config_pb2.ProjectorConfig())
        except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
            report.problems.append(f"{path}: cannot be read ({exc}): its embeddings are skipped")
            return
        done = run.state["projector"]
        for e in config.embeddings:
            if not e.tensor_path:
                report.notes.append(f"{path}: tensor {e.tensor_name!r} lives in a TensorFlow "
                                    "checkpoint, which embedviz does not read: save it as "
                                    "tensors.tsv (SummaryWriter.add_embedding does): skipped")
                continue
            if e.tensor_path in done:
                continue
            tensors = os.path.join(run.folder, e.tensor_path)
            meta = os.path.join(run.folder, e.metadata_path) if e.metadata_path else None
            try:
                vocab = read_projector_tsv(tensors, meta)
            except (EmbedvizError, OSError, ValueError) as exc:
                report.problems.append(f"{path}: tensor {e.tensor_name!r} "
                                       f"({e.tensor_path}): {exc}: skipped")
                continue
            m = _STEP_NAME.match(e.tensor_name)
            name = (m.group(1) if m else e.tensor_name).strip() or "embedding"
            step = int(m.group(2)) if m else None
            created = os.path.getmtime(tensors)
            if run.session is None and run.id is not None:
                run.ensure_session(created)
            metadata = dict(vocab.metadata)
            if not metadata and len(set(vocab.labels)) < len(vocab.labels):
                # (one column of repeated values is a class, as the projector colours by it)
                metadata["label"] = list(vocab.labels)
            es = EmbeddingSet(name, vocab.labels, vocab.vectors, metadata=metadata,
                              session=run.id, iteration=step, created=created)
            report.notes.extend(vocab.notes)
            if not self.store._has_embedding(es.key):
                if run.session is None:
                    self.store.write([es, *_pca(es)])
                else:
                    run.batch += [es, *_pca(es)]
                    run.write(report)
                report.imported["embeddings"] += 1
            done.append(e.tensor_path)
        run.write(report)

    def check(self, run: _Run, report: TensorBoardReport) -> None:
        """The health checks over what the run's session gained; the findings stored."""
        from embedviz.health import not_run as checks_not_run
        from embedviz.health import replay_session

        assert run.id is not None
        checker = self.checkers.get(run.id)
        if checker is None:  # (a session stored before: its history replayed once)
            checker, found = replay_session(self.store, run.id)
            self.checkers[run.id] = checker
        else:
            run.feed()
            found = run.found
        run.found = []
        stored = {(f.iteration, f.check, f.layer, f.worker) for _, f in self.store.findings(run.id)}
        new: list[Finding] = [f for f in found
                              if (f.iteration, f.check, f.layer, f.worker) not in stored]
        assert run.session is not None
        not_run = checks_not_run(checker, run.id, _WORKER)
        health = {"not_run": not_run}
        if new or run.session.info.get("health") != health:
            run.session.info["health"] = health
            self.store.write([run.session, *new])
        report.imported["findings"] += len(new)


class Follower:
    """Imports a logdir into a store every ``interval`` seconds in a thread of its own (as
    TensorBoard reloads its logdir): ``embedviz serve --tensorboard LOGDIR``. ``say``
    prints a line (what came, problems); an import that fails is said and tried again
    next time. :meth:`close` stops the thread and closes the store it opened."""

    def __init__(self, logdir: str | os.PathLike, store: str, *, interval: float = 5.0,
                 score: str | None = None, say: Callable[[str], None] = print) -> None:
        self.logdir, self.store, self.interval, self.score, self.say = (
            os.fspath(logdir), store, float(interval), score, say)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedviz-tensorboard",
                                        daemon=True)
        self.polls = 0
        self._importer: TensorBoardImporter | None = None

    def start(self) -> Follower:
        self._thread.start()
        return self

    def _run(self) -> None:
        imp = None
        last_problems: list[str] = []
        try:
            while not self._stop.is_set():
                try:
                    if imp is None:
                        imp = self._importer = TensorBoardImporter(self.logdir, self.store,
                                                                   score=self.score)
                    report = imp.poll(progress=self.polls == 0)
                    if report.sessions:
                        self.say(f"embedviz: imported {report.summary()} from {self.logdir} "
                                 f"({', '.join(report.sessions[:5])})")
                    if report.problems != last_problems:
                        for line in report.problems:
                            self.say(f"embedviz: problem: {line}")
                        last_problems = report.problems
                except Exception as exc:  # (said, then tried again: the app keeps serving)
                    self.say(f"embedviz: importing {self.logdir} failed: {exc} (trying again "
                             f"in {self.interval:g} s)")
                self.polls += 1
                self._stop.wait(self.interval)
        finally:
            if imp is not None:
                imp.close()

    def close(self) -> None:
        self._stop.set()
        if self._importer is not None:
            self._importer.stopping.set()  # (an import under way ends after its batch)
        if self._thread.is_alive():
            self._thread.join(timeout=60)


def import_tensorboard(logdir: str | os.PathLike, store: Any, *, score: str | None = None,
                       checks: bool = True, progress: bool = True) -> TensorBoardReport:
    """Import a TensorBoard logdir into ``store`` (a Store or what
    :func:`embedviz.open_store` takes): what the module's docstring maps, only what is new
    since the last import. ``score``: the scalar tag that is the training loss. Returns a
    :class:`TensorBoardReport`; a damaged file is named in its ``problems``, with what came
    before the damage imported."""
    with TensorBoardImporter(logdir, store, score=score, checks=checks) as imp:
        return imp.poll(progress=progress, require=True)


__all__ = ["SCORE_TAGS", "Follower", "TensorBoardError", "TensorBoardImporter", "TensorBoardReport",
           "import_tensorboard"]

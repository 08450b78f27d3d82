"""The records a stats store holds, keyed the way Deeplearning4j keys them.

A **session** (one training run) has **workers** (processes, ranks). Each worker sends
**static** info once and **updates** every N iterations. Beside them: named **metrics**,
health **findings**, **embedding sets** and **projections**.

Series keys name one number over iterations inside a session and worker:

- ``score``: the loss of the minibatch;
- ``lr/<group>``, ``timing/<name>``, ``memory/<name>`` or any other ``scalars`` key of an update;
- ``metric/<name>``: a named metric logged on its own (validation loss, accuracy);
- ``<kind>/<name>/<stat>``: a summary statistic, ``kind`` one of :data:`KINDS`
  (``param``, ``gradient``, ``update``, ``activation``) and ``stat`` one of :data:`STATS`,
  e.g. ``update/fc1.weight/mean_magnitude``.

Every record converts to a plain dict (``to_dict``, with a ``type`` field) and back
(:func:`record_from_dict`): that dict is the JSONL export line and the wire format.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from embedviz.errors import InvalidRecordError

KINDS = ("param", "gradient", "update", "activation")
STATS = (
    "count",
    "mean",
    "stdev",
    "mean_magnitude",
    "min",
    "max",
    "nan_count",
    "inf_count",
    "zero_fraction",
)
FLOAT_STATS = ("mean", "stdev", "mean_magnitude", "min", "max", "zero_fraction")
INT_STATS = ("count", "nan_count", "inf_count")
SEVERITIES = ("info", "warning", "error")
PROJECTION_STATES = ("pending", "running", "done", "failed", "interrupted")
_RESERVED_SCALAR_PREFIXES = tuple(k + "/" for k in KINDS) + ("metric/",)


INT64_MAX = 2**63 - 1


def _fail(what: str, value: Any, way_out: str) -> InvalidRecordError:
    return InvalidRecordError(f"{what} (got {value!r}): {way_out}")


def _check_str(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or value != value.strip():
        raise _fail(f"{name} must be a non-empty string without surrounding spaces", value,
                    f"pass {name} as a plain string such as 'run-1'")


def _check_int(name: str, value: Any, *, optional: bool = False, minimum: int = 0) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        raise _fail(f"{name} must be an integer >= {minimum}", value,
                    f"count {name} from {minimum}" if whole else
                    f"pass {name} as a whole number, e.g. int({name})")
    if value > INT64_MAX:  # (what the stores and numpy hold)
        raise _fail(f"{name} must be at most 2**63 - 1", value, f"check where {name} comes from")


def _to_float(name: str, value: Any) -> float:
    """Python float of ``value``; NaN and Inf are kept as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return _to_float(name, value.item())  # 0-d tensors and arrays
        raise _fail(f"{name} must be a number", value,
                    f"convert it first, e.g. float({name}) or loss.item()")
    try:
        return float(value)
    except OverflowError:  # (an integer beyond any float)
        raise _fail(f"{name} is too large for a float", value, f"check where {name} comes from") from None


def _check_json_dict(name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(f"{name} must be a dict with string keys", type(value).__name__,
                    f"pass {name} as e.g. {{'lr': 0.01}}")
    return value


@dataclass
class Histogram:
    """Counts of values in bins.

    ``edges``: ndarray of shape (n_bins + 1,), float64, strictly increasing.
    ``counts``: ndarray of shape (n_bins,), int64. Values below ``edges[0]`` are counted in
    ``underflow`` and above ``edges[-1]`` in ``overflow``; NaN and Inf are counted apart in
    the owning :class:`Summary`, never silently dropped.
    """

    edges: np.ndarray
    counts: np.ndarray
    underflow: int = 0
    overflow: int = 0

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64).reshape(-1)
        try:
            counts = np.asarray(self.counts)
            if counts.size and not np.all(np.equal(np.mod(counts, 1), 0)):
                raise ValueError
            self.counts = counts.astype(np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise _fail("histogram counts must be whole numbers", self.counts,
                        "pass the bin counts as integers") from None
        if len(self.edges) != len(self.counts) + 1 or len(self.counts) == 0:
            raise _fail("a histogram needs len(edges) == len(counts) + 1 and at least one bin",
                        (len(self.edges), len(self.counts)),
                        "pass edges and counts as numpy.histogram returns them")
        if not np.all(np.isfinite(self.edges)) or np.any(np.diff(self.edges) <= 0):
            raise _fail("histogram edges must be finite and strictly increasing",
                        self.edges[:4].tolist(), "compute edges from finite values only")
        if np.any(self.counts < 0) or self.underflow < 0 or self.overflow < 0:
            raise _fail("histogram counts must be >= 0", self.counts.min(), "check the counts")
        self.underflow, self.overflow = int(self.underflow), int(self.overflow)
        if max(self.underflow, self.overflow) > INT64_MAX:  # (what the stores hold)
            raise _fail("histogram underflow and overflow must be at most 2**63 - 1",
                        max(self.underflow, self.overflow), "check the counts")

    @classmethod
    def trusted(cls, edges: np.ndarray, counts: np.ndarray, underflow: int, overflow: int
                ) -> Histogram:
        """A histogram from a float64 edge array and an int64 count array known to be valid
        (as embedviz's own summarizers make them), without checking them again."""
        h = cls.__new__(cls)
        h.edges, h.counts, h.underflow, h.overflow = edges, counts, underflow, overflow
        return h

    def to_dict(self) -> dict:
        return {"edges": self.edges, "counts": self.counts,
                "underflow": self.underflow, "overflow": self.overflow}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Histogram) and np.array_equal(self.edges, other.edges)
                and np.array_equal(self.counts, other.counts)
                and (self.underflow, self.overflow) == (other.underflow, other.overflow))


@dataclass
class Summary:
    """Statistics of one tensor (a parameter, its gradient, its update or a layer's output).

    ``mean``, ``stdev``, ``mean_magnitude`` (mean of absolute values), ``min`` and ``max`` are
    over the finite values; ``nan_count`` and ``inf_count`` count the others; ``zero_fraction``
    is the share of exact zeros (dead units for activations). Any float may be NaN.
    """

    count: int
    mean: float
    stdev: float
    mean_magnitude: float
    min: float
    max: float
    nan_count: int = 0
    inf_count: int = 0
    zero_fraction: float = 0.0
    histogram: Histogram | None = None

    def __post_init__(self) -> None:
        for name in FLOAT_STATS:
            setattr(self, name, _to_float(name, getattr(self, name)))
        for name in INT_STATS:
            _check_int(name, getattr(self, name))
            setattr(self, name, int(getattr(self, name)))
        if isinstance(self.histogram, dict):
            self.histogram = Histogram(**self.histogram)
        elif self.histogram is not None and not isinstance(self.histogram, Histogram):
            raise _fail("histogram must be a Histogram or None", type(self.histogram).__name__,
                        "build it with embedviz.records.Histogram(edges, counts)")

    @classmethod
    def trusted(cls, histogram: Histogram | None, **stats: Any) -> Summary:
        """A summary from values already of the right types (Python floats and ints, as
        embedviz's own summarizers make them), without checking them again: the monitor
        builds thousands a second."""
        s = cls.__new__(cls)
        s.__dict__.update(stats)
        s.histogram = histogram
        return s

    def to_dict(self) -> dict:
        d: dict[str, Any] = {name: getattr(self, name) for name in STATS}
        d["histogram"] = self.histogram.to_dict() if self.histogram is not None else None
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Summary):
            return False
        for name in STATS:
            a, b = getattr(self, name), getattr(other, name)
            if not (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))):
                return False
        return self.histogram == other.histogram


@dataclass
class Session:
    """One training run. ``id`` is chosen by the caller or generated."""

    id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    name: str | None = None
    created: float = field(default_factory=time.time)
    tags: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("session id", self.id)
        _check_str("session name", self.name, optional=True)
        self.created = _to_float("created", self.created)
        self.tags = _check_json_dict("tags", self.tags)
        self.info = _check_json_dict("info", self.info)

    def to_dict(self) -> dict:
        return {"type": "session", "session": self.id, "name": self.name,
                "created": self.created, "tags": self.tags, "info": self.info}


@dataclass
class Static:
    """What a worker sends once: layer table, graph, hyperparameters, software, hardware."""

    session: str
    worker: str
    info: dict
    wall_time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _check_str("session", self.session)
        _check_str("worker", self.worker)
        self.info = _check_json_dict("static info", self.info)
        self.wall_time = _to_float("wall_time", self.wall_time)

    def to_dict(self) -> dict:
        return {"type": "static", "session": self.session, "worker": self.worker,
                "wall_time": self.wall_time, "info": self.info}


@dataclass
class Update:
    """What a worker sends every N iterations.

    ``scalars``: e.g. ``{"lr/0": 0.01, "timing/iteration_ms": 12.5, "memory/rss_bytes": 1e9}``.
    ``summaries``: keyed ``"<kind>/<name>"``, e.g. ``"update/fc1.weight"``.
    """

    session: str
    worker: str
    iteration: int
    score: float | None = None
    epoch: int | None = None
    wall_time: float = field(default_factory=time.time)
    scalars: dict[str, float] = field(default_factory=dict)
    summaries: dict[str, Summary] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_str("session", self.session)
        _check_str("worker", self.worker)
        _check_int("iteration", self.iteration)
        _check_int("epoch", self.epoch, optional=True)
        self.iteration = int(self.iteration)
        self.epoch = None if self.epoch is None else int(self.epoch)
        self.wall_time = _to_float("wall_time", self.wall_time)
        if self.score is not None:
            self.score = _to_float("score", self.score)
        scalars = _check_json_dict("scalars", self.scalars)
        for key in scalars:
            if not key.strip():
                raise _fail("scalar keys must be non-empty names", key,
                            "name scalars like 'lr/0' or 'timing/iteration_ms'")
            if key == "score" or key.startswith(_RESERVED_SCALAR_PREFIXES):
                raise _fail("scalar keys may not be 'score' nor start with "
                            + ", ".join(_RESERVED_SCALAR_PREFIXES), key,
                            "pass the loss as score=, metrics with log_metric, and name "
                            "scalars like 'lr/0' or 'timing/iteration_ms'")
        self.scalars = {k: _to_float(f"scalars[{k!r}]", v) for k, v in scalars.items()}
        summaries = _check_json_dict("summaries", self.summaries)
        for key, value in list(summaries.items()):
            split_summary_key(key)
            if isinstance(value, dict):
                summaries[key] = Summary(**value)
            elif not isinstance(value, Summary):
                raise _fail(f"summaries[{key!r}] must be a Summary", type(value).__name__,
                            "build it with embedviz.records.Summary(...)")
        self.summaries = summaries

    @classmethod
    def trusted(cls, session: str, worker: str, iteration: int, score: float | None,
                epoch: int | None, scalars: dict[str, float], summaries: dict[str, Summary]
                ) -> Update:
        """An update from values already of the right types and names (as the monitor makes
        them: Python floats, "kind/name" keys, :meth:`Summary.trusted` summaries), without
        checking them again."""
        u = cls.__new__(cls)
        u.__dict__.update(session=session, worker=worker, iteration=iteration, score=score,
                          epoch=epoch, wall_time=time.time(), scalars=scalars,
                          summaries=summaries)
        return u

    def to_dict(self) -> dict:
        return {"type": "update", "session": self.session, "worker": self.worker,
                "iteration": self.iteration, "epoch": self.epoch, "wall_time": self.wall_time,
                "score": self.score, "scalars": self.scalars,
                "summaries": {k: s.to_dict() for k, s in self.summaries.items()}}


@dataclass
class Metric:
    """A named number logged on its own schedule (validation loss, accuracy)."""

    session: str
    name: str
    value: float
    iteration: int
    worker: str = "0"
    wall_time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _check_str("session", self.session)
        _check_str("metric name", self.name)
        _check_str("worker", self.worker)
        _check_int("iteration", self.iteration)
        self.iteration = int(self.iteration)
        self.value = _to_float("metric value", self.value)
        self.wall_time = _to_float("wall_time", self.wall_time)

    def to_dict(self) -> dict:
        return {"type": "metric", "session": self.session, "worker": self.worker,
                "iteration": self.iteration, "name": self.name, "value": self.value,
                "wall_time": self.wall_time}


@dataclass
class Finding:
    """A health finding: what was seen, where it began, what it means, what to try."""

    session: str
    check: str
    message: str
    iteration: int
    worker: str = "0"
    severity: str = "warning"
    layer: str | None = None
    detail: dict = field(default_factory=dict)
    wall_time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _check_str("session", self.session)
        _check_str("check", self.check)
        _check_str("worker", self.worker)
        _check_str("layer", self.layer, optional=True)
        _check_int("iteration", self.iteration)
        if not isinstance(self.message, str) or not self.message:
            raise _fail("finding message must be a non-empty string", self.message,
                        "say what was seen and what to try")
        if self.severity not in SEVERITIES:
            raise _fail(f"severity must be one of {SEVERITIES}", self.severity, "pick one of them")
        self.detail = _check_json_dict("detail", self.detail)
        self.wall_time = _to_float("wall_time", self.wall_time)

    def to_dict(self) -> dict:
        return {"type": "finding", "session": self.session, "worker": self.worker,
                "iteration": self.iteration, "check": self.check, "severity": self.severity,
                "layer": self.layer, "message": self.message, "detail": self.detail,
                "wall_time": self.wall_time}


@dataclass
class EmbeddingSet:
    """Labelled vectors: ``vectors`` is an ndarray of shape (n, dim), float32.

    ``metadata`` maps column names to lists of length n. ``key`` is a content hash of labels
    and vectors, so the same vectors stored twice are one set.
    """

    name: str
    labels: list[str]
    vectors: np.ndarray
    metadata: dict[str, list] = field(default_factory=dict)
    session: str | None = None
    iteration: int | None = None
    created: float = field(default_factory=time.time)
    key: str = ""

    def __post_init__(self) -> None:
        _check_str("embedding name", self.name)
        _check_str("session", self.session, optional=True)
        _check_int("iteration", self.iteration, optional=True)
        if isinstance(self.labels, np.ndarray):
            self.labels = self.labels.tolist()
        if not isinstance(self.labels, list) or not all(isinstance(w, str) for w in self.labels):
            raise _fail("labels must be a list of strings", type(self.labels).__name__,
                        "pass labels as e.g. model.wv.index_to_key")
        try:
            self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        except (TypeError, ValueError):
            raise _fail("vectors must be numeric", type(self.vectors).__name__,
                        "pass an array of shape (n, dim)") from None
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.labels):
            raise _fail("vectors must have shape (len(labels), dim)",
                        (self.vectors.shape, len(self.labels)), "pass one row per label")
        metadata = _check_json_dict("metadata", self.metadata)
        for col, values in metadata.items():
            values = list(values.tolist() if isinstance(values, np.ndarray) else values)
            if len(values) != len(self.labels):
                raise _fail(f"metadata column {col!r} must have one value per label",
                            len(values), f"give it {len(self.labels)} values")
            metadata[col] = values
        self.metadata = metadata
        self.created = _to_float("created", self.created)
        computed = content_key(self.labels, self.vectors)
        if self.key and self.key != computed:
            raise _fail("embedding key does not match its labels and vectors", self.key,
                        "leave key empty so the store computes it")
        self.key = computed

    @classmethod
    def trusted(cls, **fields: Any) -> EmbeddingSet:
        """A set read back from a store, which checked and hashed it when it was written
        (a million 300-d vectors take seconds to hash again). Every field is given."""
        obj = cls.__new__(cls)
        obj.__dict__.update(fields)
        return obj

    @property
    def n(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return {"type": "embedding", "key": self.key, "name": self.name,
                "session": self.session, "iteration": self.iteration, "created": self.created,
                "labels": self.labels, "vectors": self.vectors, "metadata": self.metadata}


def content_key(labels: list[str], vectors: np.ndarray) -> str:
    """A hash of labels and float32 vectors (hex, 32 characters)."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\x1f".join(labels).encode("utf-8", "surrogatepass"))
    h.update(str(vectors.shape).encode())
    h.update(np.ascontiguousarray(vectors, dtype=np.float32).data.cast("B"))
    return h.hexdigest()


@dataclass
class Projection:
    """A low-dimensional projection of an embedding set, possibly still running.

    ``coords``: ndarray of shape (n, n_components), float32, or None before the first
    iteration. Writing a projection with an ``id`` already stored replaces it (progress).
    """

    embedding: str
    method: str
    params: dict = field(default_factory=dict)
    coords: np.ndarray | None = None
    quality: dict = field(default_factory=dict)
    state: str = "pending"
    progress: float = 0.0
    iteration: int = 0
    message: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _check_str("embedding key", self.embedding)
        _check_str("method", self.method)
        _check_str("projection id", self.id)
        _check_int("iteration", self.iteration)
        self.params = _check_json_dict("params", self.params)
        self.quality = _check_json_dict("quality", self.quality)
        if self.state not in PROJECTION_STATES:
            raise _fail(f"state must be one of {PROJECTION_STATES}", self.state, "pick one")
        self.progress = _to_float("progress", self.progress)
        if not 0.0 <= self.progress <= 1.0:
            raise _fail("progress must be within [0, 1]", self.progress, "pass a fraction")
        if self.coords is not None:
            self.coords = np.ascontiguousarray(self.coords, dtype=np.float32)
            if self.coords.ndim != 2:
                raise _fail("coords must have shape (n, n_components)", self.coords.shape,
                            "pass one row per point")
        self.created = _to_float("created", self.created)
        self.updated = _to_float("updated", self.updated)

    def to_dict(self) -> dict:
        return {"type": "projection", "id": self.id, "embedding": self.embedding,
                "method": self.method, "params": self.params, "coords": self.coords,
                "quality": self.quality, "state": self.state, "progress": self.progress,
                "iteration": self.iteration, "message": self.message,
                "created": self.created, "updated": self.updated}


Record = Union[Session, Static, Update, Metric, Finding, EmbeddingSet, Projection]
RECORD_TYPES: dict[str, type] = {
    "session": Session, "static": Static, "update": Update, "metric": Metric,
    "finding": Finding, "embedding": EmbeddingSet, "projection": Projection,
}


def record_from_dict(d: dict) -> Record:
    """The record a ``to_dict`` dict describes; raises InvalidRecordError on a bad dict."""
    if not isinstance(d, dict):
        raise _fail("a record must be a JSON object", type(d).__name__, "one object per line")
    kind = d.get("type")
    if kind not in RECORD_TYPES:
        raise _fail("unknown record type", kind, f"use one of {sorted(RECORD_TYPES)}")
    fields = {k: v for k, v in d.items() if k != "type"}
    if kind == "session":
        fields["id"] = fields.pop("session", None)
    try:
        return RECORD_TYPES[kind](**fields)
    except TypeError as exc:  # missing or unexpected fields
        raise InvalidRecordError(f"bad {kind} record: {exc}: export it again with "
                                 "`embedviz export`") from None


def split_summary_key(key: str) -> tuple[str, str]:
    """``"update/fc1.weight"`` -> ``("update", "fc1.weight")``."""
    kind, sep, name = key.partition("/") if isinstance(key, str) else ("", "", "")
    if not sep or kind not in KINDS or not name:
        raise _fail(f"summary keys must be '<kind>/<name>' with kind one of {KINDS}", key,
                    "e.g. 'update/fc1.weight'")
    return kind, name


def split_stat_key(key: str) -> tuple[str, str] | None:
    """``"update/fc1.weight/stdev"`` -> ``("update/fc1.weight", "stdev")``; None if not a
    summary statistic key."""
    target, sep, stat = key.rpartition("/")
    if sep and stat in STATS and target.partition("/")[0] in KINDS and "/" in target:
        return target, stat
    return None

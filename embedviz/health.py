"""Health checks: the troubleshooting advice of the seeds (Deeplearning4j's visualization and
tuning guides, the cs231n and "debugging neural networks" notes), executable.

Pure functions of the reported series (no torch, no Bokeh). :class:`Checker` takes records
in the order they were written (:class:`~embedviz.records.Static` for the layer table,
:class:`~embedviz.records.Update`, :class:`~embedviz.records.Metric`) and gives
:class:`~embedviz.records.Finding` s: once per episode of a (check, layer), when it has held
long enough to not be noise, dated to the report where it began. The listener runs one on
its background path; :func:`check_session` replays a stored session through a new one, so
it gives the same findings.

Every threshold is a named parameter of its check (``CHECKS``), with the seeds' values as
defaults: ``Checker(num_classes=10, options={"dead_units": {"threshold": 0.95}})``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedviz.errors import InvalidRecordError
from embedviz.records import Finding, Metric, Record, Static, Update

#: how many reports of each series a checker keeps
WINDOW = 40
RELU_TYPES = ("ReLU", "ReLU6", "Threshold", "Hardtanh")
TANH_TYPES = ("Tanh", "Hardtanh", "Softsign")
SIGMOID_TYPES = ("Sigmoid", "Hardsigmoid")
WEIGHT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Bilinear", "LazyLinear")

#: each check, its severity and its parameters with their defaults
CHECKS: dict[str, tuple[str, dict[str, Any]]] = {
    "nan": ("error", {}),
    "loss_diverging": ("error", {"jump": 10.0, "rise": 3.0, "reports": 4}),
    "loss_flat": ("warning", {"window": 20, "min_fall": 0.01, "min_progress": 0.1}),
    "loss_noisy": ("info", {"window": 20, "ratio": 0.5}),
    "initial_loss": ("warning", {"tolerance": 0.5}),
    "update_ratio_high": ("warning", {"above": -1.0, "reports": 5, "warmup": 2}),
    "update_ratio_low": ("warning", {"below": -4.0, "reports": 5, "annealed": 0.5}),
    "exploding_gradients": ("error", {"spike": 100.0, "growth": 1000.0, "window": 10}),
    "vanishing_gradients": ("warning", {"orders": 3.0, "reports": 5}),
    "dead_units": ("warning", {"threshold": 0.9, "reports": 5}),
    "saturation": ("warning", {"threshold": 0.9, "reports": 5}),
    "activation_scale": ("info", {"low": 0.5, "high": 2.0, "warmup": 10, "reports": 5}),
    "parameters_diverging": ("warning", {"growth": 10.0, "still": 0.1, "reports": 5}),
    "bias_growing": ("info", {"growth": 2.0, "reports": 10}),
    "overfitting": ("warning", {"rise": 0.05, "points": 2}),
}
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
#: reports a check's condition must be absent before its episode ends (and a new one may begin)
CLEAR = 3


@dataclass
class Hit:
    """A check's condition holding now: where, since which iteration, the value and band."""

    layer: str | None
    began: int
    value: float
    band: str
    message: str
    episode: str | None = field(default=None)  # (None: the layer)


class History:
    """The last ``WINDOW`` reports of each series a check reads, and the first of each."""

    #: what the checks read of each kind (NaN and Inf only of the newest report: ``bad``)
    STATS = {"activation": ("mean", "stdev", "mean_magnitude", "zero_fraction")}
    OTHER = ("mean_magnitude",)

    def __init__(self) -> None:
        self.iterations: deque[int] = deque(maxlen=WINDOW)
        self.scores: deque[float] = deque(maxlen=WINDOW)
        self.all_scores: list[tuple[int, float]] = []  # (few: one per report)
        self.values: dict[tuple[str, str], deque] = {}
        self.first: dict[tuple[str, str], float] = {}
        self.layers: list[dict] = []
        self.order: list[str] = []  # modules in forward order
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.reports = 0
        self.start = self.best = math.nan  # (the first finite score, the lowest)
        self.lr = math.nan  # (the first parameter group's, now and at most)
        self.max_lr = math.nan
        self.bad: set[str] = set()
        self.memo: dict = {}  # (what the checks derive from this report's keys)
        self._by_name: dict[str, dict] = {}

    def set_model(self, layers: list[dict], order: list[str]) -> None:
        self.layers, self.order = layers, order
        self._by_name = {str(layer.get("name")): layer for layer in layers}
        self.memo = {}

    def add(self, u: Update) -> None:
        self.reports += 1
        self.memo = {}
        self.iterations.append(u.iteration)
        score = math.nan if u.score is None else float(u.score)
        self.scores.append(score)
        self.all_scores.append((u.iteration, score))
        if math.isfinite(score):
            self.start = score if math.isnan(self.start) else self.start
            self.best = score if not self.best <= score else self.best
        lrs = [float(v) for k, v in u.scalars.items() if k.startswith("lr/")]
        if lrs:
            self.lr = lrs[0]
            self.max_lr = self.lr if not self.max_lr >= self.lr else self.max_lr
        seen = set()
        #: the tensors with a NaN or Inf in this report
        self.bad = {key for key, sm in u.summaries.items() if sm.nan_count > 0 or sm.inf_count > 0}
        for key, sm in u.summaries.items():
            for stat in self.STATS.get(key.partition("/")[0], self.OTHER):
                k = (key, stat)
                value = float(getattr(sm, stat))
                q = self.values.get(k)
                if q is None:
                    q = self.values[k] = deque([math.nan] * (len(self.iterations) - 1), maxlen=WINDOW)
                    self.first[k] = value
                q.append(value)
                seen.add(k)
        if len(seen) != len(self.values):
            for k, q in self.values.items():
                if k not in seen:
                    q.append(math.nan)

    def matrix(self, kind: str, stat: str) -> tuple[list[str], np.ndarray]:
        """Every tensor of ``kind``: their names and a (tensors, reports) array of ``stat``."""
        got = self.memo.get(("matrix", kind, stat))
        if got is None:
            names = self.keys(kind)
            rows = [self.values[(f"{kind}/{n}", stat)] for n in names]
            got = self.memo[("matrix", kind, stat)] = (
                names, np.array(rows, dtype=float).reshape(len(names), len(self.iterations)))
        return got

    def series(self, key: str, stat: str, n: int | None = None) -> np.ndarray:
        q = self.values.get((key, stat))
        if q is None:
            return np.empty(0)
        a = np.fromiter(q, float, len(q))
        return a if n is None else a[-n:]

    def keys(self, kind: str) -> list[str]:
        """Tensor names of ``kind`` that have series, in forward order where known."""
        got = self.memo.get(("keys", kind))
        if got is None:
            got = self.memo[("keys", kind)] = self._keys(kind)
        return got

    def _keys(self, kind: str) -> list[str]:
        prefix = kind + "/"
        names = {k[0][len(prefix):] for k in self.values
                 if k[1] == "mean_magnitude" and k[0].startswith(prefix)}
        rank = {m: i for i, m in enumerate(self.order)}

        def where(name: str) -> tuple[int, str]:
            module = name if kind == "activation" else name.rpartition(".")[0]
            return (rank.get(module, len(rank)), name)

        return sorted(names, key=where)

    def layer(self, module: str) -> dict:
        return self._by_name.get(module, {})

    def began(self, held: np.ndarray) -> int:
        """The iteration where the trailing run of True in ``held`` began."""
        n = len(held)
        k = n - 1
        while k > 0 and held[k - 1]:
            k -= 1
        its = list(self.iterations)
        return its[len(its) - n + k]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _trailing(held: np.ndarray, n: int) -> bool:
    return len(held) >= n and bool(held[-n:].all())


# ---------------------------------------------------------------------------- the checks
def nan(h: History) -> list[Hit]:
    if not h.bad and math.isfinite(h.scores[-1]):
        return []
    bad = [k for k in h.keys("activation") if _bad(h, f"activation/{k}")]
    where = [f"activation/{k}" for k in bad]
    for kind in ("param", "gradient", "update"):
        where += [f"{kind}/{k}" for k in h.keys(kind) if _bad(h, f"{kind}/{k}")]
    score = h.scores[-1]
    if not where and math.isfinite(score):
        return []
    first = where[0] if where else "the loss"
    layer = first.split("/", 1)[1] if where else None
    return [Hit(layer, h.iterations[-1], score, "finite",
                f"NaN or Inf first appeared in {first} (score {_fmt(score)}). Lower the learning "
                "rate, clip gradients (torch.nn.utils.clip_grad_norm_), look for NaN in the "
                "inputs, and use a stable loss (CrossEntropyLoss on logits, not log of a softmax).",
                episode="")]


def _bad(h: History, key: str) -> bool:
    return key in h.bad


def loss_diverging(h: History, jump: float, rise: float, reports: int) -> list[Hit]:
    s = np.array(h.scores)
    finite = s[np.isfinite(s)]
    if len(finite) < 3 or not math.isfinite(s[-1]):
        return []
    best, start = h.best, h.start
    recent = np.median(finite[-11:-1])
    now = s[-1]
    # (a noisy batch of a well-trained net can be 10x its neighbours: a jump must also
    # leave the score above where training began)
    jumped = recent > 0 and now > jump * recent and now > start
    climbing = (len(s) > reports and best > 0 and now > rise * best
                and bool(np.all(np.diff(s[-reports - 1:]) > 0)))
    if not (jumped or climbing):
        return []
    k = len(s) - 1  # (it began with the first report of the rise that ends here)
    while k > 0 and s[k - 1] < s[k]:
        k -= 1
    since = h.iterations[min(k + 1, len(s) - 1)]
    return [Hit(None, since, float(now), f"< {_fmt(jump)}x the recent median, < {_fmt(rise)}x the best",
                f"The score is diverging: {_fmt(now)} against a best of {_fmt(best)}. Lower "
                "the learning rate (try 10x lower), clip gradients, check the loss for a sign error.",
                episode="")]


def loss_flat(h: History, window: int, min_fall: float, min_progress: float) -> list[Hit]:
    s = np.array(h.scores)[-window:]
    if len(s) < window or not np.isfinite(s).all():
        return []
    third = window // 3
    level = abs(float(np.median(s)))
    fall = float(np.mean(s[:third]) - np.mean(s[-third:]))
    noise = float(np.median(np.abs(np.diff(s)))) / math.sqrt(third)
    start = np.median([v for _, v in h.all_scores[:3]])
    progress = (start - np.median(s[-third:])) / abs(start) if start else 0.0
    if fall > max(2 * noise, min_fall * level) or progress > min_progress:
        return []
    return [Hit(None, h.iterations[-window], fall / level if level else fall,
                f"a fall of > {_fmt(min_fall)} of the level per {window} reports",
                f"The score is not falling: {_fmt(float(s[-1]))}, {_fmt(100 * float(progress))}% "
                f"below where it started. Try a 10x higher learning rate; check that gradients "
                "reach the parameters (the update:param ratio) and that labels match inputs.",
                episode="")]


def loss_noisy(h: History, window: int, ratio: float) -> list[Hit]:
    s = np.array(h.scores)[-window:]
    if len(s) < window or not np.isfinite(s).all():
        return []
    x = np.arange(len(s)) - (len(s) - 1) / 2
    level = abs(float(np.mean(s)))
    slope = float(x @ (s - s.mean())) / float(x @ x)
    r = float(np.std(s - s.mean() - slope * x)) / level if level else 0.0
    if r <= ratio:
        return []
    return [Hit(None, h.iterations[-window], r, f"noise / level <= {_fmt(ratio)}",
                f"The score is noisy: its scatter is {_fmt(100 * r)}% of its level. A larger "
                "batch or a lower learning rate steadies it.", episode="")]


def initial_loss(h: History, tolerance: float, num_classes: int | None = None) -> list[Hit]:
    if not num_classes or num_classes < 2 or h.reports != 1 or not math.isfinite(h.scores[0]):
        return []
    chance = math.log(num_classes)
    s0 = h.scores[0]
    if abs(s0 / chance - 1) <= tolerance:
        return []
    return [Hit(None, h.iterations[0], s0, f"ln({num_classes}) = {chance:.3f} +/- {_fmt(100 * tolerance)}%",
                f"The first score is {_fmt(s0)}; at chance a {num_classes}-class cross-entropy is "
                f"ln({num_classes}) = {chance:.2f}. Initial weights too large or a biased last layer: "
                "use a standard initialisation, zero the last layer's bias.", episode="")]


def _weights(h: History) -> list[str]:
    """Parameters with a weight matrix (2 or more dimensions where the layer table says)."""
    got = h.memo.get("weights")
    if got is None:
        got = h.memo["weights"] = _find_weights(h)
    return got


def _find_weights(h: History) -> list[str]:
    out = []
    for p in h.keys("param"):
        module, _, own = p.rpartition(".")
        shape = h.layer(module).get("params", {}).get(own)
        if (shape is not None and len(shape) >= 2) or (shape is None and own == "weight"):
            out.append(p)
    return out


def _ratio(h: History, p: str) -> np.ndarray:
    got = h.memo.get(("ratio", p))
    if got is None:
        got = h.memo[("ratio", p)] = _log_ratio(h, p)
    return got


def _log_ratio(h: History, p: str) -> np.ndarray:
    u = h.series(f"update/{p}", "mean_magnitude")
    w = h.series(f"param/{p}", "mean_magnitude")
    n = min(len(u), len(w))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(u[len(u) - n:] / w[len(w) - n:])


def update_ratio_high(h: History, above: float, reports: int, warmup: int) -> list[Hit]:
    # (the seeds' "about -3, worry above -2": every healthy run of the zoo, SGD and Adam
    # alike, spends its first hundred iterations between -2 and -1.5; the broken one is
    # above -1, so -1 is the default)
    if h.reports <= warmup:
        return []
    out = []
    for p in _weights(h):
        r = _ratio(h, p)
        held = r > above
        if _trailing(held, reports):
            out.append(Hit(p, h.began(held), float(np.median(r[-reports:])), f"log10 ratio <= {above:g}",
                           f"Updates of {p} are large against its values (log10 update:param "
                           f"{r[-1]:.2f}, about -3 is healthy): lower the learning rate."))
    return out


def update_ratio_low(h: History, below: float, reports: int, annealed: float) -> list[Hit]:
    if h.max_lr > 0 and h.lr < annealed * h.max_lr:
        return []  # (a schedule lowered the learning rate: small updates are its purpose)
    out = []
    for p in _weights(h):
        r = _ratio(h, p)
        held = r < below
        if _trailing(held, reports):
            out.append(Hit(p, h.began(held), float(np.median(r[-reports:])), f"log10 ratio >= {below:g}",
                           f"Updates of {p} are tiny against its values (log10 update:param "
                           f"{r[-1]:.2f}, about -3 is healthy): raise the learning rate, or check "
                           "that this parameter is meant to learn."))
    return out


def exploding_gradients(h: History, spike: float, growth: float, window: int) -> list[Hit]:
    names, g = h.matrix("gradient", "mean_magnitude")
    if g.shape[1] < 4:
        return []
    now, before = g[:, -1], g[:, -window - 1:-1]
    first = np.array([h.first.get((f"gradient/{p}", "mean_magnitude"), np.nan) for p in names])
    with np.errstate(all="ignore"):
        # (the window's smallest finite value first: its median is needed only where now is
        # far above that, which is rare)
        low = np.fmin.reduce(np.where(np.isfinite(before), before, np.nan), axis=1)
        grown = (first > 0) & (now > growth * first)
        maybe = np.isfinite(now) & (((low > 0) & (now > spike * low)) | grown)
    out = []
    for i in np.flatnonzero(maybe):
        p = names[i]
        finite = before[i][np.isfinite(before[i])]
        med = float(np.median(finite)) if finite.size else math.nan
        if med > 0 and now[i] > spike * med:
            why = f"{_fmt(now[i] / med)}x its recent median"
        elif grown[i]:
            why = f"{_fmt(now[i] / first[i])}x its first report"
        else:
            continue
        out.append(Hit(p, h.iterations[-1], float(now[i]), f"< {_fmt(spike)}x the recent median",
                       f"The gradient of {p} exploded: mean |gradient| {_fmt(now[i])}, {why}. Clip "
                       "gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, "
                       "normalize the inputs."))
    return out


def vanishing_gradients(h: History, orders: float, reports: int) -> list[Hit]:
    ws = [p for p in _weights(h) if (f"gradient/{p}", "mean_magnitude") in h.values]
    if len(ws) < 3:
        return []
    first = h.series(f"gradient/{ws[0]}", "mean_magnitude")
    last = h.series(f"gradient/{ws[-1]}", "mean_magnitude")
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.log10(first / last)
    held = gap < -orders
    if not _trailing(held, reports):
        return []
    return [Hit(ws[0], h.began(held), float(gap[-1]), f"log10(first / last layer) >= -{orders:g}",
                f"Gradients vanish on the way back: {ws[0]} gets 10^{gap[-1]:.1f} of the gradient "
                f"{ws[-1]} gets. Use ReLU-family activations, normalization layers, residual "
                "connections or a better initialisation.")]


def _named(h: History, module: str) -> str:
    kind = h.layer(module).get("type")
    return f"{module} ({kind})" if kind else module


def _typed(h: History, types: tuple[str, ...]) -> list[str]:
    return [m for m in h.keys("activation") if h.layer(m).get("type") in types]


def dead_units(h: History, threshold: float, reports: int) -> list[Hit]:
    out = []
    for m in _typed(h, RELU_TYPES):
        z = h.series(f"activation/{m}", "zero_fraction")
        held = z >= threshold
        if _trailing(held, reports):
            out.append(Hit(m, h.began(held), float(z[-1]), f"zero fraction < {threshold:g}",
                           f"{_fmt(100 * z[-1])}% of {_named(h, m)}'s outputs are 0 and stay 0 (dying ReLUs). "
                           "Lower the learning rate, check for large negative biases, or use "
                           "LeakyReLU."))
    return out


def saturation(h: History, threshold: float, reports: int) -> list[Hit]:
    out = []
    for m in _typed(h, TANH_TYPES + SIGMOID_TYPES):
        if h.layer(m).get("type") in SIGMOID_TYPES:  # (outputs in [0, 1]: distance from 0.5)
            mean, sd = h.series(f"activation/{m}", "mean"), h.series(f"activation/{m}", "stdev")
            piled = np.sqrt((mean - 0.5) ** 2 + sd ** 2) * 2
        else:
            piled = h.series(f"activation/{m}", "mean_magnitude")
        held = piled >= threshold
        if _trailing(held, reports):
            out.append(Hit(m, h.began(held), float(piled[-1]), f"mean distance from the centre < {threshold:g}",
                           f"{_named(h, m)}'s outputs are piled at their bounds (saturated: their gradients "
                           "vanish). Scale the inputs, use a smaller initialisation, or ReLU."))
    return out


def activation_scale(h: History, low: float, high: float, warmup: int, reports: int) -> list[Hit]:
    if h.reports <= warmup:
        return []
    out = []
    for m in _typed(h, WEIGHT_TYPES):
        sd = h.series(f"activation/{m}", "stdev")
        held = (sd < low) | (sd > high)
        if _trailing(held, reports):
            out.append(Hit(m, h.began(held), float(sd[-1]), f"stdev in [{low:g}, {high:g}]",
                           f"{_named(h, m)}'s outputs have a stdev of {_fmt(sd[-1])}, outside [{low:g}, "
                           f"{high:g}]: consider normalization or another initialisation."))
    return out


def parameters_diverging(h: History, growth: float, still: float, reports: int) -> list[Hit]:
    out = []
    for p in _weights(h):  # (a bias starts at 0: any growth is "without bound")
        w = h.series(f"param/{p}", "mean_magnitude")
        first = h.first.get((f"param/{p}", "mean_magnitude"), math.nan)
        if len(w) <= reports or not first > 0:
            continue
        held = (w > growth * first) & np.r_[False, np.diff(w) > 0]
        if _trailing(held, reports) and w[-1] > (1 + still) * w[-reports - 1]:
            out.append(Hit(p, h.began(held), float(w[-1] / first), f"< {_fmt(growth)}x its first value",
                           f"{p} keeps growing: its mean |value| is {_fmt(w[-1] / first)}x what it "
                           "was. Add weight decay, lower the learning rate."))
    return out


def bias_growing(h: History, growth: float, reports: int) -> list[Hit]:
    biases = [p for p in h.keys("param") if p.endswith("bias")]
    if not biases:
        return []
    p = biases[-1]  # (the output layer's)
    b = h.series(f"param/{p}", "mean_magnitude")[-reports - 1:]
    if len(b) <= reports or not b[0] > 0:
        return []
    if not (np.all(np.diff(b) > 0) and b[-1] > growth * b[0]):
        return []
    return [Hit(p, h.iterations[-reports - 1], float(b[-1] / b[0]), f"< {_fmt(growth)}x in {reports} reports",
                f"The output layer's bias {p} keeps growing ({_fmt(b[-1] / b[0])}x in {reports} "
                "reports): the classes may be imbalanced; reweight the loss or resample.")]


def overfitting(h: History, rise: float, points: int) -> list[Hit]:
    out = []
    for name, pts in h.metrics.items():
        low = name.lower()
        if "loss" not in low or len(pts) < points + 2:
            continue
        its = np.array([p[0] for p in pts])
        vals = np.array([p[1] for p in pts])
        best = int(np.nanargmin(vals))
        if best >= len(vals) - points or not np.all(np.diff(vals[best:]) > 0):
            continue
        if not vals[best] > 0 or vals[-1] <= vals[best] * (1 + rise):
            continue
        cut = bisect.bisect_right(h.all_scores, (int(its[best]), math.inf))
        at = [v for _, v in h.all_scores[max(0, cut - 3):cut] if math.isfinite(v)]
        after = [v for _, v in h.all_scores[-3:] if math.isfinite(v)] if cut < len(h.all_scores) else []
        if not at or not after or np.mean(after) >= np.mean(at):
            continue
        out.append(Hit(None, int(its[best]), float(vals[-1] / vals[best]),
                       f"< {_fmt(1 + rise)}x its best", f"{name} has risen {_fmt(100 * (vals[-1] / vals[best] - 1))}% "
                       f"since iteration {its[best]} while the training score fell: the model "
                       "is overfitting. Stop early (keep the weights of its best), add "
                       "regularization (weight decay, dropout) or more data.", episode=name))
    return out


RULES: dict[str, Callable[..., list[Hit]]] = {
    "nan": nan, "loss_diverging": loss_diverging, "loss_flat": loss_flat, "loss_noisy": loss_noisy,
    "initial_loss": initial_loss, "update_ratio_high": update_ratio_high,
    "update_ratio_low": update_ratio_low, "exploding_gradients": exploding_gradients,
    "vanishing_gradients": vanishing_gradients, "dead_units": dead_units, "saturation": saturation,
    "activation_scale": activation_scale, "parameters_diverging": parameters_diverging,
    "bias_growing": bias_growing, "overfitting": overfitting,
}


class Checker:
    """Runs every check over the records of one session worker as they come.

    ``num_classes``: the classes of a cross-entropy score (the chance level for
    ``initial_loss``). ``options``: per check, parameters to change
    (``{"dead_units": {"threshold": 0.95}}``), or False to turn it off."""

    def __init__(self, num_classes: int | None = None, options: dict | None = None) -> None:
        self.num_classes = num_classes
        self.params: dict[str, dict] = {}
        options = dict(options or {})
        for name in options:
            if name not in CHECKS:
                raise InvalidRecordError(f"no health check named {name!r}: the checks are "
                                         f"{', '.join(CHECKS)}")
        for name, (_, defaults) in CHECKS.items():
            given = options.get(name, {})
            if given is False:
                continue
            unknown = set(given) - set(defaults)
            if unknown:
                raise InvalidRecordError(f"health check {name!r} has no parameter "
                                         f"{sorted(unknown)[0]!r}: it takes {', '.join(defaults) or 'none'}")
            self.params[name] = {**defaults, **given}
        self.history: dict[tuple[str, str], History] = {}
        #: (session, worker, check, episode) -> reports since the condition last held
        self.active: dict[tuple, int] = {}

    def _history(self, session: str, worker: str) -> History:
        h = self.history.get((session, worker))
        if h is None:
            h = self.history[(session, worker)] = History()
        return h

    def feed(self, records: Iterable[Record]) -> list[Finding]:
        """The findings that begin with these records (written after them)."""
        found: list[Finding] = []
        for r in records:
            if isinstance(r, Static):
                h = self._history(r.session, r.worker)
                model = r.info.get("model", {}) if isinstance(r.info, dict) else {}
                layers = list(model.get("layers", []))
                order = model.get("graph", {}).get("execution_order") or []
                h.set_model(layers, list(order) or [layer.get("name") for layer in layers])
            elif isinstance(r, Metric):
                self._history(r.session, r.worker).metrics.setdefault(r.name, []).append(
                    (r.iteration, float(r.value)))
            elif isinstance(r, Update):
                h = self._history(r.session, r.worker)
                h.add(r)
                found += self._run(r.session, r.worker, h, r.wall_time)
        return found

    def _run(self, session: str, worker: str, h: History, wall_time: float) -> list[Finding]:
        out = []
        holding = set()
        for name, params in self.params.items():
            kw = dict(params)
            if name == "initial_loss":
                kw["num_classes"] = self.num_classes
            try:
                hits = RULES[name](h, **kw)
            except (ValueError, FloatingPointError, ZeroDivisionError):
                continue  # (a degenerate window: the next report decides)
            for hit in hits:
                key = (session, worker, name, hit.layer if hit.episode is None else hit.episode)
                holding.add(key)
                if key not in self.active:
                    out.append(Finding(session, name, hit.message, iteration=int(hit.began),
                                       worker=worker, severity=CHECKS[name][0], layer=hit.layer,
                                       detail={"value": _json(hit.value), "band": hit.band,
                                               "found_at": int(h.iterations[-1])},
                                       wall_time=wall_time))
                self.active[key] = 0
        for key in list(self.active):
            if key[:2] == (session, worker) and key not in holding:
                self.active[key] += 1
                if self.active[key] >= CLEAR:
                    del self.active[key]
        return out


def _json(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


def check_records(records: Iterable[Record], num_classes: int | None = None,
                  options: dict | None = None) -> list[Finding]:
    """Every finding of these records (a session's, in the order they were written)."""
    return Checker(num_classes, options).feed(records)


def check_session(store: Any, session: str, num_classes: int | None = None,
                  options: dict | None = None) -> list[Finding]:
    """Replay a stored session through the checks: the findings the listener gave while it
    ran (``num_classes`` defaults to the one it was given)."""
    info = store.session(session)
    if num_classes is None:
        num_classes = (info.info or {}).get("num_classes")
    records = list(store.records(session))
    # the order they were written: a metric after the update of its iteration
    stream: list[Record] = [r for r in records if isinstance(r, Static)]
    timed: list[Record] = [r for r in records if isinstance(r, (Update, Metric))]
    timed.sort(key=lambda r: (r.worker, r.iteration, isinstance(r, Metric)))  # type: ignore[union-attr]
    return check_records(stream + timed, num_classes, options)

"""Health checks: the troubleshooting advice of the seeds (Deeplearning4j's visualization and
tuning guides, the cs231n and "debugging neural networks" notes), executable.

Pure functions of the reported series (no torch, no Bokeh). :class:`Checker` takes records
in the order they were written (:class:`~embedviz.records.Static` for the layer table,
:class:`~embedviz.records.Update`, :class:`~embedviz.records.Metric`) and gives
:class:`~embedviz.records.Finding` s: once per episode of a (check, layer), when it has held
long enough to not be noise, dated to the report where it began. The listener runs one on
its background path; :func:`check_session` replays a stored session through a new one, so
it gives the same findings.

Each check is declared once, where its function is: its severity, its parameters with the
seeds' values as defaults, its message in English and Japanese, which way its advice moves
the learning rate, and the checks it explains (``CHECKS`` lists them:
``Checker(num_classes=10, options={"dead_units": {"threshold": 0.95}})``). What a check
needs beyond the series it reads of the history's :class:`Context`: the classes, the
score's objective, the other workers of the session. A finding keeps its message's
arguments (``detail["args"]``, ``detail["value"]`` among them: the number the message
shows), so :func:`describe` renders it in either language.

Findings that share a cause are one: a check that explains another (``explains``: dead
ReLUs explain the tiny updates of the weights beside them) lists that one's hits as the
consequences of its finding (``detail["consequences"]``), with one piece of advice; a
consequence found after its cause's finding is information naming that cause
(``detail["caused_by"]``), never advice of its own.

Scores are judged against their own noise and scale (a loss near zero that wobbles is not
diverging), and by their objective: one side of a game (``objective="adversarial"``, or two
workers of a session whose losses move against each other) is not meant to fall.
"""

from __future__ import annotations

import bisect
import math
import os
import string
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from embedviz.errors import InvalidRecordError
from embedviz.layers import forward_order, layer_table, sort_tensors, weight_names
from embedviz.records import Finding, Metric, Record, Static, Update

#: how many reports of each series a checker keeps
WINDOW = 40
RELU_TYPES = ("ReLU", "ReLU6", "Threshold", "Hardtanh")
TANH_TYPES = ("Tanh", "Hardtanh", "Softsign")
SIGMOID_TYPES = ("Sigmoid", "Hardsigmoid")
#: tables whose rows learn only when their tokens are in the batch (a low mean update is their way)
SPARSE_TYPES = ("Embedding", "EmbeddingBag")
WEIGHT_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Bilinear", "LazyLinear")
LANGUAGES = ("en", "ja")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
#: the severities in each language
SEVERITY_TEXT = {"en": {"error": "error", "warning": "warning", "info": "info"},
                 "ja": {"error": "エラー", "warning": "警告", "info": "情報"}}
#: reports a check's condition must be absent before its episode ends (and a new one may begin)
CLEAR = 3


@dataclass
class Trend:
    """A metric's course, kept a point at a time (a metric logged every step of a long run
    is neither kept nor walked whole): how many points, where its lowest was (the first of
    equals; NaN is never lowest), whether every value since has risen, its last value."""

    n: int = 0
    best: int = -1
    best_iteration: int = 0
    low: float = math.inf
    rising: bool = False
    last: float = math.nan

    def add(self, iteration: int, value: float) -> None:
        if value < self.low:
            self.best, self.best_iteration, self.low, self.rising = self.n, int(iteration), value, True
        elif self.best >= 0:
            self.rising = self.rising and value > self.last
        self.last = value
        self.n += 1


@dataclass
class Hit:
    """A check's condition holding now: where, since which iteration, the value (the number
    its message shows), the healthy band, the message's other arguments and which of the
    check's messages (``variant``: "" for its main one)."""

    layer: str | None
    began: int
    value: float
    band: str
    args: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    episode: str | None = None  # (None: the layer)


class Check(NamedTuple):
    """One health check: the severity of its findings, its parameters with their defaults,
    the function that looks for it (``find(history, **params) -> list[Hit]``; what it needs
    beyond the series, it reads of ``history.context``) and its message templates,
    ``text[lang][variant]``, with named arguments (``{value:.3g}``).

    ``explains``: the checks whose conditions this one's causes, with where
    (:data:`SCOPES`): a hit of theirs there, while this one holds, is a consequence listed
    in this one's finding, not a finding with advice of its own. ``short``: the check as a
    phrase, per language (how a consequence or a cause is named in another's message).
    ``lr``: which way its advice moves the learning rate (-1 lower, +1 raise, 0 neither)."""

    severity: str
    params: dict[str, Any]
    find: Callable[..., list[Hit]]
    text: dict[str, dict[str, str]]
    explains: dict[str, str] = {}
    short: dict[str, str] = {}
    lr: int = 0


#: every check by name, in the order they run: ``CHECKS["dead_units"].params`` are its defaults
CHECKS: dict[str, Check] = {}


#: where a cause explains a consequence (``Check.explains``), while the cause holds: on the
#: same layer; on the weight layers next to it in forward order (the one feeding it and the
#: one it feeds); on any layer of the worker. "after": on any layer, for the rest of the run
#: once the cause was found (a network that diverged or went NaN is not then too slow)
SCOPES = ("same", "adjacent", "any", "after")


def check(severity: str, params: dict[str, Any], *, en: str | dict[str, str],
          ja: str | dict[str, str], short: dict[str, str] | None = None,
          explains: dict[str, str] | None = None,
          lr: int = 0) -> Callable[[Callable[..., list[Hit]]], Callable[..., list[Hit]]]:
    """Declare the function below as a check (named after it) with its severity, parameters
    and messages (one template, or ``{variant: template}`` with "" the main one), its short
    phrase (``{"en": ..., "ja": ...}``), the checks it explains (``{check: scope}``) and the
    way its advice moves the learning rate (see :class:`Check`)."""
    for scope in (explains or {}).values():
        if scope not in SCOPES:
            raise ValueError(f"explains: no scope {scope!r}: the scopes are {', '.join(SCOPES)}")

    def declare(find: Callable[..., list[Hit]]) -> Callable[..., list[Hit]]:
        text = {lang: t if isinstance(t, dict) else {"": t} for lang, t in (("en", en), ("ja", ja))}
        CHECKS[find.__name__] = Check(severity, params, find, text, dict(explains or {}),
                                      dict(short or {}), lr)
        return find
    return declare


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        # (NaN and Inf as text: how findings recorded by earlier versions hold them)
        if isinstance(value, str) and format_spec[-1:] in tuple("eEfFgG%"):
            try:
                value = float(value)
            except ValueError:
                pass
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()


def render(name: str, args: dict[str, Any], lang: str = "en", variant: str = "") -> str:
    """Check ``name``'s message ``variant`` in ``lang`` with ``args`` (KeyError when it has
    no such message or an argument is missing)."""
    return _FORMATTER.format(CHECKS[name].text[lang][variant], **args)


#: how a finding lists the consequences of its cause, and how a consequence found after
#: its cause's finding names that cause
CONSEQUENCES = {"en": " Consequences: {items}.", "ja": " その結果: {items}。"}
CONSEQUENCE_SEP = {"en": "; ", "ja": "、"}
CAUSED_BY = {"en": "{what}: a consequence of {cause} (found at iteration {iteration}); that "
                   "finding's advice applies.",
             "ja": "{what}: {cause} の結果です (イテレーション {iteration} で検出)。その所見の"
                   "対策を行ってください。"}


def short(name: str, args: dict[str, Any], lang: str = "en") -> str:
    """Check ``name`` as a phrase with ``args`` (its message when it declares no phrase)."""
    text = CHECKS[name].short.get(lang)
    return render(name, args, lang) if text is None else _FORMATTER.format(text, **args)


def render_finding(name: str, args: dict[str, Any], lang: str = "en", variant: str = "",
                   consequences: list | None = None, caused_by: dict | None = None) -> str:
    """A finding's whole message in ``lang``: its check's message with the consequences it
    explains listed (``[{"check", "args"}, ...]``), or, for a consequence found after its
    cause (``caused_by``: ``{"check", "args", "iteration"}``), the phrase naming that cause."""
    if caused_by:
        return CAUSED_BY[lang].format(what=short(name, args, lang),
                                      cause=short(caused_by["check"], caused_by["args"], lang),
                                      iteration=caused_by["iteration"])
    text = render(name, args, lang, variant)
    if consequences:
        text += CONSEQUENCES[lang].format(items=CONSEQUENCE_SEP[lang].join(
            short(c["check"], c["args"], lang) for c in consequences))
    return text


def describe(finding: Finding, lang: str = "en") -> str:
    """A stored finding's message in ``lang`` ("en" or "ja"); its stored English message
    when it has no arguments to render (a finding written by hand, imported, or by a check
    this version does not have)."""
    if lang not in LANGUAGES:
        raise ValueError(f"describe: no language {lang!r}: findings are described in "
                         f"{', '.join(LANGUAGES)}")
    detail = finding.detail
    args = detail.get("args")
    variant = detail.get("variant", "")
    if finding.check not in CHECKS or not isinstance(args, dict) or not isinstance(variant, str):
        return finding.message
    try:
        return render_finding(finding.check, args, lang, variant, detail.get("consequences"),
                              detail.get("caused_by"))
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        return finding.message  # (arguments of another version)


#: the objectives a score can have: "minimize" (the default: a loss to bring down) and
#: "adversarial" (a loss of one side of a game, as a GAN's generator's and discriminator's:
#: not meant to fall, judged only for a blow-up)
OBJECTIVES = ("minimize", "adversarial")

#: other workers' recent scores for (session, worker): ``{worker: scores}``, the scores a
#: sequence (the last ones, aligned by position) or a pair (iterations, scores)
Peers = Callable[[str, str], Mapping[str, Any]]


@dataclass
class Context:
    """What the checks know beyond a worker's series: the classes of a cross-entropy score,
    its objective, and the other workers of its session (``peers()``: ``{worker:
    (iterations, scores)}``, read when a check asks)."""

    num_classes: int | None = None
    objective: str | None = None
    peers: Callable[[], dict[str, tuple[np.ndarray, np.ndarray]]] = lambda: {}


class History:
    """The last ``WINDOW`` reports of each series a check reads, and the first of each."""

    #: what the checks read of each kind (NaN and Inf only of the newest report: ``bad``)
    STATS = {"activation": ("mean", "stdev", "mean_magnitude", "zero_fraction")}
    OTHER = ("mean_magnitude",)

    def __init__(self) -> None:
        self.iterations: deque[int] = deque(maxlen=WINDOW)
        #: the reports with a score (an imported histogram may come at a step without one)
        self.scores: deque[float] = deque(maxlen=WINDOW)
        self.score_iterations: deque[int] = deque(maxlen=WINDOW)
        self.scored = False  # (whether the newest report has a score)
        #: (kind, stat) of which some report had a finite value, and the scalars seen
        self.seen: set[tuple[str, str]] = set()
        self.summarised = False  # (some report had tensor statistics)
        self.all_scores: list[tuple[int, float]] = []  # (few: one per report)
        self.values: dict[tuple[str, str], deque] = {}
        self.first: dict[tuple[str, str], float] = {}
        self.static: dict = {}  # (the worker's static info: its layer table)
        self.order: list[str] = []  # modules in forward order
        self.metrics: dict[str, Trend] = {}  # (each metric's course, not its points)
        self.reports = 0
        self.start = self.best = math.nan  # (the first finite score, the lowest)
        self.lr = math.nan  # (the first parameter group's, now and at most)
        self.max_lr = math.nan
        self.bad: set[str] = set()
        #: the grad scaler's cumulative skipped steps and its scale, per report (NaN: none)
        self.skipped: deque[float] = deque(maxlen=WINDOW)
        self.amp_scale = math.nan
        self.context = Context()
        self.memo: dict = {}  # (what the checks derive from this report's values)
        self._by_name: dict[str, dict] = {}
        self._names: dict[str, set[str]] = {}  # kind -> tensors with series
        self._sorted: dict = {}  # (keys and weights, until a tensor or the model is new)

    def set_model(self, static: dict) -> None:
        self.static = static
        self.order = forward_order(static)
        self._by_name = {str(layer.get("name")): layer for layer in layer_table(static)}
        self._sorted = {}
        self.memo = {}

    def add(self, u: Update) -> None:
        self.reports += 1
        self.memo = {}
        self.iterations.append(u.iteration)
        self.scored = u.score is not None
        score = math.nan if u.score is None else float(u.score)
        if self.scored:
            self.scores.append(score)
            self.score_iterations.append(u.iteration)
            self.all_scores.append((u.iteration, score))
        if math.isfinite(score):
            self.start = score if math.isnan(self.start) else self.start
            self.best = score if not self.best <= score else self.best
        lrs = [float(v) for k, v in u.scalars.items() if k.startswith("lr/")]
        if lrs:
            self.lr = lrs[0]
            self.max_lr = self.lr if not self.max_lr >= self.lr else self.max_lr
        self.skipped.append(float(u.scalars.get("amp/skipped_steps", math.nan)))
        self.amp_scale = float(u.scalars.get("amp/scale", math.nan))
        seen = set()
        #: the tensors with a NaN or Inf in this report
        self.bad = {key for key, sm in u.summaries.items() if sm.nan_count > 0 or sm.inf_count > 0}
        self.summarised = self.summarised or bool(u.summaries)
        for key, sm in u.summaries.items():
            for stat in self.STATS.get(key.partition("/")[0], self.OTHER):
                k = (key, stat)
                value = float(getattr(sm, stat))
                if value == value and (kind := key.partition("/")[0], stat) not in self.seen:
                    self.seen.add((kind, stat))
                q = self.values.get(k)
                if q is None:
                    q = self.values[k] = deque([math.nan] * (len(self.iterations) - 1), maxlen=WINDOW)
                    self.first[k] = value
                    self._new_tensor(key)
                q.append(value)
                seen.add(k)
        if len(seen) != len(self.values):
            for k, q in self.values.items():
                if k not in seen:
                    q.append(math.nan)

    def _new_tensor(self, key: str) -> None:
        kind, _, name = key.partition("/")
        self._names.setdefault(kind, set()).add(name)
        self._sorted = {}

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
        """Tensor names of ``kind`` that have series, in forward order (embedviz.layers)."""
        got = self._sorted.get(kind)
        if got is None:
            got = self._sorted[kind] = sort_tensors(self._names.get(kind, ()), kind, self.order,
                                                    self.static)
        return got

    def weights(self) -> list[str]:
        """The parameters that are weight matrices or kernels (embedviz.layers), in forward order."""
        got = self._sorted.get(("weights",))
        if got is None:
            got = self._sorted[("weights",)] = weight_names(self.keys("param"), self.static)
        return got

    def layer(self, module: str) -> dict:
        return self._by_name.get(module, {})

    @property
    def skipped_now(self) -> bool:
        """Whether the grad scaler skipped a step since the report before (at the first:
        since training began)."""
        if not self.skipped or not self.skipped[-1] > 0:
            return False
        before = self.skipped[-2] if len(self.skipped) > 1 else 0.0
        return not self.skipped[-1] <= before

    @property
    def first_level(self) -> float:
        """Where the score started: the median of its first three finite values."""
        first = [v for _, v in self.all_scores[:6] if math.isfinite(v)][:3]
        return _median(first) if first else math.nan

    def adversarial(self, min_points: int = 12, below: float = -0.5) -> bool:
        """Whether the score is one side of a game: said (``objective="adversarial"``), or
        moving against another worker's of the session (their changes from report to report,
        at the iterations both reported, correlated below ``below``)."""
        got = self.memo.get("adversarial")
        if got is None:
            got = self.memo["adversarial"] = self._adversarial(min_points, below)
        return got

    def _adversarial(self, min_points: int, below: float) -> bool:
        if self.context.objective is not None:
            return self.context.objective == "adversarial"
        if len(self.scores) < min_points:
            return False
        mine = dict(zip(self.score_iterations, self.scores))
        for its, scores in self.context.peers().values():
            both = [(mine[i], v) for i, v in zip(its, scores) if i in mine]
            a = np.array(both, dtype=float).reshape(-1, 2)
            a = a[np.isfinite(a).all(axis=1)]
            if len(a) < min_points:
                continue
            d = np.diff(a, axis=0)
            if (d.std(axis=0) > 0).all() and float(np.corrcoef(d[:, 0], d[:, 1])[0, 1]) < below:
                return True
        return False

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
_NAN_ADVICE_EN = ("Lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), look for "
                  "NaN in the inputs, and use a stable loss (CrossEntropyLoss on logits, not log of a "
                  "softmax).")
_NAN_ADVICE_JA = ("学習率を下げる、勾配をクリッピングする (torch.nn.utils.clip_grad_norm_)、入力に NaN "
                  "がないか確認する、数値的に安定な損失関数を使う (softmax の log ではなくロジットに "
                  "CrossEntropyLoss) といった対策を試してください。")


@check("error", {},
       en={"": "NaN or Inf first appeared in {where} (score {value:.3g}). " + _NAN_ADVICE_EN,
           "loss": "NaN or Inf first appeared in the loss (score {value:.3g}). " + _NAN_ADVICE_EN},
       ja={"": "NaN または Inf が最初に {where} に現れました (スコア {value:.3g})。" + _NAN_ADVICE_JA,
           "loss": "NaN または Inf が最初に損失に現れました (スコア {value:.3g})。" + _NAN_ADVICE_JA},
       short={"en": "NaN or Inf (score {value:.3g})", "ja": "NaN または Inf (スコア {value:.3g})"},
       explains={"loss_flat": "after", "update_ratio_low": "after", "update_ratio_high": "after",
                 "loss_diverging": "after"}, lr=-1)
def nan(h: History) -> list[Hit]:
    score = h.scores[-1] if h.scored else 0.0  # (a report without a score: not a NaN one)
    if math.isfinite(score) and (not h.bad or h.skipped_now):
        return []  # (inf gradients of a step the grad scaler skipped: amp_skipping's)
    where = []
    for kind in ("activation", "param", "gradient", "update"):
        where += [f"{kind}/{k}" for k in h.keys(kind) if f"{kind}/{k}" in h.bad]
    if not where and math.isfinite(score):
        return []
    if not where:
        return [Hit(None, h.iterations[-1], score, "finite", variant="loss", episode="")]
    return [Hit(where[0].split("/", 1)[1], h.iterations[-1], score, "finite", {"where": where[0]},
                episode="")]


@check("warning", {"fraction": 0.5, "window": 10},
       en="The mixed-precision grad scaler skipped {value:.3g}% of the steps over the last "
          "{window} reports (loss scale {scale:.3g} now): the gradients overflow float16 whatever "
          "the scale. Compute the loss in float32 (outside autocast), look for Inf or NaN in the "
          "inputs and the loss, lower the learning rate, or train in bfloat16 (no scaler needed).",
       ja="混合精度の勾配スケーラーが直近 {window} 回のレポートでステップの {value:.3g}% を"
          "スキップしました (現在の損失スケール {scale:.3g})。スケールによらず勾配が float16 で"
          "オーバーフローしています。損失を float32 で (autocast の外で) 計算する、入力と損失に "
          "Inf や NaN がないか確認する、学習率を下げる、bfloat16 で学習する (スケーラー不要)、"
          "といった対策を試してください。",
       short={"en": "the grad scaler skipping {value:.3g}% of the steps",
              "ja": "勾配スケーラーがステップの {value:.3g}% をスキップ"}, lr=-1)
def amp_skipping(h: History, fraction: float, window: int) -> list[Hit]:
    k = np.fromiter(h.skipped, float, len(h.skipped))
    if len(k) <= window or not (np.isfinite(k[-1]) and np.isfinite(k[-window - 1])):
        return []
    its = list(h.iterations)
    steps = its[-1] - its[-window - 1]
    share = (k[-1] - k[-window - 1]) / steps if steps > 0 else 0.0
    if not share > fraction:
        return []
    rose = np.flatnonzero(np.diff(k[-window - 1:]) > 0)  # (dated from the first skip of the window)
    return [Hit(None, its[-window + int(rose[0])] if len(rose) else its[-window], 100 * float(share),
                f"<= {_fmt(100 * fraction)}% of steps skipped",
                {"window": window, "scale": h.amp_scale}, episode="")]


def _robust(a: np.ndarray) -> tuple[float, float]:
    """The median of ``a`` and its scatter about its trend (a line fit, then 1.4826 x the
    median absolute deviation of what is left: the standard deviation of normal noise)."""
    x = np.arange(len(a)) - (len(a) - 1) / 2
    slope = float(x @ (a - a.mean())) / float(x @ x) if len(a) > 1 else 0.0
    rest = a - a.mean() - slope * x
    return _median(a), 1.4826 * _median(np.abs(rest - _median(rest)))


def _median(a: Any) -> float:
    """np.median of a short 1-d array or list (NaN if it holds one), without np.median's
    overhead: a report runs several, an imported run has a report a step."""
    s = np.sort(np.asarray(a, dtype=float))
    n = len(s)
    if not n or np.isnan(s[-1]):  # (NaN sorts last)
        return math.nan
    return float(s[n // 2]) if n % 2 else float(0.5 * (s[n // 2 - 1] + s[n // 2]))


@check("error", {"jump": 10.0, "sigmas": 6.0, "lost": 0.25, "reports": 4, "window": 20},
       en="The score is diverging: {value:.3g}, up from a recent median of {recent:.3g} (best "
          "{best:.3g}, first {start:.3g}). Lower the learning rate (try 10x lower), clip "
          "gradients, check the loss for a sign error.",
       ja="スコアが発散しています: 直近の中央値 {recent:.3g} から {value:.3g} に上がりました (最良値 "
          "{best:.3g}、最初 {start:.3g})。学習率を下げる (まず 1/10 に)、勾配をクリッピングする、"
          "損失関数の符号の誤りを確認する、といった対策を試してください。",
       short={"en": "the score diverging ({value:.3g})", "ja": "スコアの発散 ({value:.3g})"},
       # (a network that blew up learns no more: its flat score and tiny updates after are
       # the blow-up's, not a learning rate too low)
       explains={"loss_flat": "after", "update_ratio_low": "after"}, lr=-1)
def loss_diverging(h: History, jump: float, sigmas: float, lost: float, reports: int,
                   window: int) -> list[Hit]:
    """Judged against the score's own noise and scale: a positive score (a loss) in log
    space, where a wobble near zero is as wide as one far from it. Diverging is a blow-up
    (``jump`` x where the score started, on the report it happens), or a climb held
    ``reports`` reports ``sigmas`` noise-widths above the median of the ``window`` reports
    before it that has given back ``lost`` of the progress made (above where it started:
    all of it). One side of a game (``h.adversarial()``) diverges only by a blow-up."""
    s = np.array(h.scores)
    if len(s) < 2:
        return []
    now, start, best = float(s[-1]), h.first_level, h.best
    if not (math.isfinite(now) and math.isfinite(start)):
        return []
    log = best > 0  # (every finite score so far positive)
    f = np.log if log else (lambda v: v)
    with np.errstate(all="ignore"):
        L = f(s)
    before = L[:-1][-window:]
    before = before[np.isfinite(before)]
    ref, noise = _robust(before) if len(before) >= 3 else (float(f(start)), 0.0)
    floor = 0.01 if log else 0.01 * max(abs(ref), abs(start), 1e-12)
    noise = max(noise, floor)
    # a blow-up: far above where the score started, and far outside its noise
    blown = (f(now) > f(start) + (math.log(jump) if log else jump * max(abs(start), noise))
             and f(now) > ref + sigmas * noise)
    climbing = False
    if not blown and not h.adversarial() and len(s) > reports:
        recent = L[-reports:]
        prior = L[:-reports][-window:]
        prior = prior[np.isfinite(prior)]
        if np.isfinite(recent).all():
            if len(prior) >= 5:
                ref, noise = _robust(prior)
                noise = max(noise, floor)
                high = bool(np.all(recent > ref + sigmas * noise))
            else:  # (too few reports for a noise: clearly above where it started)
                high = bool(np.all(recent > f(start) + (math.log(1.5) if log else 0.5 * abs(start))))
            level = _median(s[-reports:])
            progress = start - best
            climbing = high and (not progress > 0 or (level - best) / progress > lost)
    if not (blown or climbing):
        return []
    # (it began after the lowest point before the rise; a blow-up with the rise that ends
    # in it)
    tail = L[-window - reports:]
    tail = np.where(np.isfinite(tail), tail, np.inf)
    if blown:  # (the reports before it outside the noise too)
        low = len(tail) - 2
        while low >= 0 and np.isfinite(tail[low]) and tail[low] > ref + sigmas * noise:
            low -= 1
    else:
        low = int(np.argmin(tail[:-1]))
    its = list(h.score_iterations)[-len(tail):]
    since = its[min(low + 1, len(its) - 1)]
    recent_median = float(np.exp(ref)) if log else ref
    band = (f"< {_fmt(jump)}x the first score; a rise held {reports} reports < {_fmt(sigmas)} "
            f"noise-widths above the recent median or < {_fmt(100 * lost)}% of the progress lost")
    return [Hit(None, since, now, band, {"best": best, "start": start, "recent": recent_median},
                episode="")]


@check("warning", {"window": 20, "min_fall": 0.01, "min_progress": 0.1},
       en="The score is not falling: over the last {window} reports it changed by {value:+.3g}% "
          "of its level, and by {since_start:+.3g}% since it started ({score:.3g} now). Try a 10x "
          "higher learning rate; check that gradients reach the parameters (the update:param "
          "ratio) and that labels match inputs.",
       ja="スコアが下がっていません: 直近 {window} 回のレポートでの変化は水準の {value:+.3g}%、"
          "開始時からの変化は {since_start:+.3g}% です (現在 {score:.3g})。学習率を 10 倍に上げて"
          "みてください。勾配がパラメータに届いているか (更新量:パラメータ比)、ラベルが入力と対応"
          "しているかも確認してください。",
       short={"en": "the score not falling ({value:+.3g}% of its level over {window} reports)",
              "ja": "スコアが下がっていない (直近 {window} 回で水準の {value:+.3g}%)"},
       explains={"loss_noisy": "any"}, lr=+1)
def loss_flat(h: History, window: int, min_fall: float, min_progress: float) -> list[Hit]:
    s = np.array(h.scores)[-window:]
    if len(s) < window or not np.isfinite(s).all() or h.adversarial():
        return []  # (one side of a game's loss is not meant to fall)
    third = window // 3
    level = abs(_median(s))
    fall = float(np.mean(s[:third]) - np.mean(s[-third:]))
    noise = _median(np.abs(np.diff(s))) / math.sqrt(third)
    start = _median([v for _, v in h.all_scores[:3]])
    progress = (start - _median(s[-third:])) / abs(start) if start else 0.0
    if fall > max(2 * noise, min_fall * level) or progress > min_progress:
        return []
    return [Hit(None, h.score_iterations[-window], -100 * (fall / level if level else fall),
                f"a change of < -{100 * min_fall:g}% of the level per {window} reports, or of < "
                f"-{100 * min_progress:g}% since the start",
                {"window": window, "since_start": -100 * float(progress), "score": float(s[-1])},
                episode="")]


@check("info", {"window": 20, "ratio": 0.5},
       en="The score is noisy: its scatter is {value:.3g}% of its level. A larger batch or a "
          "lower learning rate steadies it.",
       ja="スコアのノイズが大きく、ばらつきが水準の {value:.3g}% あります。バッチサイズを大きく"
          "するか学習率を下げると安定します。",
       short={"en": "the score noisy (scatter {value:.3g}% of its level)",
              "ja": "スコアのノイズが大きい (ばらつきが水準の {value:.3g}%)"}, lr=-1)
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
    return [Hit(None, h.score_iterations[-window], 100 * r, f"scatter <= {100 * ratio:g}% of the level",
                episode="")]


@check("warning", {"tolerance": 0.5},
       en="The first score is {value:.3g}; at chance a {classes}-class cross-entropy is "
          "ln({classes}) = {chance:.2f}. Initial weights too large or a biased last layer: use a "
          "standard initialisation, zero the last layer's bias.",
       ja="最初のスコアは {value:.3g} です。{classes} クラスの交差エントロピーはチャンスレベルで "
          "ln({classes}) = {chance:.2f} になります。初期の重みが大きすぎるか、最後の層のバイアスが"
          "偏っています。標準的な重み初期化を使い、最後の層のバイアスを 0 にしてください。")
def initial_loss(h: History, tolerance: float) -> list[Hit]:
    num_classes = h.context.num_classes
    if not num_classes or num_classes < 2 or len(h.all_scores) != 1 or not h.scored \
            or not math.isfinite(h.scores[0]):
        return []
    chance = math.log(num_classes)
    s0 = h.scores[0]
    if abs(s0 / chance - 1) <= tolerance:
        return []
    return [Hit(None, h.iterations[0], s0, f"ln({num_classes}) = {chance:.3f} +/- {_fmt(100 * tolerance)}%",
                {"classes": int(num_classes), "chance": chance}, episode="")]


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


def _ratio_held(h: History, held_where: Callable[[np.ndarray], np.ndarray], band: str,
                reports: int) -> list[Hit]:
    out = []
    for p in h.weights():
        r = _ratio(h, p)
        held = held_where(r)
        if _trailing(held, reports):
            out.append(Hit(p, h.began(held), _median(r[-reports:]), band,
                           {"param": p, "reports": reports}))
    return out


@check("warning", {"above": -1.0, "reports": 5, "warmup": 2},
       en="Updates of {param} are large against its values (log10 update:param ratio {value:.2f}, "
          "the median of the last {reports} reports; about -3 is healthy): lower the learning rate.",
       ja="{param} の更新量がパラメータの値に対して大きすぎます (更新量:パラメータ比の log10 が直近 "
          "{reports} 回のレポートの中央値で {value:.2f}、-3 前後が健全)。学習率を下げてください。",
       short={"en": "updates of {param} large (log10 update:param ratio {value:.2f})",
              "ja": "{param} の更新量が大きすぎる (更新量:パラメータ比の log10 が {value:.2f})"},
       lr=-1)
def update_ratio_high(h: History, above: float, reports: int, warmup: int) -> list[Hit]:
    # (the seeds' "about -3, worry above -2": every healthy run of the zoo, SGD and Adam
    # alike, spends its first hundred iterations between -2 and -1.5; the broken one is
    # above -1, so -1 is the default)
    if h.reports <= warmup:
        return []
    return _ratio_held(h, lambda r: r > above, f"log10 ratio <= {above:g}", reports)


@check("warning", {"below": -4.0, "reports": 5, "annealed": 0.5},
       en="Updates of {param} are tiny against its values (log10 update:param ratio {value:.2f}, "
          "the median of the last {reports} reports; about -3 is healthy): raise the learning "
          "rate, or check that this parameter is meant to learn.",
       ja="{param} の更新量がパラメータの値に対して小さすぎます (更新量:パラメータ比の log10 が直近 "
          "{reports} 回のレポートの中央値で {value:.2f}、-3 前後が健全)。学習率を上げるか、この"
          "パラメータが学習する設定になっているか確認してください。",
       short={"en": "updates of {param} tiny (log10 update:param ratio {value:.2f})",
              "ja": "{param} の更新量が小さすぎる (更新量:パラメータ比の log10 が {value:.2f})"},
       lr=+1)
def update_ratio_low(h: History, below: float, reports: int, annealed: float) -> list[Hit]:
    if h.max_lr > 0 and h.lr < annealed * h.max_lr:
        return []  # (a schedule lowered the learning rate: small updates are its purpose)
    return [hit for hit in _ratio_held(h, lambda r: r < below, f"log10 ratio >= {below:g}", reports)
            if h.layer(str(hit.layer).rpartition(".")[0]).get("type") not in SPARSE_TYPES]


_CLIP_EN = ("Clip gradients (torch.nn.utils.clip_grad_norm_), lower the learning rate, normalize "
            "the inputs.")
_CLIP_JA = ("勾配をクリッピングする (torch.nn.utils.clip_grad_norm_)、学習率を下げる、入力を正規化"
            "する、といった対策を試してください。")


@check("error", {"spike": 100.0, "growth": 1000.0, "window": 10},
       en={"": "The gradient of {param} exploded: mean |gradient| {value:.3g}, {factor:.3g}x its "
               "recent median. " + _CLIP_EN,
           "first": "The gradient of {param} exploded: mean |gradient| {value:.3g}, {factor:.3g}x "
                    "its first report. " + _CLIP_EN},
       ja={"": "{param} の勾配が爆発しました: 平均 |勾配| が {value:.3g} で、直近の中央値の "
               "{factor:.3g} 倍です。" + _CLIP_JA,
           "first": "{param} の勾配が爆発しました: 平均 |勾配| が {value:.3g} で、最初のレポートの "
                    "{factor:.3g} 倍です。" + _CLIP_JA},
       short={"en": "the gradient of {param} exploding (mean |gradient| {value:.3g})",
              "ja": "{param} の勾配の爆発 (平均 |勾配| {value:.3g})"}, lr=-1)
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
        med = _median(finite) if finite.size else math.nan
        if med > 0 and now[i] > spike * med:
            factor, variant = now[i] / med, ""
        elif grown[i]:
            factor, variant = now[i] / first[i], "first"
        else:
            continue
        out.append(Hit(p, h.iterations[-1], float(now[i]), f"< {_fmt(spike)}x the recent median",
                       {"param": p, "factor": float(factor)}, variant))
    return out


@check("warning", {"orders": 3.0, "reports": 5},
       en="Gradients vanish on the way back: {param} gets 10^{value:.1f} of the gradient {last} "
          "gets. Use ReLU-family activations, normalization layers, residual connections or a "
          "better initialisation.",
       ja="勾配が逆伝播の途中で消失しています: {param} の勾配は {last} の 10^{value:.1f} しか"
          "ありません。ReLU 系の活性化関数、正規化層、残差接続、より良い重み初期化を使って"
          "ください。",
       short={"en": "gradients of {param} vanishing (10^{value:.1f} of {last}'s)",
              "ja": "{param} の勾配の消失 ({last} の 10^{value:.1f})"})
def vanishing_gradients(h: History, orders: float, reports: int) -> list[Hit]:
    ws = [p for p in h.weights() if (f"gradient/{p}", "mean_magnitude") in h.values]
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
                {"param": ws[0], "last": ws[-1]})]


def _named(h: History, module: str) -> str:
    kind = h.layer(module).get("type")
    return f"{module} ({kind})" if kind else module


def _typed(h: History, types: tuple[str, ...]) -> list[str]:
    return [m for m in h.keys("activation") if h.layer(m).get("type") in types]


@check("warning", {"threshold": 0.9, "reports": 5},
       en="{value:.3g}% of {layer}'s outputs are 0 and stay 0 (dying ReLUs). Lower the learning "
          "rate, check for large negative biases, or use LeakyReLU.",
       ja="{layer} の出力の {value:.3g}% が 0 のままです (ReLU が死んでいます)。学習率を下げる、"
          "大きな負のバイアスがないか確認する、LeakyReLU を使う、といった対策を試してください。",
       short={"en": "dying ReLUs in {layer} ({value:.3g}% of outputs 0)",
              "ja": "{layer} の ReLU の死 (出力の {value:.3g}% が 0)"},
       # (a dead unit passes no gradient back and feeds 0 forward: the weights on both
       # sides of it stop moving, which is not a learning rate too low)
       explains={"update_ratio_low": "adjacent", "loss_flat": "any"}, lr=-1)
def dead_units(h: History, threshold: float, reports: int) -> list[Hit]:
    out = []
    for m in _typed(h, RELU_TYPES):
        z = h.series(f"activation/{m}", "zero_fraction")
        held = z >= threshold
        if _trailing(held, reports):
            out.append(Hit(m, h.began(held), 100 * float(z[-1]), f"< {100 * threshold:g}% of outputs 0",
                           {"layer": _named(h, m)}))
    return out


@check("warning", {"threshold": 0.9, "reports": 5},
       en="{layer}'s outputs are piled at their bounds (saturated: their gradients vanish), on "
          "average {value:.3g} of the way from the centre to a bound. Scale the inputs, use a "
          "smaller initialisation, or ReLU.",
       ja="{layer} の出力が上下限に張り付いています (飽和しているため勾配が消失します)。中心から"
          "上下限までの平均 {value:.3g} の位置にあります。入力をスケーリングする、より小さな重み"
          "初期化を使う、ReLU を使う、といった対策を試してください。",
       short={"en": "{layer} saturated ({value:.3g} of the way to a bound)",
              "ja": "{layer} の飽和 (上下限までの {value:.3g} の位置)"},
       explains={"update_ratio_low": "adjacent", "vanishing_gradients": "any", "loss_flat": "any"})
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
            out.append(Hit(m, h.began(held), float(piled[-1]),
                           f"mean distance from the centre < {threshold:g} of the way to a bound",
                           {"layer": _named(h, m)}))
    return out


@check("info", {"low": 0.2, "high": 5.0, "warmup": 10, "reports": 5},
       en="{layer}'s outputs have a stdev of {value:.3g}, outside [{low:g}, {high:g}]: consider "
          "normalization or another initialisation.",
       ja="{layer} の出力の標準偏差が {value:.3g} で、[{low:g}, {high:g}] の範囲外です。正規化層"
          "か別の重み初期化を検討してください。")
def activation_scale(h: History, low: float, high: float, warmup: int, reports: int) -> list[Hit]:
    if h.reports <= warmup:
        return []
    out = []
    # (not the output layer: its scale is the model's confidence, which training raises)
    for m in _typed(h, WEIGHT_TYPES)[:-1]:
        sd = h.series(f"activation/{m}", "stdev")
        held = (sd < low) | (sd > high)
        if _trailing(held, reports):
            out.append(Hit(m, h.began(held), float(sd[-1]), f"stdev in [{low:g}, {high:g}]",
                           {"layer": _named(h, m), "low": low, "high": high}))
    return out


@check("warning", {"growth": 10.0, "still": 0.1, "reports": 5},
       en="{param} keeps growing: its mean |value| is {value:.3g}x what it was. Add weight decay, "
          "lower the learning rate.",
       ja="{param} が増大し続けています: 平均 |値| が最初の {value:.3g} 倍になりました。重み減衰を"
          "加えるか、学習率を下げてください。",
       short={"en": "{param} growing ({value:.3g}x its first mean |value|)",
              "ja": "{param} の増大 (平均 |値| が最初の {value:.3g} 倍)"},
       # (a weight grown large makes its updates small against it)
       explains={"update_ratio_low": "same"}, lr=-1)
def parameters_diverging(h: History, growth: float, still: float, reports: int) -> list[Hit]:
    out = []
    for p in h.weights():  # (a bias starts at 0: any growth is "without bound")
        w = h.series(f"param/{p}", "mean_magnitude")
        first = h.first.get((f"param/{p}", "mean_magnitude"), math.nan)
        if len(w) <= reports or not first > 0:
            continue
        held = (w > growth * first) & np.r_[False, np.diff(w) > 0]
        if _trailing(held, reports) and w[-1] > (1 + still) * w[-reports - 1]:
            out.append(Hit(p, h.began(held), float(w[-1] / first), f"< {_fmt(growth)}x its first value",
                           {"param": p}))
    return out


@check("info", {"growth": 2.0, "reports": 10, "least": 0.5},
       en="The output layer's bias {param} keeps growing ({value:.3g}x in {reports} reports): the "
          "classes may be imbalanced; reweight the loss or resample.",
       ja="出力層のバイアス {param} が増大し続けています (レポート {reports} 回で {value:.3g} 倍)。"
          "クラスの分布が偏っている可能性があります。損失に重みを付けるか、リサンプリングして"
          "ください。")
def bias_growing(h: History, growth: float, reports: int, least: float) -> list[Hit]:
    # the output layer's bias (of its last weight layer, not a norm's): one of imbalanced
    # classes grows to their log prior odds; a bias that starts at 0 grows by any factor at
    # first, so it must also reach ``least``
    weights = h.weights()
    biases = [p for p in h.keys("param") if p.endswith("bias")]
    last = [p for p in biases if weights and p.rpartition(".")[0] == weights[-1].rpartition(".")[0]]
    if not biases or weights and not last:
        return []
    p = (last or biases)[-1]
    b = h.series(f"param/{p}", "mean_magnitude")[-reports - 1:]
    if len(b) <= reports or not b[0] > 0 or not b[-1] >= least:
        return []
    if not (np.all(np.diff(b) > 0) and b[-1] > growth * b[0]):
        return []
    return [Hit(p, h.iterations[-reports - 1], float(b[-1] / b[0]), f"< {_fmt(growth)}x in {reports} reports",
                {"param": p, "reports": reports})]


@check("warning", {"rise": 0.1, "points": 3},
       en="{metric} has risen {value:.3g}% since iteration {best_iteration} while the training "
          "score fell: the model is overfitting. Stop early (keep the weights of its best), add "
          "regularization (weight decay, dropout) or more data.",
       ja="訓練スコアが下がる一方で、{metric} はイテレーション {best_iteration} から {value:.3g}% "
          "上昇しました。モデルが過学習しています。早期終了する (最良時点の重みを残す)、正則化 "
          "(重み減衰、ドロップアウト) を加える、データを増やす、といった対策を試してください。")
def overfitting(h: History, rise: float, points: int) -> list[Hit]:
    out = []
    for name, tr in h.metrics.items():
        if "loss" not in name.lower() or tr.n < points + 2:
            continue
        if tr.best < 0 or not tr.rising or tr.best >= tr.n - points:
            continue
        if not tr.low > 0 or tr.last <= tr.low * (1 + rise):
            continue
        cut = bisect.bisect_right(h.all_scores, (tr.best_iteration, math.inf))
        at = [v for _, v in h.all_scores[max(0, cut - 3):cut] if math.isfinite(v)]
        after = [v for _, v in h.all_scores[-3:] if math.isfinite(v)] if cut < len(h.all_scores) else []
        if not at or not after or np.mean(after) >= np.mean(at):
            continue
        out.append(Hit(None, tr.best_iteration, 100 * float(tr.last / tr.low - 1),
                       f"< {_fmt(100 * rise)}% above its best",
                       {"metric": name, "best_iteration": tr.best_iteration}, episode=name))
    return out


class Checker:
    """Runs every check over the records of one session worker as they come.

    ``num_classes``: the classes of a cross-entropy score (the chance level for
    ``initial_loss``). ``options``: per check, parameters to change
    (``{"dead_units": {"threshold": 0.95}}``), or False to turn it off. ``objective``: the
    score's (:data:`OBJECTIVES`; None: "minimize", unless it moves against another
    worker's). ``peers``: ``peers(session, worker) -> {worker: recent scores}``, the other
    workers of a session this checker is not fed (a listener checks its own worker only:
    :func:`store_peers` reads the others from the store); the workers it is fed are peers
    of each other without it."""

    def __init__(self, num_classes: int | None = None, options: dict | None = None,
                 objective: str | None = None, peers: Peers | None = None) -> None:
        if objective is not None and objective not in OBJECTIVES:
            raise InvalidRecordError(f"no objective {objective!r}: the objectives are "
                                     f"{', '.join(OBJECTIVES)}")
        if peers is not None and not callable(peers):
            raise InvalidRecordError("peers must be a function (session, worker) -> {worker: "
                                     f"recent scores}}, e.g. store_peers(store) (got {type(peers).__name__})")
        self.num_classes = num_classes
        self.objective = objective
        self.peers = peers
        self.params: dict[str, dict] = {}
        options = dict(options or {})
        for name in options:
            if name not in CHECKS:
                raise InvalidRecordError(f"no health check named {name!r}: the checks are "
                                         f"{', '.join(CHECKS)}")
        for name, c in CHECKS.items():
            given = options.get(name, {})
            if given is False:
                continue
            unknown = set(given) - set(c.params)
            if unknown:
                raise InvalidRecordError(f"health check {name!r} has no parameter "
                                         f"{sorted(unknown)[0]!r}: it takes {', '.join(c.params) or 'none'}")
            self.params[name] = {**c.params, **given}
        self.history: dict[tuple[str, str], History] = {}
        #: (session, worker, check, episode) -> reports since the condition last held
        self.active: dict[tuple, int] = {}
        #: the finding of a cause: (session, worker, check, episode) -> while it holds;
        #: (session, worker, check) -> its latest, for the rest of the run
        self.causes: dict[tuple, Finding] = {}

    def _history(self, session: str, worker: str) -> History:
        h = self.history.get((session, worker))
        if h is None:
            h = self.history[(session, worker)] = History()
            h.context = Context(self.num_classes, self.objective, lambda: self._peers(session, worker))
        return h

    def _peers(self, session: str, worker: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The other workers' recent scores: those this checker is fed, then ``peers``'."""
        out = {w: (np.array(h.score_iterations), np.array(h.scores))
               for (s, w), h in self.history.items() if s == session and w != worker and h.reports}
        if self.peers is not None:
            try:
                given = self.peers(session, worker) or {}
            except Exception:  # (a store being written, a session not yet there: next time)
                given = {}
            for w, scores in given.items():
                if w != worker and w not in out:
                    out[w] = _aligned(scores, self.history[(session, worker)])
        return out

    def feed(self, records: Iterable[Record]) -> list[Finding]:
        """The findings that begin with these records (written after them)."""
        found: list[Finding] = []
        for r in records:
            if isinstance(r, Static):
                self._history(r.session, r.worker).set_model(r.info if isinstance(r.info, dict) else {})
            elif isinstance(r, Metric):
                self._history(r.session, r.worker).metrics.setdefault(r.name, Trend()).add(
                    r.iteration, float(r.value))
            elif isinstance(r, Update):
                h = self._history(r.session, r.worker)
                h.add(r)
                found += self._run(r.session, r.worker, h, r.wall_time)
        return found

    def _run(self, session: str, worker: str, h: History, wall_time: float) -> list[Finding]:
        hits: dict[str, list[Hit]] = {}
        for name, params in self.params.items():
            try:
                hits[name] = CHECKS[name].find(h, **params)
            except (ValueError, FloatingPointError, ZeroDivisionError):
                continue  # (a degenerate window: the next report decides)
        out: list[Finding] = []
        now = int(h.iterations[-1])
        explained = self._explained(session, worker, h, hits)
        new: dict[tuple, Finding] = {}
        effects: list[tuple[str, Hit]] = []
        holding = set()
        for name, found in hits.items():
            for hit in found:
                key = (session, worker, name, hit.layer if hit.episode is None else hit.episode)
                holding.add(key)
                if key not in self.active:  # (a new episode)
                    if (name, hit.layer) in explained:
                        effects.append((name, hit))
                    else:
                        f = new[key] = _finding(session, worker, name, hit, now, wall_time)
                        out.append(f)
                        if CHECKS[name].explains:
                            self.causes[key] = self.causes[(session, worker, name)] = f
                self.active[key] = 0
        # a consequence: listed in its cause's finding when that is new, else found as one
        for name, hit in effects:
            cause_name, cause_key, cause_hit = explained[(name, hit.layer)]
            if cause_key in new:
                f = new[cause_key]
                f.detail.setdefault("consequences", []).append(
                    {"check": name, "layer": hit.layer, "args": _args(hit)})
                f.message = render_finding(cause_name, f.detail["args"], "en",
                                           f.detail.get("variant", ""), f.detail["consequences"])
                continue
            cause = self.causes.get(cause_key) or self.causes.get((session, worker, cause_name))
            if cause is not None:
                caused_by = {"check": cause_name, "layer": cause.layer, "iteration": cause.iteration,
                             "args": cause.detail["args"]}
            else:  # (its cause explained by another: found as a consequence itself)
                assert cause_hit is not None
                caused_by = {"check": cause_name, "layer": cause_hit.layer,
                             "iteration": int(cause_hit.began), "args": _args(cause_hit)}
            out.append(_finding(session, worker, name, hit, now, wall_time, caused_by=caused_by))
        for key in list(self.active):
            if key[:2] == (session, worker) and key not in holding:
                self.active[key] += 1
                if self.active[key] >= CLEAR:
                    del self.active[key]
                    self.causes.pop(key, None)
        return out

    def _explained(self, session: str, worker: str, h: History,
                   hits: dict[str, list[Hit]]) -> dict[tuple, tuple]:
        """(check, layer) of each hit of this report that a cause explains -> (the cause's
        check, its episode's key, its hit now or None): the relations the checks declare
        (``Check.explains``), the cause holding now, or found before for scope "after"."""
        out: dict[tuple, tuple] = {}
        for cause, c in CHECKS.items():
            found = hits.get(cause, [])
            for effect, scope in c.explains.items():
                for hit in hits.get(effect, ()):
                    if (effect, hit.layer) in out:
                        continue
                    for x in found:
                        if _within(h, scope, x.layer, hit.layer):
                            key = (session, worker, cause, x.layer if x.episode is None else x.episode)
                            out[(effect, hit.layer)] = (cause, key, x)
                            break
                    else:
                        if scope == "after" and (session, worker, cause) in self.causes:
                            out[(effect, hit.layer)] = (cause, (session, worker, cause), None)
        return out


def _within(h: History, scope: str, cause: str | None, layer: str | None) -> bool:
    """Whether ``layer`` (a module or a parameter) is in ``scope`` of a cause at ``cause``."""
    if scope in ("any", "after") or cause is None or layer is None:
        return scope in ("any", "after") or cause == layer
    if scope == "same":
        return layer == cause or layer.rpartition(".")[0] == cause
    module = layer if layer in h.order else layer.rpartition(".")[0]
    weighted = [m for m in h.order if any(p.rpartition(".")[0] == m for p in h.weights())]
    if cause not in h.order or module not in h.order:
        return True  # (no forward order known: any layer)
    at = h.order.index(cause)
    before = [m for m in weighted if h.order.index(m) <= at]
    after = [m for m in weighted if h.order.index(m) > at]
    return module == cause or module in before[-1:] + after[:1]


def _aligned(scores: Any, h: History) -> tuple[np.ndarray, np.ndarray]:
    """A peer's recent scores as (iterations, scores): a pair as given, a plain sequence
    aligned with this worker's last reports by position."""
    if isinstance(scores, tuple) and len(scores) == 2:
        its, vals = (np.asarray(x) for x in scores)
        return its.astype(np.int64), vals.astype(float)
    last = list(h.score_iterations)
    vals = np.asarray(list(scores), dtype=float)[-len(last):] if last else np.empty(0)
    return np.array(last[len(last) - len(vals):], dtype=np.int64), vals


def _args(hit: Hit) -> dict[str, Any]:
    return {k: _json(v) for k, v in {"value": hit.value, **hit.args}.items()}


def _finding(session: str, worker: str, name: str, hit: Hit, found_at: int,
             wall_time: float, caused_by: dict | None = None) -> Finding:
    """A hit as a stored finding: its message in English, its arguments kept to render it
    in another language. A consequence found after its cause (``caused_by``) is
    information: its cause's finding carries the advice."""
    args = _args(hit)
    detail: dict[str, Any] = {"value": args["value"], "band": hit.band, "found_at": found_at,
                              "args": args}
    if hit.variant:
        detail["variant"] = hit.variant
    if caused_by:
        detail["caused_by"] = caused_by
    return Finding(session, name, render_finding(name, args, "en", hit.variant, None, caused_by),
                   iteration=int(hit.began), worker=worker,
                   severity="info" if caused_by else CHECKS[name].severity, layer=hit.layer,
                   detail=detail, wall_time=wall_time)


def _json(x: Any) -> Any:
    """``x`` as the store keeps it: numpy numbers as Python's, NaN and Inf as floats (the
    store's codec keeps them: ``{"$float": "NaN"}`` in an export)."""
    if isinstance(x, (bool, str)) or x is None:
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    return float(x)


def _needs(h: History, num_classes: int | None) -> dict[str, str | None]:
    """Why each check could not judge this history (None: it could): the data it reads
    never came (an imported TensorBoard run has a score and histograms, no magnitudes)."""
    def stat(kind: str, name: str, what: str) -> str | None:
        return None if (kind, name) in h.seen else f"no {what}"

    score = None if h.all_scores else "no score (training loss)"
    types = None if h._by_name else "no layer table (the layers' types: a listener records it)"
    ratio = (stat("param", "mean_magnitude", "mean magnitudes of the parameters")
             or stat("update", "mean_magnitude", "mean magnitudes of the updates"))
    grads = stat("gradient", "mean_magnitude", "mean magnitudes of the gradients")
    losses = [n for n in h.metrics if "loss" in n.lower()]
    return {
        "nan": None if h.all_scores or h.summarised else "no score and no tensor statistics",
        "amp_skipping": None,  # (a training without a grad scaler: nothing to judge, not missing)
        "loss_diverging": score, "loss_flat": score, "loss_noisy": score,
        "initial_loss": score or (None if num_classes else
                                  "the number of classes is not known (num_classes=)"),
        "update_ratio_high": ratio, "update_ratio_low": ratio,
        "exploding_gradients": grads, "vanishing_gradients": grads,
        "dead_units": stat("activation", "zero_fraction", "zero fractions of the activations")
        or types,
        "saturation": stat("activation", "mean", "activation statistics") or types,
        "activation_scale": stat("activation", "stdev", "activation statistics") or types,
        "parameters_diverging": stat("param", "mean_magnitude", "mean magnitudes of the parameters"),
        "bias_growing": stat("param", "mean_magnitude", "mean magnitudes of the parameters"),
        "overfitting": score or (None if losses else "no validation loss (a metric named *loss*)"),
    }


def not_run(checker: Checker, session: str, worker: str) -> dict[str, str]:
    """The checks ``checker`` (fed a session) could not run on a worker, each with why: the
    data it reads never came. Checks turned off, and the grad scaler's without a grad
    scaler, are not listed."""
    h = checker.history.get((session, worker))
    if h is None:
        return {name: "no reports" for name in checker.params}
    why = _needs(h, h.context.num_classes)
    return {name: why[name] for name in checker.params if why.get(name)}  # type: ignore[misc]


def replay_session(store: Any, session: str, num_classes: int | None = None,
                   options: dict | None = None, objective: str | None = None
                   ) -> tuple[Checker, list[Finding]]:
    """:func:`check_session`, and the checker it fed (to feed it what comes next, or ask
    it :func:`not_run`)."""
    info = store.session(session).info or {}
    if num_classes is None:
        num_classes = info.get("num_classes")
    if objective is None and info.get("objective") in OBJECTIVES:
        objective = info.get("objective")
    stream: list[Record] = []
    timed: list[Record] = []
    for r in store.records(session):
        if isinstance(r, Static):
            stream.append(r)
        elif isinstance(r, (Update, Metric)):
            if isinstance(r, Update):
                for sm in r.summaries.values():  # (the checks read statistics, not bins)
                    sm.histogram = None
            timed.append(r)
    # the order they were written: a metric after the update of its iteration
    timed.sort(key=lambda r: (r.iteration, isinstance(r, Metric), r.worker))  # type: ignore[union-attr]
    checker = Checker(num_classes, options, objective)
    return checker, checker.feed(stream + timed)


def check_records(records: Iterable[Record], num_classes: int | None = None,
                  options: dict | None = None, objective: str | None = None) -> list[Finding]:
    """Every finding of these records (a session's, in the order they were written)."""
    return Checker(num_classes, options, objective).feed(records)


def check_session(store: Any, session: str, num_classes: int | None = None,
                  options: dict | None = None, objective: str | None = None) -> list[Finding]:
    """Replay a stored session through the checks: the findings the listener gave while it
    ran (``num_classes`` and ``objective`` default to the ones the session's info holds). Its
    workers are fed report by report together, so each sees the others as its peers."""
    return replay_session(store, session, num_classes, options, objective)[1]


class StorePeers:
    """``peers`` for a :class:`Checker` in a listener: the recent scores of the session's
    other workers, read from ``store`` (a Store, or what :func:`embedviz.open_store` takes)
    at most every ``every`` calls per worker, only the points written since the last read.
    Pickled (for a listener's worker process), it keeps the store's URL and opens it
    read-only where it is called."""

    def __init__(self, store: Any, every: int = 10, window: int = WINDOW) -> None:
        self.store, self.every, self.window = store, int(every), int(window)
        self._cache: dict[tuple[str, str], tuple[int, dict]] = {}
        self._tails: dict[tuple[str, str], tuple[int, deque]] = {}  # (cursor, points)

    def __getstate__(self) -> dict:
        target = self.store if isinstance(self.store, (str, os.PathLike)) else getattr(
            self.store, "url", None)
        return {"store": target, "every": self.every, "window": self.window}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["store"], state["every"], state["window"])  # type: ignore[misc]

    def _open(self) -> Any:
        if self.store is None:
            return None
        if isinstance(self.store, (str, os.PathLike)):
            from embedviz.store import open_store

            self.store = open_store(self.store, readonly=True)
        return self.store

    def __call__(self, session: str, worker: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        calls, got = self._cache.get((session, worker), (self.every, {}))
        if calls < self.every:
            self._cache[(session, worker)] = (calls + 1, got)
            return got
        got = {}
        store = self._open()
        others = [] if store is None else [w.worker for w in store.session(session).workers
                                           if w.worker != worker]
        for w in others:
            cursor, tail = self._tails.get((session, w), (0, deque(maxlen=self.window)))
            points = store.read_series(session, "score", worker=w, since=cursor)
            tail.extend(zip(points.iterations.tolist(), points.values.tolist()))
            self._tails[(session, w)] = (points.cursor, tail)
            got[w] = (np.array([i for i, _ in tail], dtype=np.int64),
                      np.array([v for _, v in tail], dtype=float))
        self._cache[(session, worker)] = (1, got)
        return got


def store_peers(store: Any, every: int = 10) -> StorePeers:
    """A :class:`Checker`'s ``peers`` reading the other workers of a session from ``store``
    (at most every ``every`` reports): ``Checker(peers=store_peers(store))``."""
    return StorePeers(store, every)


__all__ = ["CHECKS", "CLEAR", "Check", "Checker", "Context", "History", "Hit", "LANGUAGES",
           "OBJECTIVES", "SCOPES", "SEVERITY_RANK", "SEVERITY_TEXT", "StorePeers", "WINDOW", "check",
           "check_records", "check_session", "describe", "not_run", "replay_session", "render", "render_finding", "short",
           "store_peers"]

"""Why a chart is empty, or how what it shows was measured: what a session's listener
recorded and did not, read from its series keys and its static info, said with how to
record it (in the page's language: every sentence here is a key of ``messages.JA``).

Nothing here is HTML: the pages put these sentences into notes, which escape them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from embedviz.store import SessionInfo

#: the sentences (English: the keys of the Japanese table)
NO_OPTIMIZER = ("No optimizer attached: updates are measured from parameter changes; pass "
                "lr= to step() for the learning rate.")
NO_OPTIMIZER_LR = ("No optimizer attached: updates are measured from parameter changes "
                   "(the learning rate is the one passed to step()).")
NO_UPDATES = ("No updates recorded: attach the optimizer (listener.attach(model, optimizer)); "
              "without one, the current listener measures them from parameter changes.")
FROM_TENSORBOARD = ("Imported from TensorBoard: its histograms keep at most the count, mean, "
                    "stdev, min and max of a tensor, not the mean magnitudes of parameters and "
                    "updates that these charts need (record the training with StatsListener "
                    "for them).")
LR_TENSORBOARD = ("Imported from TensorBoard: a learning rate it logged is among the metrics "
                  "(overview).")
NO_LR = ("No learning rate recorded: attach the optimizer (listener.attach(model, optimizer)) "
         "or pass lr= to listener.step().")
NO_ACTIVATIONS = ("No activations recorded: the listener was made with activations=False "
                  "(StatsListener(..., activations=True) records them).")
NO_HISTOGRAMS = ("No histograms recorded: the listener was made with histograms=False "
                 "(StatsListener(..., histograms=True) records them).")
NO_DEVICE_MEMORY = ("No device memory: the model ran on the CPU (device memory is recorded "
                    "for CUDA devices).")
NO_EXAMPLES = "No examples per second: pass batch_size= to listener.step()."
SPACED = ("Reports were spaced to every {n} iterations (asked: every {f}) to keep the "
          "monitor within its cost budget.")
ADVERSARIAL = ("Adversarial objective: the workers' losses ({workers}) move against each "
               "other; neither is expected to fall steadily, and the health checks judge "
               "them so.")

T = Callable[[str], str]


def listener(static: dict) -> dict:
    """The ``listener`` part of a worker's static info ({} when it has none)."""
    got = static.get("listener") if isinstance(static, dict) else None
    return got if isinstance(got, dict) else {}


def is_stats(static: dict) -> bool:
    """Whether the worker was recorded by StatsListener (a model and its listener's
    settings): only then can its missing series be explained."""
    return bool(listener(static)) and isinstance(static.get("model"), dict)


def _has(keys: Iterable[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def updates(t: T, keys: frozenset[str], static: dict) -> str | None:
    """How the updates were measured (no optimizer: from parameter changes), or why there
    are none; None when an optimizer measured them, or nothing can be said."""
    if isinstance(static, dict) and static.get("source") == "tensorboard":
        return t(FROM_TENSORBOARD)
    if not is_stats(static):
        return None
    if not _has(keys, "update/"):
        return t(NO_UPDATES)
    if listener(static).get("updates") == "parameter change":
        return t(NO_OPTIMIZER_LR if _has(keys, "lr/") else NO_OPTIMIZER)
    return None


def lr(t: T, keys: frozenset[str], static: dict) -> str | None:
    """Why there is no learning rate (None when there is one)."""
    if isinstance(static, dict) and static.get("source") == "tensorboard":
        logged = any(k.startswith("metric/") and ("lr" in k.lower() or "learning_rate" in k.lower())
                     for k in keys)
        return t(LR_TENSORBOARD) if logged else None
    if not is_stats(static) or _has(keys, "lr/"):
        return None
    return t(NO_LR)


def activations(t: T, keys: frozenset[str], static: dict) -> str | None:
    if not is_stats(static) or _has(keys, "activation/"):
        return None
    return t(NO_ACTIVATIONS) if listener(static).get("activations") is False else None


def histograms(t: T, static: dict) -> str | None:
    if not is_stats(static):
        return None
    return t(NO_HISTOGRAMS) if listener(static).get("histograms") is False else None


def device_memory(t: T, keys: frozenset[str], static: dict) -> str | None:
    if not is_stats(static) or _has(keys, "memory/device"):
        return None
    devices = (static.get("hardware") or {}).get("devices") or []
    if devices and all(str(d).startswith("cpu") for d in devices):
        return t(NO_DEVICE_MEMORY)
    return None


def examples(t: T, keys: frozenset[str], static: dict) -> str | None:
    if not is_stats(static) or _has(keys, "timing/examples_per_s") or _has(keys, "timing/words_per_s"):
        return None
    return t(NO_EXAMPLES)


def spaced(t: T, report_every: float | None, static: dict) -> str | None:
    """The cost budget's note: reports spaced further apart than the frequency asked."""
    asked = listener(static).get("frequency")
    if report_every is None or not isinstance(asked, (int, float)) or not report_every > asked:
        return None
    return t(SPACED).format(n=f"{int(report_every):,}", f=f"{int(asked):,}")


def adversarial(s: SessionInfo, statics: Iterable[dict], findings: Iterable = ()) -> bool:
    """Whether the session's objective is adversarial (a GAN's G and D): said by the
    session's info, a worker's static info (``objective``, also under ``listener``), or
    carried by a health finding of it (``detail["objective"]``)."""
    def said(d: object) -> bool:
        return isinstance(d, dict) and d.get("objective") == "adversarial"
    if said(s.info) or any(said(st) or said(listener(st)) for st in statics):
        return True
    return any(f.session == s.id and said(f.detail) for f in findings)


def against(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
            min_points: int = 12, below: float = -0.5) -> bool:
    """Whether two workers' scores, (iterations, values) each, move against each other (as
    the health checks recognise one side of a game: their changes from report to report,
    at the iterations both reported, correlated below ``below``)."""
    mine = dict(zip(np.asarray(a[0]).tolist(), np.asarray(a[1], dtype=float).tolist()))
    both = [(mine[i], v) for i, v in zip(np.asarray(b[0]).tolist(),
                                         np.asarray(b[1], dtype=float).tolist()) if i in mine]
    x = np.array(both, dtype=float).reshape(-1, 2)
    x = x[np.isfinite(x).all(axis=1)]
    if len(x) < min_points:
        return False
    d = np.diff(x, axis=0)
    return bool((d.std(axis=0) > 0).all() and float(np.corrcoef(d[:, 0], d[:, 1])[0, 1]) < below)


def join(reasons: Iterable[tuple[str, str | None]], several: bool) -> str | None:
    """One sentence from (who, reason) pairs: each distinct reason once, prefixed by the
    sessions it is about when several are shown; None when there is none."""
    by: dict[str, list[str]] = {}
    for who, why in reasons:
        if why:
            by.setdefault(why, []).append(who)
    if not by:
        return None
    if not several:
        return " ".join(by)
    return " ".join(f"{', '.join(who)}: {why}" for why, who in by.items())


#: every sentence a page may show (the Japanese table must have each)
SENTENCES = (NO_OPTIMIZER, NO_OPTIMIZER_LR, NO_UPDATES, NO_LR, NO_ACTIVATIONS, NO_HISTOGRAMS,
             NO_DEVICE_MEMORY, NO_EXAMPLES, SPACED, ADVERSARIAL)

__all__ = ["SENTENCES", "activations", "adversarial", "against", "device_memory", "examples",
           "histograms", "is_stats", "join", "listener", "lr", "spaced", "updates"]

"""The listener's arguments, checked where they are given: a bad one is an
:class:`~embedviz.errors.InvalidRecordError` that names it and the way out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embedviz.errors import InvalidRecordError
from embedviz.health import OBJECTIVES

BACKGROUNDS = ("auto", "thread", "process")
RANKS = ("all", "zero")


def check_int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> None:
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidRecordError(f"{name} must be an integer {span} (got {value!r}){hint}")


def check_listener(*, frequency: Any, bins: Any, max_pending: Any, sample_limit: Any, watch: Any,
                   ignore: Any, background: Any, num_classes: Any, checks: Any, ranks: Any,
                   objective: Any, budget: Any, accumulation: Any, embeddings: Any,
                   snapshot_every: Any) -> None:
    """StatsListener's arguments (see its doc)."""
    check_int("frequency", frequency, 1, hint=": report every `frequency` iterations, e.g. 10")
    check_int("bins", bins, 2, 10_000)
    check_int("max_pending", max_pending, 1)
    if sample_limit is not None:
        check_int("sample_limit", sample_limit, 1024, hint=" or None (every element)")
    if isinstance(watch, str) or isinstance(ignore, str):
        raise InvalidRecordError("watch and ignore take a list of patterns, e.g. "
                                 "watch=['fc*'] (got a string)")
    if background not in BACKGROUNDS:
        raise InvalidRecordError(f"background must be one of {', '.join(BACKGROUNDS)} "
                                 f"(got {background!r})")
    if num_classes is not None:
        check_int("num_classes", num_classes, 2, hint=": the classes of a cross-entropy score")
    if not isinstance(checks, (bool, dict)):
        raise InvalidRecordError(f"checks must be True, False or a dict of per-check "
                                 f"parameters (got {type(checks).__name__})")
    if ranks not in RANKS:
        raise InvalidRecordError(f"ranks must be 'all' (every rank of a torch.distributed job "
                                 f"records, each as its worker) or 'zero' (rank 0 alone) (got {ranks!r})")
    if objective is not None and objective not in OBJECTIVES:
        raise InvalidRecordError(f"objective must be None or one of {', '.join(OBJECTIVES)} "
                                 f"(got {objective!r}): 'adversarial' for a loss that is not "
                                 "meant to fall, as a GAN's generator's and discriminator's")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 <= budget < 1):
        raise InvalidRecordError(f"budget must be a fraction of the loop's time in [0, 1), e.g. "
                                 f"0.03, or None for no budget (got {budget!r})")
    if accumulation is not None:
        check_int("accumulation", accumulation, 1, hint=": the step() calls per optimizer step, "
                  "or None to count optimizer steps")
    if embeddings is not None:
        if not isinstance(embeddings, Mapping) or not all(isinstance(k, str) for k in embeddings):
            raise InvalidRecordError("embeddings takes {module name: labels of its rows}, e.g. "
                                     "embeddings={'encoder': idx2word}")
        if snapshot_every is None:
            raise InvalidRecordError("embeddings= needs snapshot_every=N: the iterations between "
                                     "snapshots, e.g. snapshot_every=1000")
    if snapshot_every is not None:
        check_int("snapshot_every", snapshot_every, 1, hint=": iterations between snapshots")


def check_attach(model: Any, optimizer: Any, scaler: Any, modules: Mapping[str, Any] | None,
                 embeddings: Mapping[str, Any]) -> None:
    """attach()'s arguments; ``modules``: the model's modules by name (for ``embeddings``)."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InvalidRecordError(f"attach needs a torch.nn.Module (got {type(model).__name__})"
                                 ": pass the model you train")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidRecordError(f"optimizer must be a torch.optim.Optimizer (got "
                                 f"{type(optimizer).__name__}); without one, updates are measured "
                                 "as parameter changes: attach(model)")
    if scaler is not None and not callable(getattr(scaler, "get_scale", None)):
        raise InvalidRecordError(f"scaler must be a torch.amp.GradScaler (got "
                                 f"{type(scaler).__name__})")
    if scaler is not None and optimizer is None:
        raise InvalidRecordError("a scaler needs the optimizer it steps: "
                                 "attach(model, optimizer, scaler=scaler)")
    missing = [name for name in embeddings if modules is not None and name not in modules]
    if missing:
        have = [n for n, m in (modules or {}).items() if isinstance(m, torch.nn.Embedding)]
        raise InvalidRecordError(f"embeddings names {missing[0]!r}, which the model does not "
                                 f"have: its nn.Embedding modules are {', '.join(have) or 'none'}")


def lrs_of(lr: Any) -> dict[str, float]:
    """step()'s ``lr=``: a number (one group), a list (one per group) or {group: number}."""
    if isinstance(lr, Mapping):
        items = list(lr.items())
    elif isinstance(lr, (list, tuple)):  # (a scheduler's get_last_lr(): one per group)
        items = list(enumerate(lr))
    else:
        items = [("0", lr)]
    out = {}
    for group, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
            raise InvalidRecordError(f"lr must be a number or {{group: number}} (got {lr!r}): "
                                     "step(loss, lr=scheduler.get_last_lr()[0])")
        out[str(group)] = float(value)
    return out

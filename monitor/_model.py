"""What the listener watches in a model: its parameters and leaf modules by the names the
user wrote (a ``torch.compile`` wrapper's ``_orig_mod.`` taken away), and where its hooks may
go without entering a compiled graph."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

#: the attribute under which torch.compile's wrapper (an OptimizedModule) keeps the model
ORIG = "_orig_mod"


def clean(name: str) -> str:
    """``name`` as the user wrote it: without the compile wrapper's ``_orig_mod`` parts."""
    if ORIG not in name:
        return name
    return ".".join(part for part in name.split(".") if part != ORIG)


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


def _wrapped(module: torch.nn.Module) -> torch.nn.Module | None:
    inner = getattr(module, ORIG, None)  # (torch.compile(module): an OptimizedModule)
    return inner if isinstance(inner, torch.nn.Module) else None


def _compiled_in_place(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None  # (module.compile())


@dataclass
class Watched:
    """``model``: the model as the user wrote it (inside a compile wrapper); ``root``: the
    module the user calls; ``params``: the watched parameters by clean name; ``leaves``:
    id(leaf module) -> clean name; ``outputs``: the leaves whose outputs are recorded;
    ``compiled``: "" (eager: one global forward hook), "wrapper" (``torch.compile(model)``),
    "parts" (compiled submodules) or "in place" (``model.compile()``). A compiled model gets
    no hook inside it (a hook in a compiled graph recompiles it or breaks it, and a global
    one makes torch warn): its leaves' outputs are not recorded, and ``hook_on`` (the wrapper
    or the eager root, called outside any graph; None for "in place") takes a forward
    pre-hook."""

    model: torch.nn.Module
    root: torch.nn.Module
    params: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    leaves: dict[int, str] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    compiled: str = ""
    hook_on: torch.nn.Module | None = None


def watched(root: torch.nn.Module, watch: Sequence[str], ignore: Sequence[str],
            activations: bool) -> Watched:
    """What of ``root`` a listener with these options watches."""
    inner = _wrapped(root)
    model = inner if inner is not None else root
    compiled = "wrapper" if inner is not None else ""
    if _compiled_in_place(model):
        compiled = "in place"
    elif not compiled and any(_wrapped(m) is not None or _compiled_in_place(m)
                              for m in model.modules() if m is not model):
        compiled = "parts"
    params = {clean(n): p for n, p in model.named_parameters()
              if p.requires_grad and matches(clean(n), watch, ignore)}
    leaves = {} if compiled else {
        id(module): clean(name) or "output" for name, module in model.named_modules()
        if not any(True for _ in module.children())}  # (the model, if alone)
    outputs = {name for name in leaves.values() if activations and matches(name, watch, ignore)}
    return Watched(model, root, params, leaves, outputs, compiled,
                   root if compiled in ("wrapper", "parts") else None)

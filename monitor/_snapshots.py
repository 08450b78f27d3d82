"""A PyTorch model's own embeddings over training, as embedding sets of its session.

Two kinds of snapshot, both an :class:`~embedviz.records.EmbeddingSet` of the session at the
iteration it was taken, under a name that stays the same from one snapshot to the next (the
explorer's snapshot slider walks the sets of one session and name, aligned):

- :meth:`Snapshots.of_model`: the rows of an ``nn.Embedding`` (or ``nn.EmbeddingBag``) with
  their labels, named ``"<title>: <module>"``;
- :meth:`Snapshots.of_outputs`: a layer's outputs on held-out inputs, one row an example,
  named ``"<title>: <layer> outputs"``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from embedviz.errors import InvalidRecordError
from embedviz.records import EmbeddingSet

log = logging.getLogger("embedviz.monitor")

#: rows kept from an embedding or a batch of outputs, at most (an even sample beyond it)
MAX_ROWS = 5000
#: prefixes that wrappers put before the names of a model's modules (DistributedDataParallel,
#: DataParallel: ``module.``; torch.compile: ``_orig_mod.``, also within a name): a module is
#: found by its name without them too
WRAPPERS = ("module.", "_orig_mod.")
EMBEDDINGS = (torch.nn.Embedding, torch.nn.EmbeddingBag)


def _labels_of(labels: Any, module: str) -> list[Any] | dict[int, Any] | None:
    """``labels`` checked: a list (row i: labels[i]), a dict {row index: label} (a
    vocabulary {token: index}, as tokenizers give it, is turned round) or None."""
    if labels is None:
        return None
    if isinstance(labels, Mapping):
        items = list(labels.items())
        if items and all(isinstance(k, str) and isinstance(v, (int, np.integer))
                         and not isinstance(v, bool) for k, v in items):
            return {int(v): k for k, v in items}  # {token: index}: a tokenizer's get_vocab()
        try:
            return {int(k): v for k, v in items}
        except (TypeError, ValueError):
            raise InvalidRecordError(
                f"the labels of embedding {module!r} are a dict whose keys are not row "
                f"indices: pass {{row index: label}} (or a list, label i of row i)") from None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, np.ndarray, torch.Tensor)):
        raise InvalidRecordError(
            f"the labels of embedding {module!r} must be a list (label i of row i, e.g. "
            f"idx2word), a dict {{row index: label}} or None (row numbers) "
            f"(got {type(labels).__name__})")
    return labels.tolist() if isinstance(labels, (np.ndarray, torch.Tensor)) else list(labels)


def _modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``model``'s modules by name, also without the wrappers' prefixes (WRAPPERS)."""
    named = dict(model.named_modules())
    out = dict(named)
    for name, module in named.items():
        bare = ".".join(part for part in name.split(".") if part != "_orig_mod")
        while bare.startswith(WRAPPERS):
            bare = bare.split(".", 1)[1]
        out.setdefault(bare, module)
    return out


def _even(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` indices spread evenly over ``range(n)``, increasing, first and last in."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _first_tensor(value: Any) -> torch.Tensor | None:
    """A module's output as one tensor (a tuple's or a dict's first: HF modules return them)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


class Snapshots:
    """``embeddings``: {module name: labels of its rows (a list, or a dict index -> label)};
    ``every``: iterations between snapshots (0/None: none); ``max_rows``: rows kept.

    Labels: a list gives row i the label ``labels[i]``; a dict ``{row index: label}`` the
    rows it names (a ``{token: index}`` vocabulary is read the other way round); None, or a
    row the labels do not cover, is labelled with its row number. A list of module names
    (or one name) means labels None for each."""

    def __init__(self, embeddings: dict[str, Any] | None, every: int | None,
                 max_rows: int = MAX_ROWS) -> None:
        if isinstance(embeddings, str):
            embeddings = {embeddings: None}
        elif isinstance(embeddings, (list, tuple)):
            embeddings = dict.fromkeys(embeddings)
        if embeddings is not None and not isinstance(embeddings, Mapping):
            raise InvalidRecordError(
                f"embeddings must be a dict {{module name: labels of its rows}}, e.g. "
                f"{{'encoder': idx2word}} (got {type(embeddings).__name__})")
        self.embeddings = {str(k): _labels_of(v, str(k)) for k, v in (embeddings or {}).items()}
        if (every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                   or every < 0)):
            raise InvalidRecordError(f"snapshot_every must be an integer >= 0: iterations "
                                     f"between snapshots, 0 or None for none (got {every!r})")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise InvalidRecordError(f"max_rows must be an integer >= 1 (got {max_rows!r})")
        self.every = every or 0
        self.max_rows = max_rows
        self._cut: set[str] = set()  # (embeddings whose rows were cut: said once)

    def due(self, iteration: int) -> bool:
        return bool(self.embeddings) and self.every > 0 and iteration % self.every == 0

    def of_model(self, model: Any, session: str, iteration: int, title: str) -> list[EmbeddingSet]:
        """The watched ``nn.Embedding`` modules' rows now (``title``: the session's name).

        Of an embedding of more than ``max_rows`` rows, its first ``max_rows`` are kept:
        vocabularies are usually sorted by frequency, so these are the most frequent
        tokens (order the rows, or the labels, that way); only the kept rows are copied.
        """
        modules = _modules(model)
        out = []
        for name, labels in self.embeddings.items():
            module = modules.get(name)
            if not isinstance(module, EMBEDDINGS):
                found = sorted({n for n, m in model.named_modules() if isinstance(m, EMBEDDINGS)})
                what = "no module" if module is None else f"a {type(module).__name__}, not an embedding"
                raise InvalidRecordError(
                    f"embeddings: {name!r} is {what} of the model; its nn.Embedding modules "
                    f"are {', '.join(map(repr, found)) or 'none'} (names as in "
                    f"model.named_modules())")
            weight = module.weight.detach()
            k = min(int(weight.shape[0]), self.max_rows)
            if k < weight.shape[0] and name not in self._cut:
                self._cut.add(name)
                log.warning("embedviz monitor: embeddings: keeping the first %d of %d rows of %r "
                            "in each snapshot (snapshot_rows= keeps more)", k, weight.shape[0], name)
            rows = torch.arange(k, device=weight.device)
            vectors = torch.index_select(weight, 0, rows).cpu().float().numpy()
            if labels is None:
                text = [str(i) for i in range(k)]
            elif isinstance(labels, dict):
                text = [str(labels.get(i, i)) for i in range(k)]
            else:
                text = [str(labels[i]) if i < len(labels) else str(i) for i in range(k)]
            out.append(EmbeddingSet(f"{title}: {name}", text, vectors,
                                    metadata={"row": list(range(k))}, session=session,
                                    iteration=iteration))
        return out

    def of_outputs(self, model: Any, layer: str, inputs: Any, labels: Sequence[Any] | None,
                   session: str, iteration: int, title: str) -> EmbeddingSet:
        """``layer``'s outputs on ``inputs`` (no grad, eval mode, restored after).

        ``inputs``: the model's input (a tensor, a tuple of positional arguments or a dict
        of keyword arguments), one example a row of the first dimension; ``labels``: one
        per example (class ids or names; None: the example numbers). Each example's output
        is flattened into a row; of more than ``max_rows`` examples an even sample is kept
        (taken from the inputs before the model runs, when they are tensors). A point is
        labelled ``"<label> (<example number>)"`` (the same example has the same label in
        every snapshot: the slider aligns them by it); metadata ``label``: the label,
        ``example``: the example number."""
        modules = _modules(model)
        target = modules.get(layer)
        if target is None:
            names = [n for n in dict(model.named_modules()) if n]
            shown = ", ".join(map(repr, names[:30])) + (", ..." if len(names) > 30 else "")
            raise InvalidRecordError(f"snapshot_outputs: the model has no module {layer!r}; "
                                     f"its modules are {shown or 'none'} (names as in "
                                     f"model.named_modules())")
        n = _examples(inputs)
        keep: np.ndarray | None = None
        if n is not None and n > self.max_rows:
            keep = _even(n, self.max_rows)
            inputs = _take(inputs, torch.as_tensor(keep))
        labels = _label_list(labels)
        if labels is not None and n is not None and len(labels) != n:
            raise InvalidRecordError(f"snapshot_outputs: {len(labels)} labels for {n} examples: "
                                     f"pass one label per example")
        captured: list[torch.Tensor] = []

        def hook(module: Any, args: Any, output: Any) -> None:
            if not captured:  # (a module called twice in a pass: the first call)
                t = _first_tensor(output)
                if t is not None:
                    captured.append(t.detach())

        modes = [(m, m.training) for m in model.modules()]
        handle = target.register_forward_hook(hook)
        try:
            model.eval()
            with torch.no_grad():
                if isinstance(inputs, Mapping):
                    model(**inputs)
                elif isinstance(inputs, tuple):
                    model(*inputs)
                else:
                    model(inputs)
        finally:
            handle.remove()
            for m, training in modes:
                m.training = training
        if not captured:
            raise InvalidRecordError(f"snapshot_outputs: layer {layer!r} gave no tensor on "
                                     f"these inputs (did the model's forward call it?)")
        out = captured[0]
        if out.ndim == 0:
            raise InvalidRecordError(f"snapshot_outputs: layer {layer!r} gives a scalar; pass "
                                     f"a layer whose output has one row per example")
        rows, fed = int(out.shape[0]), len(keep) if keep is not None else n
        if fed is not None and rows != fed:
            raise InvalidRecordError(f"snapshot_outputs: layer {layer!r} gives {rows} rows for "
                                     f"{fed} examples; pass a layer whose output has one row "
                                     f"per example (first dimension: the batch)")
        examples = keep if keep is not None else _even(rows, self.max_rows)
        if len(examples) < rows:  # (inputs that could not be sampled before the model ran)
            out = out[torch.as_tensor(examples, device=out.device)]
        vectors = out.reshape(out.shape[0], -1).cpu().float().numpy()
        if labels is not None and n is None and len(labels) != rows:
            raise InvalidRecordError(f"snapshot_outputs: {len(labels)} labels for {rows} "
                                     f"examples: pass one label per example")
        names = [str(i) if labels is None else str(labels[int(i)]) for i in examples]
        return EmbeddingSet(f"{title}: {layer} outputs",
                            [f"{c} ({int(i)})" if labels is not None else c
                             for c, i in zip(names, examples)],
                            vectors, metadata={"label": names, "example": [int(i) for i in examples]},
                            session=session, iteration=iteration)


def _label_list(labels: Any) -> list[Any] | None:
    if labels is None:
        return None
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        return labels.reshape(-1).tolist() if labels.ndim else [labels.item()]
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise InvalidRecordError(f"snapshot_outputs: labels must be a tensor or a list, one "
                                 f"per example, or None (got {type(labels).__name__})")
    return list(labels)


def _examples(inputs: Any) -> int | None:
    """The number of examples in ``inputs`` (None: not all of them tensors of one length)."""
    tensors = (list(inputs.values()) if isinstance(inputs, Mapping)
               else list(inputs) if isinstance(inputs, tuple) else [inputs])
    lengths = {int(t.shape[0]) for t in tensors if isinstance(t, torch.Tensor) and t.ndim}
    if len(lengths) != 1 or not all(isinstance(t, torch.Tensor) and t.ndim for t in tensors):
        return None
    return lengths.pop()


def _take(inputs: Any, index: torch.Tensor) -> Any:
    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[index.to(t.device)]

    if isinstance(inputs, Mapping):
        return {k: pick(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(pick(v) for v in inputs)
    return pick(inputs)

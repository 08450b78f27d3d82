"""Which tensors a worker reported, in the model's order, and which parameters are weights.

One rule, read by the health checks and by the app's charts alike, so that a chart and a
finding never disagree about which parameters are weights or in what order layers come.
Works from series keys (``"param/fc1.weight/mean_magnitude"``) and a worker's static info
(its layer table: ``{"model": {"layers": [{"name", "type", "params": {own: shape}}],
"graph": {"execution_order": [...]}}}``); numpy-free, torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable

from embedviz.records import split_stat_key

KINDS = ("param", "gradient", "update", "activation")


def layer_of(name: str) -> str:
    """The module a parameter belongs to (``"fc1.weight"`` -> ``"fc1"``; ``"weight"`` -> ``""``)."""
    return name.rpartition(".")[0]


def layer_table(static: dict | None) -> list[dict]:
    """The worker's layer table ([] when it sent none)."""
    model = (static or {}).get("model") if isinstance(static, dict) else None
    layers = model.get("layers") if isinstance(model, dict) else None
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def forward_order(static: dict | None) -> list[str]:
    """Module names in the order the forward pass ran them (the graph's execution order),
    then the layer table's modules the pass did not record (a module with its own parameters
    and children, one not yet run), in the table's order."""
    model = (static or {}).get("model") if isinstance(static, dict) else None
    graph = model.get("graph") if isinstance(model, dict) else None
    order = graph.get("execution_order") if isinstance(graph, dict) else None
    ran = [str(m) for m in order] if isinstance(order, list) else []
    seen = set(ran)
    return ran + [m for m in (str(x.get("name") or "") for x in layer_table(static)) if m not in seen]


def sort_tensors(names: Iterable[str], kind: str, order: list[str],
                 static: dict | None = None) -> list[str]:
    """``names`` (tensors of ``kind``) in forward order: an activation at its module's place,
    a parameter at its module's place and, among its module's parameters, in the layer
    table's order (``static``; alphabetically without it); names of modules not in ``order``
    last, alphabetically."""
    rank = {m: i for i, m in enumerate(order)}
    own = {_full(layer, p): i for layer in layer_table(static)
           for i, p in enumerate(_own_params(layer))}

    def where(name: str) -> tuple[int, int, str]:
        module = name if kind == "activation" else layer_of(name)
        return (rank.get(module, len(rank)), own.get(name, len(own)), name)

    return sorted(set(names), key=where)


def tensor_names(keys: Iterable[str], kind: str, static: dict | None = None) -> list[str]:
    """Tensors of ``kind`` ("param", "gradient", "update", "activation") that have series
    among ``keys``, in forward order."""
    prefix = kind + "/"
    names = {st[0][len(prefix):] for k in keys
             if k.startswith(prefix) and (st := split_stat_key(k)) is not None}
    return sort_tensors(names, kind, forward_order(static), static)


def _own_params(layer: dict) -> dict:
    params = layer.get("params")
    return params if isinstance(params, dict) else {}


def _full(layer: dict, own: str) -> str:
    module = str(layer.get("name") or "")
    return f"{module}.{own}" if module else own


def param_shape(name: str, static: dict | None) -> list[int] | None:
    """The shape of parameter ``name`` in the layer table, None when it is not listed."""
    module, _, own = name.rpartition(".")
    for layer in layer_table(static):
        if str(layer.get("name") or "") == module:
            shape = _own_params(layer).get(own)
            return list(shape) if isinstance(shape, (list, tuple)) else None
    return None


def is_weight(name: str, static: dict | None = None) -> bool:
    """A weight matrix or kernel: 2 or more dimensions where the layer table gives the
    shape; else a parameter whose own name starts with "weight" (``weight``,
    ``weight_ih_l0``). Biases and norm scales are not: their update:param ratio says
    little (a bias starts at 0).

    Without a layer table (``static`` None, or a parameter it does not list) only the name
    is known, so a BatchNorm's or LayerNorm's ``weight`` (a 1-d scale) counts as a weight;
    a worker that sends its static info (a StatsListener does) has it told apart."""
    shape = param_shape(name, static)
    if shape is not None:
        return len(shape) >= 2
    return name.rpartition(".")[2].startswith("weight")


def weight_names(params: Iterable[str], static: dict | None = None) -> list[str]:
    """The parameters among ``params`` whose update:param ratio is charted and checked,
    in the order given."""
    return [p for p in params if is_weight(p, static)]


__all__ = ["KINDS", "forward_order", "is_weight", "layer_of", "layer_table", "param_shape",
           "sort_tensors", "tensor_names", "weight_names"]

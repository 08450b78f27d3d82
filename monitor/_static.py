"""The static info a listener records once per session: the layer table with its shapes,
the module graph, the optimizer, hyperparameters, the listener's settings, software and
hardware."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

import numpy as np
import torch
from embedviz.monitor._capture import count_of, stride_of
from embedviz.monitor._model import clean

import embedviz


def shapes(value: Any) -> list[list[int]]:
    if isinstance(value, torch.Tensor):
        return [list(value.shape)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in shapes(v)]
    return []


def static_info(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                params: dict[str, torch.nn.Parameter], shapes: dict[str, dict], order: list[str],
                settings: dict[str, Any], hyperparameters: dict | None = None,
                distributed: dict | None = None) -> dict:
    """What a listener records once (see the module doc): ``model`` as the user wrote it,
    ``params`` its watched parameters by name, ``shapes`` {leaf: {"input", "output"}} and
    ``order`` its leaves in the order they ran; ``settings`` the listener's ("frequency",
    "bins", "sample_limit" and the rest, recorded as given); ``distributed`` the job's
    rank and world size (recorded when given)."""
    layers = []
    for name, module in model.named_modules():
        name = clean(name)
        own = {clean(k): p for k, p in module.named_parameters(recurse=False)}
        if not name or (any(True for _ in module.children()) and not own):
            continue
        layers.append({
            "name": name, "type": type(module).__name__,
            "params": {k: list(p.shape) for k, p in own.items()},
            "n_params": int(sum(p.numel() for p in own.values())),
            "trainable": int(sum(p.numel() for p in own.values() if p.requires_grad)),
            "input_shapes": shapes.get(name, {}).get("input", []),
            "output_shapes": shapes.get(name, {}).get("output", []),
            "watched": [f"{name}.{k}" for k in own if f"{name}.{k}" in params],
        })
    edges = [[name.rpartition(".")[0], name] for name in
             dict.fromkeys(clean(n) for n, _ in model.named_modules()) if name]
    devices = sorted({str(p.device) for p in model.parameters()})
    hardware: dict[str, Any] = {"host": socket.gethostname(), "cpu_count": os.cpu_count(),
                                "devices": devices, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available() and any(d.startswith("cuda") for d in devices):
        props = torch.cuda.get_device_properties(torch.device(devices[0]))
        hardware["device_name"] = props.name
        hardware["device_memory_bytes"] = props.total_memory
    limit = settings.get("sample_limit")
    listener = dict(settings)
    listener["sampled"] = {n: [count_of(p, stride_of(p, limit), limit), p.numel()]
                           for n, p in params.items() if stride_of(p, limit) > 1}
    info: dict[str, Any] = {
        "model": {"type": type(model).__name__, "n_params": int(sum(p.numel() for p in model.parameters())),
                  "layers": layers, "graph": {"edges": edges, "execution_order": list(order)},
                  "repr": repr(model)[:20000]},
        "hyperparameters": dict(hyperparameters or {}),
        "listener": listener,
        "software": {"python": sys.version.split()[0], "torch": str(torch.__version__),
                     "numpy": np.__version__, "embedviz": embedviz.__version__,
                     "platform": platform.platform()},
        "hardware": hardware,
    }
    if distributed:
        info["distributed"] = dict(distributed)
    if optimizer is not None:
        simple = (int, float, str, bool, tuple, list, type(None))
        info["optimizer"] = {
            "type": type(optimizer).__name__,
            "defaults": {k: v for k, v in optimizer.defaults.items() if isinstance(v, simple)},
            "param_groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
                              if k != "params" and isinstance(v, simple)}
                             | {"n_params": int(sum(p.numel() for p in g["params"]))}
                             for g in optimizer.param_groups],
        }
    return info

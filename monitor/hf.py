"""StatsCallback: the StatsListener for the Hugging Face ``transformers.Trainer``, in one line.

    trainer = Trainer(model, args, train_dataset=..., callbacks=[StatsCallback("runs.db", 10)])

What it records, beside the model's statistics (parameters, gradients, updates, activations):

- ``score``: the loss of each optimizer step, as the model computed it (its output's
  ``loss``, taken by a forward hook on training passes: the mean over the step's
  micro-batches, or their sum where the Trainer had the model normalize by the step's
  token count, ``num_items_in_batch``). The Trainer hands its callbacks no per-step loss,
  only the mean since its last log (``logging_steps``); where the model gives no loss
  (a ``compute_loss`` of one's own), the score is that last logged loss instead.
- ``lr/<group>``: the optimizer's learning rates (after the scheduler's step).
- ``metric/train_loss`` and ``metric/grad_norm``: the Trainer's logs, at the step they
  were logged; ``metric/eval_*``: the evaluation's metrics (its timings left out).

Under torch.distributed (``torchrun``, ``accelerate launch``) each rank records as worker
``str(rank)`` of the job's one session (``ranks="zero"``: rank 0 only): see
:func:`embedviz.monitor._distributed.identify`.

Imports transformers only when this module is imported (``pip install "embedviz[hf]"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from embedviz.monitor._distributed import group_up, listener_of_rank
from embedviz.monitor.listener import ListenerHandle, StatsListener

from embedviz.store import Store

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError('embedviz.monitor.hf needs Hugging Face transformers: '
                      'pip install "embedviz[hf]"') from exc

#: evaluation metrics that are timings, not metrics of the model (left out)
EVAL_TIMINGS = ("_runtime", "_samples_per_second", "_steps_per_second")
#: the Trainer's training logs recorded as metrics: {log key: metric name}
LOGGED = {"loss": "train_loss", "grad_norm": "grad_norm"}



def _examples(args: tuple, kwargs: dict) -> int | None:
    """The number of examples in a forward call's inputs (the first tensor's length)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return None


def _loss_of(output: Any) -> torch.Tensor | None:
    loss = output.get("loss") if isinstance(output, Mapping) else (
        output[0] if isinstance(output, (tuple, list)) and output else None)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return loss.detach().reshape(())
    return None


class StatsCallback(TrainerCallback):
    """Attaches a :class:`StatsListener` to the Trainer's model and optimizer for the
    training; takes the same arguments as StatsListener. See the module's doc for what it
    records. ``listener``: the StatsListener (made again at the training's start where a
    process group came up after this callback was made, so that it knows its rank)."""

    def __init__(self, store: Store | str | os.PathLike, frequency: int = 10, **kwargs: Any) -> None:
        self._arguments = (store, frequency, kwargs)
        self._grouped = group_up()
        self.listener: StatsListener = StatsListener(store, frequency, **kwargs)
        self._handle: ListenerHandle | None = None
        self._hook: Any = None
        self._losses: list[torch.Tensor] = []
        self._summed = False  # (the step's losses are summed: normalized by the step's items)
        self._examples = 0
        self._logged_loss: float | None = None
        self._scale = 1.0
        self._epoch: int | None = None

    def __getstate__(self) -> dict:  # (a spawned process makes its own listener)
        state = dict(self.__dict__)
        state.update(listener=None, _handle=None, _hook=None, _losses=[], _grouped=False)
        return state

    # ------------------------------------------------------------------ the Trainer's events
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        self.listener, self._grouped = listener_of_rank(self.listener, self._grouped, self._arguments)
        if model is None:
            return
        # the Trainer's optimizer may be accelerate's wrapper around the torch optimizer
        inner = getattr(optimizer, "optimizer", optimizer)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        self._handle = self.listener.attach(model, inner)
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)
        self._scale = float(getattr(args, "world_size", 1) or 1) if getattr(
            args, "average_tokens_across_devices", False) else 1.0
        self._losses, self._examples, self._epoch = [], 0, None

    def _on_forward(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return  # (evaluation and prediction passes)
        loss = _loss_of(output)
        if loss is not None:
            self._losses.append(loss)
            self._summed = kwargs.get("num_items_in_batch") is not None
        self._examples += _examples(args, kwargs) or 0

    def _step_loss(self) -> Any:
        losses, self._losses = self._losses, []
        if not losses:
            return self._logged_loss
        if len(losses) == 1:
            loss = losses[0]
        else:
            loss = torch.stack(losses).sum() if self._summed else torch.stack(losses).mean()
        return loss * self._scale if self._summed and self._scale != 1.0 else loss

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # state.epoch: the epoch and the part of it done, in (epoch, epoch + 1] at its end
        epoch = max(math.ceil(state.epoch) - 1, 0) if state.epoch is not None else None
        examples, self._examples = self._examples, 0
        self.listener.step(self._step_loss(), batch_size=examples or None,
                           epoch=None if epoch == self._epoch else epoch)  # (the listener keeps it)
        self._epoch = epoch

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if not logs or "loss" not in logs:  # (evaluation logs, the final summary)
            return
        for key, name in LOGGED.items():
            value = logs.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.listener.log_metric(name, value)
        if isinstance(logs.get("loss"), (int, float)):
            self._logged_loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None,
                    **kwargs: Any) -> None:
        for key, value in (metrics or {}).items():
            if (key.startswith("eval_") and not key.endswith(EVAL_TIMINGS)
                    and isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool)):
                self.listener.log_metric(key, value)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

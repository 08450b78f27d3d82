"""StatsCallback: the StatsListener for PyTorch Lightning, in one line.

    trainer = lightning.Trainer(callbacks=[StatsCallback("runs.db", frequency=10)])

Under a DDP strategy (``strategy="ddp"``, ``"ddp_spawn"``, ...) each rank records as worker
``str(rank)`` of the job's one session (``ranks="zero"``: rank 0 only): the listener is made
again at the fit's start where Lightning brought the process group up after the callback was
made (see :func:`embedviz.monitor._distributed.identify`).

Imports Lightning (``lightning`` or ``pytorch_lightning``) only when this module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from embedviz.monitor._distributed import group_up, listener_of_rank
from embedviz.monitor.listener import ListenerHandle, StatsListener

from embedviz.errors import InvalidRecordError
from embedviz.store import Store

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError as exc:
        raise ImportError("embedviz.monitor.lightning needs Lightning: pip install lightning") from exc



def batch_size_of(batch: Any) -> int | None:
    """The examples in a batch: the length of its first tensor (a tuple's, a dict's)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    values = batch.values() if isinstance(batch, Mapping) else (
        batch if isinstance(batch, (list, tuple)) else ())
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return None


class StatsCallback(Callback):
    """Attaches a :class:`StatsListener` to the LightningModule and its optimizer for the
    fit; logs validation metrics (``val*`` in ``trainer.callback_metrics``) each epoch.
    Takes the same arguments as StatsListener.

    Several optimizers (a GAN's, with manual optimization): the listener is given them all
    where it takes several, else none: updates are then measured from the parameters'
    changes across an iteration (every optimizer's step is in it), and the optimizers'
    learning rates are recorded as ``lr/<optimizer index>``."""

    def __init__(self, store: Store | str | os.PathLike, frequency: int = 10, **kwargs: Any) -> None:
        self._arguments = (store, frequency, kwargs)
        self._grouped = group_up()
        self.listener: StatsListener = StatsListener(store, frequency, **kwargs)
        self._handle: ListenerHandle | None = None
        self._epoch: int | None = None
        self._several: list = []  # the optimizers, where the listener was given none

    def __getstate__(self) -> dict:  # (ddp_spawn: a spawned process makes its own listener)
        state = dict(self.__dict__)
        state.update(listener=None, _handle=None, _grouped=False, _several=[])
        return state

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.listener, self._grouped = listener_of_rank(self.listener, self._grouped, self._arguments)
        optimizers = list(trainer.optimizers or [])
        self._epoch = None
        self._several = []
        if len(optimizers) <= 1:
            self._handle = self.listener.attach(pl_module, optimizers[0] if optimizers else None)
            return
        try:
            self._handle = self.listener.attach(pl_module, optimizers)  # type: ignore[arg-type]
        except InvalidRecordError:  # (a listener of one optimizer)
            self._handle = self.listener.attach(pl_module, None)
            self._several = optimizers  # (their learning rates: given to step())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, (torch.Tensor, int, float)) or isinstance(loss, bool):
            loss = None  # (manual optimization may return anything)
        epoch = trainer.current_epoch  # (given when it changes: the listener keeps it)
        self.listener.step(loss, batch_size=batch_size_of(batch),
                           epoch=None if epoch == self._epoch else epoch, lr=self._lrs())
        self._epoch = epoch

    def _lrs(self) -> dict[str, float] | None:
        """Several optimizers' learning rates: ``lr/<optimizer>`` (``lr/<optimizer>.<group>``
        of an optimizer of several groups)."""
        if not self._several:
            return None
        return {(str(i) if len(opt.param_groups) == 1 else f"{i}.{j}"): group["lr"]
                for i, opt in enumerate(self._several) for j, group in enumerate(opt.param_groups)
                if isinstance(group.get("lr"), (int, float))}

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        for name, value in trainer.callback_metrics.items():
            if name.startswith("val"):
                self.listener.log_metric(name, value)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

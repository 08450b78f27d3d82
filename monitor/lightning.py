"""StatsCallback: the StatsListener for PyTorch Lightning, in one line.

    trainer = lightning.Trainer(callbacks=[StatsCallback("runs.db", frequency=10)])

Imports Lightning (``lightning`` or ``pytorch_lightning``) only when this module is imported.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from embedviz.monitor.listener import ListenerHandle, StatsListener

from embedviz.store import Store

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback  # type: ignore[assignment]
    except ImportError as exc:
        raise ImportError("embedviz.monitor.lightning needs Lightning: pip install lightning") from exc


class StatsCallback(Callback):
    """Attaches a :class:`StatsListener` to the LightningModule and its first optimizer for
    the fit; logs validation metrics (``val*`` in ``trainer.callback_metrics``) each epoch.
    Takes the same arguments as StatsListener."""

    def __init__(self, store: Store | str | os.PathLike, frequency: int = 10, **kwargs: Any) -> None:
        self.listener = StatsListener(store, frequency, **kwargs)
        self._handle: ListenerHandle | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self._handle = self.listener.attach(pl_module, optimizer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        size = None
        first = batch[0] if isinstance(batch, (list, tuple)) and batch else batch
        if isinstance(first, torch.Tensor) and first.ndim:
            size = int(first.shape[0])
        self.listener.step(loss, batch_size=size, epoch=trainer.current_epoch)

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

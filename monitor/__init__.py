"""embedviz.monitor: listeners that record training into the stats store.

- :class:`StatsListener`: PyTorch (``attach(model, optimizer)``, ``step(loss)``);
- :class:`Word2VecListener`: a gensim callback (per-epoch loss, vocabulary snapshots);
- ``embedviz.monitor.lightning.StatsCallback``: the listener for PyTorch Lightning;
- :func:`summarize`: the statistics of one tensor;
- :func:`preflight`: sanity checks before a long training (loss at chance, overfitting one
  batch, a gradient check, input scale, labels per batch).

Importing this package imports neither Bokeh nor, until a name is used, torch (the
listener's worker process runs ``embedviz.monitor._sink`` with numpy alone).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ListenerHandle", "StatsListener", "Word2VecListener", "preflight", "summarize",
           "summarize_many"]


def __getattr__(name: str) -> Any:
    if name in ("ListenerHandle", "StatsListener"):
        from embedviz.monitor import listener

        return getattr(listener, name)
    if name in ("summarize", "summarize_many"):
        from embedviz.monitor import stats

        return getattr(stats, name)
    if name == "preflight":
        from embedviz.monitor._preflight import preflight

        return preflight
    if name == "Word2VecListener":
        from embedviz.monitor.word2vec import Word2VecListener

        return Word2VecListener
    raise AttributeError(f"module 'embedviz.monitor' has no attribute {name!r}")

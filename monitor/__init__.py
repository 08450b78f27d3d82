"""embedviz.monitor: listeners that record training into the stats store.

- :class:`StatsListener`: PyTorch (``attach(model, optimizer)``, ``step(loss)``);
- :class:`Word2VecListener`: a gensim callback (per-epoch loss, vocabulary snapshots);
- ``embedviz.monitor.lightning.StatsCallback``: the listener for PyTorch Lightning;
- :func:`summarize`: the statistics of one tensor.

Importing this package does not import Bokeh.
"""

from __future__ import annotations

from embedviz.monitor.listener import ListenerHandle, StatsListener
from embedviz.monitor.stats import summarize, summarize_many
from embedviz.monitor.word2vec import Word2VecListener

__all__ = ["ListenerHandle", "StatsListener", "Word2VecListener", "summarize", "summarize_many"]

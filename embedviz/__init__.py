"""embedviz: see how a network learns and what its embeddings look like.

The front door: :func:`open_store` for the shared stats store; the training monitor lives
in :mod:`embedviz.monitor`, the Bokeh app in :mod:`embedviz.server`.
"""

from __future__ import annotations

import atexit
import sys

from embedviz.errors import (
    EmbedvizError,
    ImportFormatError,
    InvalidRecordError,
    NotAStoreError,
    ProjectionError,
    StoreError,
    StoreOpenError,
    StoreVersionError,
    UnknownSessionError,
)
from embedviz.records import (
    EmbeddingSet,
    Finding,
    Histogram,
    Metric,
    Projection,
    Session,
    Static,
    Summary,
    Update,
)
from embedviz.store import Store, open_store


@atexit.register
def _close_remote_stores() -> None:
    """Remote stores left open are closed (what they hold sent or spooled) at exit, after
    the listeners' sinks have flushed into them: registered here, at the first import of
    embedviz, before any sink's (atexit runs the last registered first)."""
    remote = sys.modules.get("embedviz.store.remote")
    if remote is not None:
        remote.close_at_exit()


def __getattr__(name: str):
    """The projection front door, imported on first use: ``import embedviz`` and the store
    stay free of openTSNE, scikit-learn's manifold code and Bokeh."""
    if name in ("BarnesHutTsne", "PCAProjection", "UMAPProjection", "project", "quality"):
        from embedviz import projection

        return getattr(projection, name)
    if name == "plot_vocab":
        from embedviz.plot import plot_vocab

        return plot_vocab
    if name == "show":
        from embedviz.server import show

        return show
    if name == "import_tensorboard":
        from embedviz.tbimport import import_tensorboard

        return import_tensorboard
    if name in ("load_vocabulary", "Vocabulary", "write_projector_tsv", "read_projector_tsv"):
        from embedviz import vocab

        return getattr(vocab, name)
    raise AttributeError(f"module 'embedviz' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "EmbedvizError", "EmbeddingSet", "Finding", "Histogram", "ImportFormatError",
    "InvalidRecordError", "Metric", "NotAStoreError", "Projection", "ProjectionError", "Session",
    "Static", "Store", "StoreError", "StoreOpenError", "StoreVersionError", "Summary",
    "UnknownSessionError", "Update", "__version__", "open_store",
    "BarnesHutTsne", "PCAProjection", "UMAPProjection", "project", "quality", "plot_vocab", "show",
    "load_vocabulary", "Vocabulary", "write_projector_tsv", "read_projector_tsv",
    "import_tensorboard",
]

"""embedviz: see how a network learns and what its embeddings look like.

The front door: :func:`open_store` for the shared stats store; the training monitor lives
in :mod:`embedviz.monitor`, the Bokeh app in :mod:`embedviz.server`.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "EmbedvizError", "EmbeddingSet", "Finding", "Histogram", "ImportFormatError",
    "InvalidRecordError", "Metric", "NotAStoreError", "Projection", "ProjectionError", "Session",
    "Static", "Store", "StoreError", "StoreOpenError", "StoreVersionError", "Summary",
    "UnknownSessionError", "Update", "__version__", "open_store",
]

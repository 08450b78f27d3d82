"""A PyTorch model's own embeddings over training, as embedding sets of its session.

(skeleton: the API the listener calls; filled in by the snapshot work of issue 27)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedviz.records import EmbeddingSet

#: rows kept from an embedding or a batch of outputs, at most (an even sample beyond it)
MAX_ROWS = 5000


class Snapshots:
    """``embeddings``: {module name: labels of its rows (a list, or a dict index -> label)};
    ``every``: iterations between snapshots (0/None: none); ``max_rows``: rows kept."""

    def __init__(self, embeddings: dict[str, Any] | None, every: int | None,
                 max_rows: int = MAX_ROWS) -> None:
        self.embeddings = dict(embeddings or {})
        self.every = every or 0
        self.max_rows = max_rows

    def due(self, iteration: int) -> bool:
        return bool(self.embeddings) and self.every > 0 and iteration % self.every == 0

    def of_model(self, model: Any, session: str, iteration: int, title: str) -> list[EmbeddingSet]:
        """The watched ``nn.Embedding`` modules' rows now (``title``: the session's name)."""
        raise NotImplementedError

    def of_outputs(self, model: Any, layer: str, inputs: Any, labels: Sequence[Any] | None,
                   session: str, iteration: int, title: str) -> EmbeddingSet:
        """``layer``'s outputs on ``inputs`` (no grad, eval mode, restored after)."""
        raise NotImplementedError

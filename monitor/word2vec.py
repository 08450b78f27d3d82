"""Word2VecListener: gensim word2vec training recorded in the same store.

A gensim callback: each epoch's training loss (gensim accumulates the loss over a
``train()`` call; this records each epoch's share) and its duration, and every
``snapshot_every`` epochs the vectors of the ``top_n`` most frequent words as an embedding
set tied to the session and epoch, so the explorer can show the vocabulary taking shape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from embedviz.monitor._sink import ThreadSink

from embedviz.errors import InvalidRecordError
from embedviz.records import EmbeddingSet, Session, Static, Update
from embedviz.store import Store, open_store

log = logging.getLogger("embedviz.monitor")

try:  # gensim is a dependency; the base class makes gensim's own checks pass
    from gensim.models.callbacks import CallbackAny2Vec as _Base
except ImportError:  # pragma: no cover
    _Base = object  # type: ignore[misc,assignment]


class Word2VecListener(_Base):  # type: ignore[misc]
    """Pass as ``Word2Vec(..., compute_loss=True, callbacks=[Word2VecListener(store)])``.

    ``snapshot_every``: epochs between vocabulary snapshots (0: none); ``top_n``: words in
    each snapshot, the most frequent ones not in ``exclude`` (stopwords, say: the most
    frequent words are mostly those).
    """

    def __init__(self, store: Store | str | os.PathLike, *, session: str | None = None,
                 session_name: str | None = None, tags: dict | None = None, worker: str = "0",
                 snapshot_every: int = 1, top_n: int = 1000, exclude: Iterable[str] = (),
                 close_timeout: float = 10.0) -> None:
        for name, value, low in (("snapshot_every", snapshot_every, 0), ("top_n", top_n, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidRecordError(f"{name} must be an integer >= {low} (got {value!r})")
        self.store = open_store(store)
        self._owns_store = self.store is not store  # (opened here: closed here)
        record = (Session(name=session_name, tags=tags or {}) if session is None
                  else Session(id=session, name=session_name, tags=tags or {}))
        self.session, self._session_record = record.id, record
        self.worker = str(worker)
        self.snapshot_every, self.top_n, self.close_timeout = snapshot_every, top_n, close_timeout
        self.exclude = frozenset(exclude)
        self.epoch = 0
        self._writer: ThreadSink | None = None
        self._previous_loss = 0.0
        self._epoch_start = 0.0
        self._warned = False

    def on_train_begin(self, model: Any) -> None:
        try:
            self._writer = ThreadSink(self.store, None, name="embedviz-w2v",
                                      close_timeout=self.close_timeout)
            self._previous_loss = 0.0
            if not getattr(model, "compute_loss", False):
                log.warning("embedviz monitor: this Word2Vec model does not compute its loss; "
                            "pass compute_loss=True to Word2Vec(...) to record it")
            static = {"model": {"type": type(model).__name__,
                                **{k: getattr(model, k, None) for k in (
                                    "vector_size", "window", "min_count", "sg", "hs", "negative",
                                    "alpha", "min_alpha", "epochs", "sample", "workers")},
                                "vocabulary": len(model.wv.index_to_key),
                                "corpus_count": getattr(model, "corpus_count", None),
                                "corpus_total_words": getattr(model, "corpus_total_words", None)}}
            self._writer.submit([self._session_record, Static(self.session, self.worker, static)])
        except Exception as exc:
            self._warn(exc)

    def on_epoch_begin(self, model: Any) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, model: Any) -> None:
        try:
            epoch, self.epoch = self.epoch, self.epoch + 1
            seconds = time.perf_counter() - self._epoch_start
            cumulative = float(model.get_latest_training_loss()) if model.compute_loss else None
            loss = None if cumulative is None else cumulative - self._previous_loss
            self._previous_loss = cumulative or 0.0
            scalars = {"timing/epoch_s": seconds,
                       "lr/0": float(getattr(model, "min_alpha_yet_reached", model.alpha))}
            if getattr(model, "corpus_total_words", None):
                scalars["timing/words_per_s"] = model.corpus_total_words / max(seconds, 1e-9)
            records: list = [Update(self.session, self.worker, epoch, score=loss, epoch=epoch,
                                    scalars=scalars)]
            if self.snapshot_every and (epoch + 1) % self.snapshot_every == 0:
                index = [i for i, w in enumerate(model.wv.index_to_key)
                         if w not in self.exclude][: self.top_n]
                words = [model.wv.index_to_key[i] for i in index]
                vectors = np.array(model.wv.vectors[index], dtype=np.float32)
                counts = [int(model.wv.get_vecattr(w, "count")) for w in words]
                named = self._session_record.name or self.session
                records.append(EmbeddingSet(f"{named}, epoch {epoch}", words, vectors,
                                            metadata={"count": counts}, session=self.session,
                                            iteration=epoch))
            if self._writer is not None:
                self._writer.submit(records)
        except Exception as exc:
            self._warn(exc)

    def on_train_end(self, model: Any) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close(self.close_timeout)
        if self._owns_store:
            self.store.close()

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("embedviz monitor: word2vec callback failed; training goes on", exc_info=exc)

"""Exceptions raised by embedviz.

Every error names the problem and the way out. The tree::

    EmbedvizError
     +-- StoreError                 anything about a stats store
     |    +-- StoreOpenError        the target cannot be opened as a store
     |    |    +-- NotAStoreError   the file exists but is not an embedviz store
     |    |    +-- StoreVersionError  written by a newer embedviz (schema too new)
     |    +-- UnknownSessionError   (also a KeyError) no such session / worker / record
     |    +-- InvalidRecordError    (also a ValueError) a record fails validation
     |    +-- ImportFormatError     (also a ValueError) a JSONL line is malformed; has .line
     +-- ProjectionError            (also a ValueError) bad input to a projection
"""

from __future__ import annotations


class EmbedvizError(Exception):
    """Base class of every error embedviz raises on purpose."""


class StoreError(EmbedvizError):
    """A problem with a stats store."""


class StoreOpenError(StoreError):
    """The target could not be opened as a stats store."""


class NotAStoreError(StoreOpenError):
    """The file exists but is not an embedviz stats store."""


class StoreVersionError(StoreOpenError):
    """The store was written with a newer schema than this embedviz reads."""


class UnknownSessionError(StoreError, KeyError):
    """A session, worker or record that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidRecordError(StoreError, ValueError):
    """A record handed to the store fails validation; nothing of its batch was written."""


class ImportFormatError(StoreError, ValueError):
    """A line of a JSONL export is malformed.

    Attributes: ``line`` (1-based line number), ``path``.
    """

    def __init__(self, message: str, *, line: int, path: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.path = path


class ProjectionError(EmbedvizError, ValueError):
    """Bad input to a projection (vectors, labels or parameters)."""

"""Who this process is in a torch.distributed job: one session for the job, a worker a rank.

(skeleton: the API the listener calls; filled in by the distributed work of issue 27)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RANKS = ("all", "zero")


@dataclass
class Identity:
    """``session``: the session id (agreed by every rank of a job; the one given, or None
    outside a job when none was given); ``worker``: this process's worker id; ``info``: the
    static info's ``"distributed"`` part (``rank``, ``world_size``, ``backend``, ...; empty
    outside a job); ``records``: False where this rank records nothing (``ranks="zero"``)."""

    session: str | None
    worker: str
    info: dict[str, Any] = field(default_factory=dict)
    records: bool = True


def identify(session: str | None, worker: str | None, ranks: str = "all") -> Identity:
    """This process's identity: outside a process group, ``session`` and ``worker`` (default
    "0") as given."""
    return Identity(session, "0" if worker is None else str(worker))

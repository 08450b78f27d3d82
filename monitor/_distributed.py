"""Who this process is in a torch.distributed job: one session for the job, a worker a rank.

When a process group is up (``torch.distributed.is_initialized()``, e.g. under ``torchrun``
after ``init_process_group``), every rank records into one session of the job as the worker
``str(rank)``; the session id is agreed without a word from the user:

1. ``session=`` given: that (every rank is given the same, as the script is the same);
2. else the elastic run id that ``torchrun`` hands every worker (``TORCHELASTIC_RUN_ID``;
   ``"none"``, torchrun's value when no ``--rdzv-id`` was given, is no id): ``torchrun-<id>``;
3. else a new id made by rank 0 and broadcast to the others (a collective: every rank of the
   group creates its listener, as with any ``torch.distributed`` call).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from embedviz.errors import InvalidRecordError

RANKS = ("all", "zero")
#: the environment variable in which torchrun (torch.distributed.elastic) hands each worker
#: the job's run id (``--rdzv-id``; a uuid under ``--standalone``; "none" when not given)
RUN_ID_ENV = "TORCHELASTIC_RUN_ID"


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


def new_session_id() -> str:
    """A new session id, as :class:`embedviz.records.Session` makes one by default."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def elastic_session_id() -> str | None:
    """The session id of a torchrun job, from its run id (None: not under torchrun, or no id)."""
    run_id = os.environ.get(RUN_ID_ENV, "").strip()
    if not run_id or run_id.lower() == "none":
        return None
    return "torchrun-" + re.sub(r"\s+", "_", run_id)


def _check_ranks(ranks: Any) -> None:
    if not isinstance(ranks, str) or ranks not in RANKS:
        raise InvalidRecordError(
            f"ranks must be 'all' (every rank of a torch.distributed job records, as worker "
            f"str(rank), into one session) or 'zero' (rank 0 only) (got {ranks!r})")


def _local_rank() -> int | None:
    try:
        return int(os.environ["LOCAL_RANK"])
    except (KeyError, ValueError):
        return None


def identify(session: str | None, worker: str | None, ranks: str = "all") -> Identity:
    """This process's identity: outside a process group, ``session`` and ``worker`` (default
    "0") as given; in one, the job's session (see the module's doc), ``worker`` (default: the
    rank), and the ``"distributed"`` static info (rank, world_size, local_rank, backend,
    ranks). ``ranks="zero"``: only rank 0 records (``records`` False elsewhere).

    In a process group this may be a collective call (when neither ``session`` nor the
    elastic run id gives the session id): call it on every rank."""
    _check_ranks(ranks)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Identity(session, "0" if worker is None else str(worker))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if session is None:
        session = elastic_session_id()
    if session is None:
        box: list[Any] = [new_session_id() if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        session = str(box[0])
    try:
        backend: str | None = str(dist.get_backend())
    except Exception:  # pragma: no cover - (a backend that will not say)
        backend = None
    info = {"rank": rank, "world_size": world_size, "local_rank": _local_rank(),
            "backend": backend, "ranks": ranks}
    return Identity(session, str(rank) if worker is None else str(worker), info,
                    records=ranks == "all" or rank == 0)


def group_up() -> bool:
    """Whether a torch.distributed process group is up in this process."""
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def listener_of_rank(listener: Any, grouped: bool, arguments: tuple) -> tuple[Any, bool]:
    """A callback's listener, made again from ``arguments`` (store, frequency, options) where
    there is none (unpickled in a spawned process) or a process group came up after it was
    made (Lightning and the Trainer start it after their callbacks are made: the listener
    would not know its rank); and whether it was made inside the group."""
    if listener is not None and (grouped or not group_up()):
        return listener, grouped
    if listener is not None:
        listener.close()
    from embedviz.monitor.listener import StatsListener

    store, frequency, options = arguments
    return StatsListener(store, frequency, **options), group_up()
